"""What an APNs answer means for a delivery (DESIGN.md, "APNs answers")."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from passpush.domain.model import DeliveryState

MAX_ATTEMPTS = 5
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0

# 400 reasons that mean the token is wrong for good.
_BAD_TOKEN_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})
_RETRYABLE_STATUSES = frozenset({0, 429, 500, 503})


class RegistrationAction(enum.Enum):
    KEEP = "keep"
    DEACTIVATE = "deactivate"  # the token is bad: stop pushing it until the device re-registers
    REMOVE = "remove"  # the device is gone (410)


@dataclass(frozen=True)
class Verdict:
    state: DeliveryState  # DELIVERED, FAILED, or PENDING to retry
    reason: str
    registration: RegistrationAction = RegistrationAction.KEEP
    retry_after: float = 0.0  # seconds, when state is PENDING

    @property
    def operator_visible(self) -> bool:
        """403: the certificate or key is wrong, which no retry will fix."""
        return self.reason.startswith("403")


def judge_apns(status: int, reason: str, attempt: int, max_attempts: int = MAX_ATTEMPTS) -> Verdict:
    """Judges the answer to attempt number `attempt` (from 1)."""
    if status == 200:
        return Verdict(DeliveryState.DELIVERED, "")
    reason = reason or f"HTTP{status}"
    if status == 410:
        return Verdict(DeliveryState.FAILED, reason, RegistrationAction.REMOVE)
    if status == 400 and reason in _BAD_TOKEN_REASONS:
        return Verdict(DeliveryState.FAILED, reason, RegistrationAction.DEACTIVATE)
    if status == 403:
        return Verdict(DeliveryState.FAILED, f"403 {reason}")
    if status in _RETRYABLE_STATUSES or status >= 500:
        if attempt < max_attempts:
            return Verdict(DeliveryState.PENDING, reason, retry_after=backoff(attempt))
        return Verdict(DeliveryState.FAILED, reason)
    return Verdict(DeliveryState.FAILED, reason)


def backoff(attempt: int) -> float:
    """Exponential backoff with full jitter: up to base * 2^(attempt-1), capped."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)
