"""What an APNs or Google Wallet answer means for a delivery (DESIGN.md, "APNs answers")."""

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
    # The credentials were refused (APNs 403, Google 401/403): no retry fixes that, an
    # operator must.
    operator_visible: bool = False


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
        return Verdict(DeliveryState.FAILED, f"403 {reason}", operator_visible=True)
    if status in _RETRYABLE_STATUSES or status >= 500:
        if attempt < max_attempts:
            return Verdict(DeliveryState.PENDING, reason, retry_after=backoff(attempt))
        return Verdict(DeliveryState.FAILED, reason)
    return Verdict(DeliveryState.FAILED, reason)


def backoff(attempt: int) -> float:
    """Exponential backoff with full jitter: up to base * 2^(attempt-1), capped."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


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
    max_attempts: int = MAX_ATTEMPTS,
    retry_after: float = 0.0,
) -> Verdict:
    """Judges Google Wallet's answer to attempt number `attempt` (from 1).

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
        if attempt < max_attempts:
            wait = max(backoff(attempt), min(retry_after, BACKOFF_CAP_SECONDS))
            return Verdict(DeliveryState.PENDING, described, retry_after=wait)
        return Verdict(DeliveryState.FAILED, described)
    return Verdict(DeliveryState.FAILED, described)
