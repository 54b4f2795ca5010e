"""The delivery worker: claims due deliveries, hands them to the deliverers, records outcomes,
as a pipeline.

What to send and what an answer means is each platform's deliverer's (apple/deliverer.py,
google/deliverer.py, one interface in deliverer.py); the worker dispatches by platform.

Durable before acknowledged: Send commits deliveries before it answers; the
worker leases them, so a crash or a restart leaves nothing lost. At most
`batch_size` deliveries are claimed and not yet recorded at any moment, so a
crash pushes at most one batch twice. Within that window the work flows:
claims are topped up as outcomes are recorded, and outcomes are recorded in
small batched transactions while the pushes go on.

Deliveries may wait in the worker longer than a lease (a slow APNs, Google's pace): the
worker renews the leases of those it holds, so none is claimed again, and pushed twice,
while still in its hands.

Each platform has its own window and lanes: `batch_size` and `max_in_flight` are Apple's.
Google's requests are paced (~20 a second), so its window holds only what is sent well
within a lease, and its lanes waiting for their turn never hold up Apple's pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import socket
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from passpush.delivery.apple.deliverer import AppleDeliverer, ApplePushGateway
from passpush.delivery.deliverer import Deliverer
from passpush.delivery.google.classes import ClassMessenger
from passpush.delivery.google.deliverer import GoogleDeliverer
from passpush.delivery.google.gateway import GoogleWalletGateway
from passpush.domain.model import Platform
from passpush.domain.outcomes import DEFAULT_RETRY, RetryPolicy
from passpush.logs import log_context
from passpush.metrics import count_outcomes
from passpush.outbox.claiming import ClaimedDelivery, claim_due
from passpush.outbox.leases import release_leases, renew_leases
from passpush.outbox.recording import DeliveryResult, record
from passpush.store.connectors import connect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    # Claimed-and-unrecorded deliveries at most: the crash re-push bound. Several times
    # max_in_flight, so that answers awaiting their write and the next claim's worth of work
    # fit beside the pushes in flight and no lane waits for the database.
    batch_size: int = 2000
    max_in_flight: int = 200  # concurrent APNs pushes across connections
    lease: timedelta = timedelta(seconds=60)
    poll_interval: float = 0.5  # seconds between looks at the outbox when not woken
    # Transient failures (429, 5xx, no answer) are retried with capped backoff for a time
    # budget from the delivery's first attempt, so an upstream outage shorter than it fails
    # nothing.
    retry: RetryPolicy = DEFAULT_RETRY
    record_interval: float = 0.05  # seconds between batched writes of outcomes
    # Seconds before claiming again after claims that emptied the outbox: under a stream of
    # Sends, a claim then gathers their deliveries instead of taking one or two each.
    claim_interval: float = 0.05


@dataclass(eq=False)
class _PlatformQueue:
    """One platform's deliveries between their claim and their record, and its deliverer."""

    platform: Platform
    deliverer: Deliverer
    window: int  # claimed and not yet recorded, at most
    lanes: int  # deliveries in flight at once
    waiting: deque[ClaimedDelivery] = field(default_factory=deque)  # claimed, not yet sent
    outstanding: int = 0  # claimed, not yet recorded
    work: asyncio.Event = field(default_factory=asyncio.Event)  # set while some wait

    @property
    def room(self) -> int:
        return self.window - self.outstanding

    @property
    def wants_more(self) -> bool:
        # Top up once a quarter of the window is free: claims large enough to be cheap
        # per delivery, early enough that the lanes never run dry.
        return self.room >= max(1, self.window // 4)


class DeliveryWorker:
    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        apns: ApplePushGateway | None,
        google: GoogleWalletGateway | None = None,
        *,
        clock: Callable[[], datetime],
        settings: WorkerSettings | None = None,
        on_recorded: Callable[[], None] = lambda: None,
    ) -> None:
        # Claims and records run many times a second: on the driver's connection directly.
        self._direct = connect(engine)
        # Wakes the status streams: outcomes and ticket counts changed.
        self._on_recorded = on_recorded
        self._clock = clock
        self._settings = settings = settings or WorkerSettings()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Sends to whole Google templates: one message on the class each.
        self._classes = ClassMessenger(
            sessions,
            google,
            clock=clock,
            owner=self.owner,
            retry=settings.retry,
            on_recorded=self._class_message_recorded,
        )
        self._wake = asyncio.Event()
        self._stopping = False  # no new claims or pushes
        self._closing = False  # and the record loop ends
        # The claim loop, then the record and lease loops.
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()  # set with _closing
        self._lanes: list[asyncio.Task[None]] = []
        # Each platform's deliveries go to its own deliverer, through its own queue.
        apple = AppleDeliverer(apns, clock=clock, retry=settings.retry)
        self._queues = {
            Platform.APPLE: _PlatformQueue(
                Platform.APPLE, apple, settings.batch_size, settings.max_in_flight
            ),
            Platform.GOOGLE: _google_queue(
                GoogleDeliverer(sessions, google, clock=clock, retry=settings.retry), settings
            ),
        }
        self._results: list[DeliveryResult] = []  # answered, not yet recorded
        self._held: set[int] = set()  # ids claimed and not yet recorded
        self._room = asyncio.Event()  # set when outstanding work dropped
        self._answered = asyncio.Event()  # set when results wait to be recorded

    def wake(self) -> None:
        self._wake.set()

    def _class_message_recorded(self) -> None:
        self._on_recorded()
        self._wake.set()  # a Delete's objects are due now

    def start(self) -> None:
        self._stopping = self._closing = False
        self._closed.clear()
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name=f"claims {self.owner}"),
            asyncio.create_task(self._record_loop(), name=f"outcomes {self.owner}"),
            asyncio.create_task(self._lease_loop(), name=f"leases {self.owner}"),
        ]
        # A fixed set of lanes, each pushing one delivery after another, bounds the pushes in
        # flight without a task and a semaphore per push.
        self._lanes = [
            asyncio.create_task(self._push_lane(queue), name=f"{queue.platform} {self.owner}")
            for queue in self._queues.values()
            for _ in range(queue.lanes)
        ]
        self._classes.start()

    async def stop(self, grace: float) -> None:
        """Finishes the pushes in hand within `grace` seconds, records them, hands back the rest."""
        self._stopping = True
        self._wake.set()
        self._room.set()
        for queue in self._queues.values():
            queue.work.set()
        claims = self._tasks[0] if self._tasks else None
        if claims is not None:
            await asyncio.gather(claims, return_exceptions=True)
        await self._classes.stop(grace)
        if self._lanes:
            _, late = await asyncio.wait(self._lanes, timeout=grace)
            for lane in late:
                lane.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._lanes = []
        # The record loop ends at its next turn rather than by cancellation: cancelled inside
        # a transaction, it would leave SQLite's write lock with a connection nobody finishes.
        self._closing = True
        self._closed.set()
        self._answered.set()
        await asyncio.gather(*self._tasks[1:], return_exceptions=True)
        self._tasks = []
        try:
            await self._flush()  # what APNs answered is kept; only the unanswered go back
        except Exception:
            log.exception("recording outcomes at shutdown failed; they will be pushed again")
        self._results = []
        self._held.clear()
        for queue in self._queues.values():
            queue.waiting.clear()
            queue.outstanding = 0
        released = await self._direct.run(lambda: release_leases(self.owner))
        self._direct.close()
        if released:
            log.info("handed back %d leased deliveries", released)

    async def _claim_loop(self) -> None:
        settings = self._settings
        loop = asyncio.get_running_loop()
        # When to look again at a platform whose last claim found nothing due.
        next_look = dict.fromkeys(self._queues, 0.0)
        while not self._stopping:
            if self._wake.is_set():
                # Cleared before looking, so that a Send during the claim still wakes us after it.
                self._wake.clear()
                next_look = dict.fromkeys(self._queues, 0.0)
            claimed_any = filled_any = False
            for platform, queue in self._queues.items():
                if not queue.wants_more or loop.time() < next_look[platform]:
                    continue
                room = queue.room
                claimed = await self._claim(queue)
                if claimed:
                    claimed_any, filled_any = True, filled_any or len(claimed) == room
                    queue.outstanding += len(claimed)
                    queue.waiting.extend(claimed)
                    queue.work.set()
                else:
                    next_look[platform] = loop.time() + settings.poll_interval
            if claimed_any:
                if not filled_any:
                    await asyncio.sleep(settings.claim_interval)
                continue
            # Until a Send wakes us, a full window gets room, or a platform is due a look.
            self._room.clear()
            looks = [next_look[p] for p, q in self._queues.items() if q.wants_more]
            timeout = max(0.0, min(looks) - loop.time()) if looks else None
            await _first_of(self._wake, self._room, timeout)

    async def _claim(self, queue: _PlatformQueue) -> list[ClaimedDelivery]:
        try:
            # Read here: the steps may run on another thread.
            lease, room, now = self._settings.lease, queue.room, self._clock()
            claimed = await self._direct.run(
                lambda: claim_due(self.owner, now, lease, room, queue.platform)
            )
        except Exception:
            log.exception("claiming deliveries failed; trying again shortly")
            return []
        # One whose lease ran out while we held it (renewing failed): it is in hand already.
        claimed = [d for d in claimed if d.id not in self._held]
        self._held.update(d.id for d in claimed)
        return claimed

    async def _lease_loop(self) -> None:
        """Renews the leases of the deliveries in hand a few times per lease."""
        lease = self._settings.lease
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(lease.total_seconds() / 4):
                    await self._closed.wait()
            if self._closing or not self._held:
                continue
            steps = functools.partial(
                renew_leases, self.owner, list(self._held), self._clock() + lease
            )
            try:
                await self._direct.run(steps)
            except Exception:
                log.exception("renewing the leases of deliveries in hand failed")

    async def _push_lane(self, queue: _PlatformQueue) -> None:
        """Pushes claimed deliveries one after another; after a stop, takes no new one."""
        while not self._stopping:
            if not queue.waiting:
                queue.work.clear()
                await queue.work.wait()
                continue
            delivery = queue.waiting.popleft()
            log_context(project=delivery.project_id, ticket=delivery.ticket_id)
            result = await queue.deliverer.deliver(delivery)
            # Only now: a record swaps self._results for a new list while the push is out.
            self._results.append(result)
            self._answered.set()

    async def _record_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._answered.wait()
            if self._closing:
                return  # stop() records what is left
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
            now = self._clock()
            await self._direct.run(lambda: record(self.owner, results, now))
        except BaseException:
            # Still claimed and unrecorded: they stay in the window until written.
            self._results[:0] = results
            self._answered.set()
            raise
        self._held.difference_update(r.delivery.id for r in results)
        for platform, count in Counter(r.delivery.platform for r in results).items():
            self._queues[platform].outstanding -= count
        self._room.set()
        self._on_recorded()
        count_outcomes(Counter((r.delivery.platform, r.state, r.reason) for r in results).items())


def _google_queue(google: GoogleDeliverer, settings: WorkerSettings) -> _PlatformQueue:
    """Google's window and lanes. Its requests are paced, so it claims no more than it sends
    well within a lease (a delivery takes up to three requests): a lease that ran out under
    a claimed delivery would let it be claimed, and sent, again."""
    rate = google.rate
    if rate is None:  # not configured: each delivery fails at once
        return _PlatformQueue(Platform.GOOGLE, google, settings.batch_size, lanes=4)
    window = int(rate * settings.lease.total_seconds() / 4)
    return _PlatformQueue(
        Platform.GOOGLE,
        google,
        window=max(1, min(settings.batch_size, window)),
        lanes=max(1, min(settings.max_in_flight, math.ceil(rate))),
    )


async def _first_of(a: asyncio.Event, b: asyncio.Event, seconds: float | None) -> None:
    """Waits until either event is set, or `seconds` pass (None: no limit)."""
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
