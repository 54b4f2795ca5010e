"""The delivery worker: claims due deliveries in batches, pushes them, records outcomes.

Durable before acknowledged: Send commits deliveries before it answers; the
worker leases them, so a crash or a restart leaves nothing lost — an expired
lease is claimed again (at most one batch pushed twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
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
    batch_size: int = 500
    max_in_flight: int = 200  # concurrent pushes across connections
    lease: timedelta = timedelta(seconds=60)
    poll_interval: float = 0.5  # seconds between looks at the outbox when not woken
    max_attempts: int = MAX_ATTEMPTS


class DeliveryWorker:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        apns: ApplePushGateway,
        *,
        clock: Callable[[], datetime],
        settings: WorkerSettings | None = None,
    ) -> None:
        self._sessions = sessions
        self._apns = apns
        self._clock = clock
        self._settings = settings or WorkerSettings()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._stopping = False
        self._in_flight = asyncio.Semaphore(self._settings.max_in_flight)
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"delivery-worker {self.owner}")

    async def stop(self, grace: float) -> None:
        """Finishes the batch in hand within `grace` seconds, else hands it back."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        async with self._sessions.begin() as session:
            released = await Outbox(session).release(self.owner)
        if released:
            log.info("handed back %d leased deliveries", released)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                handled = await self.run_once()
            except Exception:
                log.exception("delivery batch failed; its leases will expire and be retried")
                handled = 0
            if handled == 0 and not self._stopping:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._settings.poll_interval)

    async def run_once(self) -> int:
        """Claims one batch, delivers it, records the outcomes; returns the batch size."""
        settings = self._settings
        async with self._sessions.begin() as session:
            claimed = await Outbox(session).claim_due(
                self.owner, self._clock(), settings.lease, settings.batch_size
            )
        if not claimed:
            return 0
        pushes = [asyncio.create_task(self._deliver(d)) for d in claimed]
        try:
            await asyncio.wait(pushes)
        except asyncio.CancelledError:
            # Stopping past the grace period: keep what APNs already answered, so that only
            # the unanswered pushes are handed back and sent again.
            for push in pushes:
                push.cancel()
            await self._record([p.result() for p in pushes if p.done() and not p.cancelled()])
            raise
        await self._record([push.result() for push in pushes])
        return len(claimed)

    async def _record(self, results: list[DeliveryResult]) -> None:
        async with self._sessions.begin() as session:
            await Outbox(session).record(self.owner, results, self._clock())

    async def _deliver(self, delivery: ClaimedDelivery) -> DeliveryResult:
        if delivery.platform is Platform.GOOGLE:
            # Google Wallet delivery is not built yet: say so on the ticket, plainly.
            return DeliveryResult(delivery, DeliveryState.FAILED, "GoogleWalletNotConfigured")
        if delivery.push_token is None:
            return DeliveryResult(delivery, DeliveryState.FAILED, "DeviceUnregistered")
        async with self._in_flight:
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
