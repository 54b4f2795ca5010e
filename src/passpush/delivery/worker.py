"""The delivery worker: claims due deliveries, pushes them, records outcomes, as a pipeline.

Durable before acknowledged: Send commits deliveries before it answers; the
worker leases them, so a crash or a restart leaves nothing lost. At most
`batch_size` deliveries are claimed and not yet recorded at any moment, so a
crash pushes at most one batch twice. Within that window the work flows:
claims are topped up as outcomes are recorded, and outcomes are recorded in
small batched transactions while the pushes go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.delivery.apns import PushOutcome
from passpush.domain.model import DeliveryState, Platform
from passpush.domain.outcomes import MAX_ATTEMPTS, judge_apns
from passpush.store.outbox import ClaimedDelivery, DeliveryResult, Outbox

log = logging.getLogger(__name__)


class ApplePushGateway(Protocol):
    async def push(self, device_token: str, topic: str) -> PushOutcome: ...


@dataclass(frozen=True)
class WorkerSettings:
    # Claimed-and-unrecorded deliveries at most: the crash re-push bound. Several times
    # max_in_flight, so that answers awaiting their write and the next claim's worth of work
    # fit beside the pushes in flight and no lane waits for the database.
    batch_size: int = 2000
    max_in_flight: int = 200  # concurrent pushes across connections
    lease: timedelta = timedelta(seconds=60)
    poll_interval: float = 0.5  # seconds between looks at the outbox when not woken
    max_attempts: int = MAX_ATTEMPTS
    record_interval: float = 0.05  # seconds between batched writes of outcomes
    # Seconds before claiming again after a claim that emptied the outbox: under a stream of
    # Sends, claims then gather their deliveries instead of taking one or two each.
    claim_interval: float = 0.05


class DeliveryWorker:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        apns: ApplePushGateway,
        *,
        clock: Callable[[], datetime],
        settings: WorkerSettings | None = None,
        on_recorded: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        # Wakes the status streams: outcomes and ticket counts changed.
        self._on_recorded = on_recorded
        self._apns = apns
        self._clock = clock
        self._settings = settings or WorkerSettings()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []  # the claim loop, then the record loop
        self._lanes: list[asyncio.Task[None]] = []
        self._outstanding = 0  # claimed, not yet recorded
        self._claimed: deque[ClaimedDelivery] = deque()  # claimed, not yet pushed
        self._results: list[DeliveryResult] = []  # answered, not yet recorded
        self._work = asyncio.Event()  # set when claimed deliveries wait for a lane
        self._room = asyncio.Event()  # set when outstanding work dropped
        self._answered = asyncio.Event()  # set when results wait to be recorded

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name=f"claims {self.owner}"),
            asyncio.create_task(self._record_loop(), name=f"outcomes {self.owner}"),
        ]
        # A fixed set of lanes, each pushing one delivery after another, bounds the pushes in
        # flight without a task and a semaphore per push.
        self._lanes = [
            asyncio.create_task(self._push_lane(), name=f"pushes {self.owner}")
            for _ in range(self._settings.max_in_flight)
        ]

    async def stop(self, grace: float) -> None:
        """Finishes the pushes in hand within `grace` seconds, records them, hands back the rest."""
        self._stopping = True
        self._wake.set()
        self._room.set()
        self._work.set()
        claims = self._tasks[0] if self._tasks else None
        if claims is not None:
            await asyncio.gather(claims, return_exceptions=True)
        if self._lanes:
            _, late = await asyncio.wait(self._lanes, timeout=grace)
            for lane in late:
                lane.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._lanes = []
        for task in self._tasks[1:]:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._tasks = []
        try:
            await self._flush()  # what APNs answered is kept; only the unanswered go back
        except Exception:
            log.exception("recording outcomes at shutdown failed; they will be pushed again")
        self._results = []
        self._claimed.clear()
        async with self._sessions.begin() as session:
            released = await Outbox(session).release(self.owner)
        self._outstanding = 0
        if released:
            log.info("handed back %d leased deliveries", released)

    async def _claim_loop(self) -> None:
        settings = self._settings
        while not self._stopping:
            # Top up once a quarter of the window is free: claims large enough to be cheap
            # per delivery, early enough that the lanes never run dry.
            room = settings.batch_size - self._outstanding
            if room < max(1, settings.batch_size // 4):
                self._room.clear()
                await self._room.wait()
                continue
            # Cleared before looking, so that a Send during the claim still wakes us after it.
            self._wake.clear()
            try:
                async with self._sessions.begin() as session:
                    claimed = await Outbox(session).claim_due(
                        self.owner, self._clock(), settings.lease, room
                    )
            except Exception:
                log.exception("claiming deliveries failed; trying again shortly")
                claimed = []
            if claimed:
                self._outstanding += len(claimed)
                self._claimed.extend(claimed)
                self._work.set()
                if len(claimed) < room:
                    await asyncio.sleep(settings.claim_interval)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), settings.poll_interval)

    async def _push_lane(self) -> None:
        """Pushes claimed deliveries one after another; after a stop, takes no new one."""
        while not self._stopping:
            if not self._claimed:
                self._work.clear()
                await self._work.wait()
                continue
            result = await self._deliver(self._claimed.popleft())
            self._results.append(result)
            self._answered.set()

    async def _record_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._answered.wait()
            started = loop.time()
            try:
                await self._flush()
            except Exception:
                log.exception("recording delivery outcomes failed; retrying in 1 s")
                await asyncio.sleep(1.0)
            # One write per record_interval at most, so that a batch gathers; but right away
            # when the last write took that long already: answers waiting fill the window.
            await asyncio.sleep(max(0.0, started + self._settings.record_interval - loop.time()))

    async def _flush(self) -> None:
        """Records the answered deliveries; on failure keeps them to record on the next try."""
        results, self._results = self._results, []
        self._answered.clear()
        if not results:
            return
        try:
            async with self._sessions.begin() as session:
                await Outbox(session).record(self.owner, results, self._clock())
        except BaseException:
            # Still claimed and unrecorded: they stay in the window until written.
            self._results[:0] = results
            self._answered.set()
            raise
        self._outstanding -= len(results)
        self._room.set()
        self._on_recorded()

    async def _deliver(self, delivery: ClaimedDelivery) -> DeliveryResult:
        if delivery.platform is Platform.GOOGLE:
            # Google Wallet delivery is not built yet: say so on the ticket, plainly.
            return DeliveryResult(delivery, DeliveryState.FAILED, "GoogleWalletNotConfigured")
        if delivery.push_token is None:
            return DeliveryResult(delivery, DeliveryState.FAILED, "DeviceUnregistered")
        try:
            outcome = await self._apns.push(delivery.push_token, delivery.topic)
        except Exception:
            log.exception("APNs push failed unexpectedly (delivery %d)", delivery.id)
            outcome = PushOutcome(0, "InternalError")
        verdict = judge_apns(
            outcome.status, outcome.reason, delivery.attempts + 1, self._settings.max_attempts
        )
        if verdict.operator_visible:
            log.error(
                "APNs refused the credentials for topic %s: %s", delivery.topic, verdict.reason
            )
        next_attempt_at = None
        if verdict.state is DeliveryState.PENDING:
            next_attempt_at = self._clock() + timedelta(seconds=verdict.retry_after)
        return DeliveryResult(
            delivery, verdict.state, verdict.reason, next_attempt_at, verdict.registration
        )
