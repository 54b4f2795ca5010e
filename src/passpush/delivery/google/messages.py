"""Passpush's messages on Google Wallet objects and classes: their ids, display windows and
shape, and what Google's answers to them mean.

Shared by the deliverer (a message on each pass object) and the class messenger (one on a
whole class).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from passpush.delivery.google.gateway import GoogleAnswer
from passpush.domain.model import Content
from passpush.domain.outcomes import RetryPolicy, Verdict, judge_google

MESSAGE_ID_PREFIX = "passpush-"
DEFAULT_DISPLAY = timedelta(hours=1)
DISPLAY_WINDOW_ENDED = "DisplayWindowEnded"
NOTIFYING = "TEXT_AND_NOTIFY"
SILENT = "TEXT"


def message_id(ticket_id: int) -> str:
    """The id of a ticket's message on every pass it reaches: one per ticket and pass, so
    that a retry can tell whether an earlier attempt added it."""
    return f"{MESSAGE_ID_PREFIX}{ticket_id}"


def display_window(content: Content, now: datetime) -> tuple[datetime, datetime]:
    """When the message shows: as asked, else from now, for an hour after its start."""
    start = content.display_start or now
    return start, content.display_end or start + DEFAULT_DISPLAY


def google_message(
    ticket_id: int, content: Content, window: tuple[datetime, datetime], *, notifying: bool
) -> dict[str, Any]:
    """The Message resource of the Google Wallet API."""
    message: dict[str, Any] = {
        "id": message_id(ticket_id),
        "body": content.body,
        "messageType": NOTIFYING if notifying else SILENT,
        "displayInterval": {
            "start": {"date": _rfc3339(window[0])},
            "end": {"date": _rfc3339(window[1])},
        },
    }
    if content.header:
        message["header"] = content.header
    return message


def judge_answer(
    answer: GoogleAnswer, attempt: int, elapsed: float, policy: RetryPolicy
) -> Verdict:
    """What Google's answer to attempt number `attempt` (from 1), made `elapsed` seconds
    after the first, means (domain/outcomes.py judge_google)."""
    return judge_google(
        answer.status,
        answer.reason,
        attempt,
        elapsed=elapsed,
        retry_after=answer.retry_after,
        policy=policy,
    )


def is_notification_quota_refusal(answer: GoogleAnswer) -> bool:
    """Google's refusal of a fourth notifying message in 24 h (403, or 429, `quotaExceeded`)."""
    return answer.status in (403, 429) and answer.reason == "quotaExceeded"


def find_message(google_object: Mapping[str, Any], wanted: str) -> Mapping[str, Any] | None:
    for message in google_object.get("messages") or []:
        if isinstance(message, dict) and message.get("id") == wanted:
            return message
    return None


def is_ours(message: Any) -> bool:
    return isinstance(message, dict) and str(message.get("id", "")).startswith(MESSAGE_ID_PREFIX)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
