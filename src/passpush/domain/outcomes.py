"""What an APNs or Google Wallet answer means for a delivery (docs/architecture.md)."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from passpush.domain.model import DeliveryState

RETRY_BUDGET_SECONDS = 3600.0
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
class RetryPolicy:
    """How long and how often a transient failure (429, 5xx, no answer) is retried.

    Retries go on until `budget` seconds have passed since the delivery's first attempt,
    so that an outage of the upstream shorter than the budget costs time, not deliveries;
    the budget is also the bound: nothing retries for ever.
    """

    budget: float = RETRY_BUDGET_SECONDS
    backoff_base: float = BACKOFF_BASE_SECONDS
    backoff_cap: float = BACKOFF_CAP_SECONDS

    def __post_init__(self) -> None:
        if self.budget < 0 or self.backoff_base <= 0 or self.backoff_cap < self.backoff_base:
            raise ValueError("a retry budget >= 0 and a backoff cap >= its base > 0")

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: between half and all of base * 2^(attempt-1),
        capped."""
        # Capped before the power overflows: attempts go on for the whole budget.
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** min(attempt - 1, 62))
        return random.uniform(ceiling / 2, ceiling)

    def wait_before_retry(self, attempt: int, elapsed: float, retry_after: float) -> float | None:
        """Seconds to wait before the attempt after number `attempt` (from 1), made
        `elapsed` seconds after the first; None when the budget is spent. The server's
        Retry-After is a floor, itself capped."""
        if elapsed >= self.budget:
            return None
        return max(self.backoff(attempt), min(retry_after, self.backoff_cap))


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Verdict:
    state: DeliveryState  # DELIVERED, FAILED, or PENDING to retry
    reason: str
    registration: RegistrationAction = RegistrationAction.KEEP
    retry_after: float = 0.0  # seconds, when state is PENDING
    # The credentials were refused (APNs 403, Google 401/403): no retry fixes that, an
    # operator must.
    operator_visible: bool = False


def judge_apns(
    status: int,
    reason: str,
    attempt: int,
    *,
    elapsed: float = 0.0,
    retry_after: float = 0.0,
    policy: RetryPolicy = DEFAULT_RETRY,
) -> Verdict:
    """Judges the answer to attempt number `attempt` (from 1), made `elapsed` seconds after
    the delivery's first; `status` 0 means no answer (connection lost, timeout)."""
    if status == 200:
        return Verdict(DeliveryState.DELIVERED, "")
    reason = reason or f"HTTP{status}"
    if status == 410:
        return Verdict(DeliveryState.FAILED, reason, RegistrationAction.REMOVE)
    if status == 400 and reason in _BAD_TOKEN_REASONS:
        return Verdict(DeliveryState.FAILED, reason, RegistrationAction.DEACTIVATE)
    if status == 403:
        return Verdict(DeliveryState.FAILED, f"403 {reason}", operator_visible=True)
    if status in _RETRYABLE_STATUSES or status >= 500:
        return _retry_or_fail(reason, attempt, elapsed, retry_after, policy)
    return Verdict(DeliveryState.FAILED, reason)


def _retry_or_fail(
    reason: str, attempt: int, elapsed: float, retry_after: float, policy: RetryPolicy
) -> Verdict:
    wait = policy.wait_before_retry(attempt, elapsed, retry_after)
    if wait is None:
        return Verdict(DeliveryState.FAILED, reason)
    return Verdict(DeliveryState.PENDING, reason, retry_after=wait)


GOOGLE_OBJECT_NOT_FOUND = "GoogleObjectNotFound"

# No credentials for a wallet: each of its deliveries fails at once, never pretends to
# succeed, and says what the operator must set.
APNS_NOT_CONFIGURED = "ApnsNotConfigured: set PASSPUSH_APNS_CERT or PASSPUSH_APNS_KEY_FILE"
GOOGLE_NOT_CONFIGURED = "GoogleWalletNotConfigured: set PASSPUSH_GOOGLE_CREDENTIALS"
_GOOGLE_RETRYABLE_STATUSES = frozenset({0, 408, 429})


def judge_google(
    status: int,
    reason: str,
    attempt: int,
    *,
    elapsed: float = 0.0,
    retry_after: float = 0.0,
    policy: RetryPolicy = DEFAULT_RETRY,
) -> Verdict:
    """Judges Google Wallet's answer to attempt number `attempt` (from 1), made `elapsed`
    seconds after the delivery's first.

    `status` 0 means no answer (timeout, connection error); `retry_after` is Google's
    Retry-After in seconds, a floor for the backoff.
    """
    if 200 <= status < 300:
        return Verdict(DeliveryState.DELIVERED, "")
    if status == 404:
        return Verdict(DeliveryState.FAILED, GOOGLE_OBJECT_NOT_FOUND)
    # Prefixed: a ticket's error sample mixes Apple's and Google's reasons.
    described = f"Google {status} {reason}" if status else f"Google {reason}"
    if status in (401, 403):
        return Verdict(DeliveryState.FAILED, described, operator_visible=True)
    if status in _GOOGLE_RETRYABLE_STATUSES or status >= 500:
        return _retry_or_fail(described, attempt, elapsed, retry_after, policy)
    return Verdict(DeliveryState.FAILED, described)
