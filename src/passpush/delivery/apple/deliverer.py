"""The Apple deliverer: pushes one claimed delivery to APNs and judges the answer.

What an answer means (delivered, retried later, failed, the device unregistered) is
domain/outcomes.py's `judge_apns`; this turns it into the delivery's result for the worker
to record, and logs the answers an operator must act on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from passpush.delivery.apple.gateway import PushOutcome
from passpush.domain.model import DeliveryState
from passpush.domain.outcomes import APNS_NOT_CONFIGURED, DEFAULT_RETRY, RetryPolicy, judge_apns
from passpush.outbox.claiming import ClaimedDelivery
from passpush.outbox.recording import DeliveryResult

log = logging.getLogger(__name__)


class ApplePushGateway(Protocol):
    """What the deliverer needs of APNs: ApnsGateway, or a stand-in in benchmarks."""

    async def push(self, device_token: str, topic: str) -> PushOutcome: ...


class AppleDeliverer:
    """Carries out Apple deliveries, any number at once; share one per worker."""

    def __init__(
        self,
        gateway: ApplePushGateway | None,
        *,
        clock: Callable[[], datetime],
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._gateway = gateway  # None: APNs not configured, each delivery fails at once
        self._clock = clock
        self._retry = retry

    async def deliver(self, delivery: ClaimedDelivery) -> DeliveryResult:
        if self._gateway is None:
            return DeliveryResult(delivery, DeliveryState.FAILED, APNS_NOT_CONFIGURED)
        if delivery.push_token is None:
            return DeliveryResult(delivery, DeliveryState.FAILED, "DeviceUnregistered")
        try:
            outcome = await self._gateway.push(delivery.push_token, delivery.topic)
        except Exception:
            log.exception("APNs push failed unexpectedly (delivery %d)", delivery.id)
            outcome = PushOutcome(0, "InternalError")
        now = self._clock()
        verdict = judge_apns(
            outcome.status,
            outcome.reason,
            delivery.attempts + 1,
            elapsed=delivery.seconds_since_first_attempt(now),
            policy=self._retry,
        )
        if verdict.operator_visible:
            log.error(
                "APNs refused the credentials for topic %s: %s", delivery.topic, verdict.reason
            )
        next_attempt_at = None
        if verdict.state is DeliveryState.PENDING:
            next_attempt_at = now + timedelta(seconds=verdict.retry_after)
        return DeliveryResult(
            delivery, verdict.state, verdict.reason, next_attempt_at, verdict.registration
        )
