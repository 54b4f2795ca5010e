"""The APNs answer table of docs/architecture.md, rule by rule."""

from __future__ import annotations

import pytest

from passpush.domain.model import DeliveryState
from passpush.domain.outcomes import (
    BACKOFF_CAP_SECONDS,
    DEFAULT_RETRY,
    RegistrationAction,
    RetryPolicy,
    judge_apns,
    judge_google,
)

TEN_MINUTES = RetryPolicy(budget=600)


def test_200_is_delivered() -> None:
    verdict = judge_apns(200, "", attempt=1)
    assert (verdict.state, verdict.registration) == (
        DeliveryState.DELIVERED,
        RegistrationAction.KEEP,
    )


@pytest.mark.parametrize("reason", ["BadDeviceToken", "DeviceTokenNotForTopic"])
def test_bad_tokens_fail_and_deactivate(reason: str) -> None:
    verdict = judge_apns(400, reason, attempt=1)
    assert verdict.state is DeliveryState.FAILED
    assert verdict.registration is RegistrationAction.DEACTIVATE


@pytest.mark.parametrize("reason", ["Unregistered", "ExpiredToken"])
def test_410_removes_the_registration(reason: str) -> None:
    verdict = judge_apns(410, reason, attempt=1)
    assert (verdict.state, verdict.registration) == (
        DeliveryState.FAILED,
        RegistrationAction.REMOVE,
    )


def test_403_fails_for_the_operator_to_see() -> None:
    verdict = judge_apns(403, "InvalidProviderToken", attempt=1)
    assert verdict.state is DeliveryState.FAILED and verdict.operator_visible


@pytest.mark.parametrize(("status", "reason"), [(413, "PayloadTooLarge"), (400, "BadTopic")])
def test_other_client_errors_fail_without_retry(status: int, reason: str) -> None:
    verdict = judge_apns(status, reason, attempt=1)
    assert (verdict.state, verdict.reason) == (DeliveryState.FAILED, reason)
    assert verdict.registration is RegistrationAction.KEEP


@pytest.mark.parametrize("status", [429, 500, 503, 0])
def test_transient_answers_retry_within_the_budget_then_give_up(status: int) -> None:
    # The attempt count does not end retries, the time since the first attempt does.
    retry = judge_apns(status, "Busy", attempt=40, elapsed=599, policy=TEN_MINUTES)
    assert retry.state is DeliveryState.PENDING and retry.retry_after > 0
    final = judge_apns(status, "Busy", attempt=41, elapsed=600, policy=TEN_MINUTES)
    assert (final.state, final.reason) == (DeliveryState.FAILED, "Busy")


def test_the_default_budget_is_an_hour() -> None:
    assert DEFAULT_RETRY.budget == 3600
    assert judge_apns(503, "", attempt=60, elapsed=3599).state is DeliveryState.PENDING
    assert judge_apns(503, "", attempt=61, elapsed=3600).state is DeliveryState.FAILED


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    first = [DEFAULT_RETRY.backoff(1) for _ in range(50)]
    fourth = [DEFAULT_RETRY.backoff(4) for _ in range(50)]
    assert all(0.5 <= b <= 1.0 for b in first)
    assert all(4.0 <= b <= 8.0 for b in fourth)
    assert len(set(fourth)) > 1  # jitter
    assert max(DEFAULT_RETRY.backoff(3000) for _ in range(50)) <= BACKOFF_CAP_SECONDS


def test_apns_retry_after_is_a_floor_for_the_backoff() -> None:
    assert judge_apns(503, "", attempt=1, retry_after=30).retry_after == 30


def test_google_success_is_delivered_and_a_missing_object_fails_clearly() -> None:
    assert judge_google(200, "", attempt=1).state is DeliveryState.DELIVERED
    missing = judge_google(404, "resourceNotFound", attempt=1)
    assert (missing.state, missing.reason) == (DeliveryState.FAILED, "GoogleObjectNotFound")


@pytest.mark.parametrize("status", [401, 403])
def test_google_refusing_the_credentials_fails_for_the_operator_to_see(status: int) -> None:
    verdict = judge_google(status, "permissionDenied", attempt=1)
    assert verdict.state is DeliveryState.FAILED and verdict.operator_visible
    assert verdict.reason == f"Google {status} permissionDenied"


@pytest.mark.parametrize("status", [429, 500, 503, 0])
def test_google_transient_answers_retry_within_the_budget_then_give_up(status: int) -> None:
    retry = judge_google(status, "backendError", attempt=30, elapsed=599, policy=TEN_MINUTES)
    assert retry.state is DeliveryState.PENDING and retry.retry_after > 0
    assert not retry.operator_visible
    final = judge_google(status, "backendError", attempt=31, elapsed=600, policy=TEN_MINUTES)
    assert final.state is DeliveryState.FAILED


def test_google_retry_after_is_a_floor_for_the_backoff() -> None:
    assert judge_google(429, "rateLimitExceeded", attempt=1, retry_after=30).retry_after == 30
    capped = judge_google(429, "rateLimitExceeded", attempt=1, retry_after=3600)
    assert capped.retry_after == BACKOFF_CAP_SECONDS


def test_google_other_client_errors_fail_without_retry() -> None:
    verdict = judge_google(400, "invalidArgument", attempt=1)
    assert (verdict.state, verdict.reason) == (DeliveryState.FAILED, "Google 400 invalidArgument")
