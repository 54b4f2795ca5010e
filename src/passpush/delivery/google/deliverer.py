"""The Google deliverer: a Send adds a message to the pass object, a Delete removes them.

A Send's message notifies (`TEXT_AND_NOTIFY`) while the pass has had fewer than 3 notifying
messages in 24 hours, by passpush's ledger (store/google_messages.py); past that it goes as
`TEXT`, shown on the pass without an alert, and so does one Google refuses for its own count.
Either way the delivery is recorded as delivered without an alert. A Delete removes the
messages passpush added (their ids start with MESSAGE_ID_PREFIX) and leaves the others.
Google's answers are judged here (domain/outcomes.py judge_google), as Apple's are in
apple/deliverer.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.delivery.google.gateway import GoogleAnswer, GoogleWalletGateway
from passpush.delivery.google.messages import (
    DISPLAY_WINDOW_ENDED,
    NOTIFYING,
    display_window,
    find_message,
    google_message,
    is_notification_quota_refusal,
    is_ours,
    judge_answer,
    message_id,
)
from passpush.domain.model import (
    NO_ALERT_GOOGLE_QUOTA,
    NO_ALERT_PASS_QUOTA,
    Content,
    DeliveryState,
    Operation,
)
from passpush.domain.outcomes import DEFAULT_RETRY, GOOGLE_NOT_CONFIGURED, RetryPolicy
from passpush.outbox.claiming import ClaimedDelivery
from passpush.outbox.recording import DeliveryResult
from passpush.store.google_messages import GoogleMessageLog

log = logging.getLogger(__name__)

_ALARM_EVERY_SECONDS = 10.0


class GoogleDeliverer:
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
