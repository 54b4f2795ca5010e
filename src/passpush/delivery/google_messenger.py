"""Google Wallet deliveries: a Send adds a message to the pass object, a Delete removes them.

A Send's message notifies (`TEXT_AND_NOTIFY`) while the pass has had fewer than 3 notifying
messages in 24 hours, by passpush's ledger (store/google_messages.py); past that it goes as
`TEXT`, shown on the pass without an alert, and so does one Google refuses for its own count.
Either way the delivery is recorded as delivered without an alert. A Delete removes the
messages passpush added (their ids start with MESSAGE_ID_PREFIX) and leaves the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.delivery.google import GoogleAnswer, GoogleWalletGateway
from passpush.domain.model import (
    NO_ALERT_GOOGLE_QUOTA,
    NO_ALERT_PASS_QUOTA,
    Content,
    DeliveryState,
    Operation,
)
from passpush.domain.outcomes import (
    DEFAULT_RETRY,
    GOOGLE_NOT_CONFIGURED,
    RetryPolicy,
    Verdict,
    judge_google,
)
from passpush.outbox.claiming import ClaimedDelivery
from passpush.outbox.recording import DeliveryResult
from passpush.store.google_messages import GoogleMessageLog

log = logging.getLogger(__name__)

MESSAGE_ID_PREFIX = "passpush-"
DEFAULT_DISPLAY = timedelta(hours=1)
DISPLAY_WINDOW_ENDED = "DisplayWindowEnded"
NOTIFYING = "TEXT_AND_NOTIFY"
SILENT = "TEXT"
_ALARM_EVERY_SECONDS = 10.0


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


class GoogleMessenger:
    """Carries out one Google delivery at a time per caller; share one per process."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        gateway: GoogleWalletGateway | None,
        *,
        clock: Callable[[], datetime],
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._sessions = sessions
        self._gateway = gateway
        self._clock = clock
        self._retry = retry
        self._last_alarm = float("-inf")
        self._alarms_unlogged = 0

    @property
    def rate(self) -> float | None:
        """Requests per second the gateway allows, or None when Google is not configured."""
        if self._gateway is None or not self._gateway.has_credentials:
            return None
        return self._gateway.config.rate

    async def deliver(self, delivery: ClaimedDelivery) -> DeliveryResult:
        if self._gateway is None or not self._gateway.has_credentials:
            return DeliveryResult(delivery, DeliveryState.FAILED, GOOGLE_NOT_CONFIGURED)
        message = delivery.message
        if message is None:  # its ticket is gone: nothing says what to write
            return DeliveryResult(delivery, DeliveryState.FAILED, "TicketNotFound")
        try:
            if message.operation is Operation.DELETE:
                return await self._remove(self._gateway, delivery)
            assert message.content is not None
            return await self._add(self._gateway, delivery, message.content)
        except Exception:
            log.exception("Google delivery %d failed unexpectedly", delivery.id)
            return self._judged(delivery, GoogleAnswer(0, "InternalError"))

    async def _add(
        self, gateway: GoogleWalletGateway, delivery: ClaimedDelivery, content: Content
    ) -> DeliveryResult:
        now = self._clock()
        window = display_window(content, now)
        if window[1] <= now:  # it would never show
            return DeliveryResult(delivery, DeliveryState.FAILED, DISPLAY_WINDOW_ENDED)
        object_type, object_id = delivery.google_object_type, delivery.google_object_id
        if delivery.attempts:
            # An earlier attempt may have added it and lost Google's answer: never twice.
            found = await gateway.get_object(object_type, object_id)
            if not found.ok:
                return self._judged(delivery, found)
            added = find_message(found.body, message_id(delivery.ticket_id))
            if added is not None:
                notified = added.get("messageType") == NOTIFYING
                return self._judged(delivery, found, notifying=notified)
        async with self._sessions.begin() as session:
            notifying = await GoogleMessageLog(session).take_place(
                delivery.id, delivery.project_id, delivery.pass_id, now
            )
        why_silent = "" if notifying else NO_ALERT_PASS_QUOTA
        answer = await gateway.add_message(
            object_type,
            object_id,
            google_message(delivery.ticket_id, content, window, notifying=notifying),
        )
        if notifying and is_notification_quota_refusal(answer):
            # Google counted differently (messages from elsewhere, say): shown, no alert.
            async with self._sessions.begin() as session:
                await GoogleMessageLog(session).without_alert(delivery.id)
            notifying, why_silent = False, NO_ALERT_GOOGLE_QUOTA
            answer = await gateway.add_message(
                object_type,
                object_id,
                google_message(delivery.ticket_id, content, window, notifying=False),
            )
        result = self._judged(delivery, answer, notifying=notifying, why_silent=why_silent)
        if result.state is DeliveryState.FAILED:
            async with self._sessions.begin() as session:
                await GoogleMessageLog(session).give_back(delivery.id)
        return result

    async def _remove(
        self, gateway: GoogleWalletGateway, delivery: ClaimedDelivery
    ) -> DeliveryResult:
        object_type, object_id = delivery.google_object_type, delivery.google_object_id
        found = await gateway.get_object(object_type, object_id)
        if not found.ok:
            return self._judged(delivery, found)
        messages = found.body.get("messages") or []
        kept = [m for m in messages if not is_ours(m)]
        if len(kept) == len(messages):
            return self._judged(delivery, found)  # nothing of passpush's there: done
        return self._judged(delivery, await gateway.set_messages(object_type, object_id, kept))

    def _judged(
        self,
        delivery: ClaimedDelivery,
        answer: GoogleAnswer,
        *,
        notifying: bool = True,
        why_silent: str = NO_ALERT_PASS_QUOTA,
    ) -> DeliveryResult:
        now = self._clock()
        elapsed = delivery.seconds_since_first_attempt(now)
        verdict = judge_answer(answer, delivery.attempts + 1, elapsed, self._retry)
        if verdict.operator_visible:
            self._alarm(delivery, answer)
        if verdict.state is DeliveryState.DELIVERED and not notifying:
            return DeliveryResult(delivery, DeliveryState.DELIVERED_WITHOUT_ALERT, why_silent)
        next_attempt_at = None
        if verdict.state is DeliveryState.PENDING:
            next_attempt_at = now + timedelta(seconds=verdict.retry_after)
        return DeliveryResult(delivery, verdict.state, verdict.reason, next_attempt_at)

    def _alarm(self, delivery: ClaimedDelivery, answer: GoogleAnswer) -> None:
        """Logs refused credentials for the operator: at once, then at most every 10 s (every
        delivery of a broadcast would fail alike)."""
        now = time.monotonic()
        if now - self._last_alarm < _ALARM_EVERY_SECONDS:
            self._alarms_unlogged += 1
            return
        more = (
            f" ({self._alarms_unlogged} more since the last report)"
            if self._alarms_unlogged
            else ""
        )
        log.error(
            "Google Wallet refused passpush's service account %s: %d %s %s (object %s)%s; "
            "check PASSPUSH_GOOGLE_CREDENTIALS and the account's access to the issuer",
            self._gateway.client_email if self._gateway else "",
            answer.status,
            answer.reason,
            answer.message,
            delivery.google_object_id,
            more,
        )
        self._last_alarm, self._alarms_unlogged = now, 0


def find_message(google_object: Mapping[str, Any], wanted: str) -> Mapping[str, Any] | None:
    for message in google_object.get("messages") or []:
        if isinstance(message, dict) and message.get("id") == wanted:
            return message
    return None


def is_ours(message: Any) -> bool:
    return isinstance(message, dict) and str(message.get("id", "")).startswith(MESSAGE_ID_PREFIX)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
