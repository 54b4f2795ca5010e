"""Google class messages: a Send to every pass of a Google template is one call to its class.

Google shows a message added to a class on every object of that class, and a
`TEXT_AND_NOTIFY` one also notifies the holders who saved an object of it ("Add Message and
Notify", https://developers.google.com/wallet/generic/use-cases/trigger-push-notifications;
`POST /walletobjects/v1/{classType}/{classId}/addMessage`). So a Send whose audience is a
whole Google template takes one request, whatever the number of holders, where one per object
at Google's ~20 requests/s per issuer took hours for a million. Subsets keep per-object
messages (deliverer.py).

The ticket's deliveries wait for that one answer (outbox/class_messages.py) and then take it
all: each pass counted in Google's 3-notifying-per-24-hours ledger, delivered without an
alert if it had no place left; failed with the reason if Google refused. A Delete to a whole
template removes passpush's messages from the class first, and then each object's as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Iterator
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
    GOOGLE_CLASS_NOT_FOUND,
    NO_ALERT_GOOGLE_QUOTA,
    NO_ALERT_PASS_QUOTA,
    DeliveryState,
    Operation,
    Platform,
)
from passpush.domain.outcomes import DEFAULT_RETRY, GOOGLE_NOT_CONFIGURED, RetryPolicy
from passpush.logs import log_context
from passpush.metrics import count_outcomes
from passpush.outbox.class_messages import PENDING, ClaimedClassMessage, ClassMessageStore

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)  # renewed with every chunk recorded
# A look for class messages due, each a transaction (SQLite: the write lock). Not woken by
# every Send, as the worker is: a broadcast to a class waits this long at most.
POLL_SECONDS = 1.0


class ClassMessenger:
    """Carries out the class messages that fall due, one at a time; one per worker."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        gateway: GoogleWalletGateway | None,
        *,
        clock: Callable[[], datetime],
        owner: str,
        retry: RetryPolicy = DEFAULT_RETRY,
        on_recorded: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._gateway = gateway
        self._clock = clock
        self._owner = owner
        self._retry = retry
        # Wakes the ticket streams, and the worker for a Delete's objects.
        self._on_recorded = on_recorded
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"class messages {self._owner}")

    async def stop(self, grace: float) -> None:
        """Stops between transactions, or within `grace` seconds by cancellation."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.shield(self._task)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                while not self._stopping and await self.carry_out_next():
                    pass
            except Exception:
                log.exception("a Google class message failed unexpectedly; trying again shortly")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._wake.wait()

    async def carry_out_next(self) -> bool:
        """Carries out the class message due first, if any: asks Google (unless it answered
        already) and records the answer on the ticket's deliveries. False when none was due."""
        async with self._sessions.begin() as session:
            store = ClassMessageStore(session)
            claimed = await store.claim_due(self._owner, self._clock(), LEASE)
            # No active pass to reach (all skipped): Google is not asked, since the class
            # message would show only on passes the Send did not mean.
            nobody = claimed is not None and not await store.has_waiting(claimed.ticket_id)
        if claimed is None:
            return False
        log_context(project=claimed.project_id, ticket=claimed.ticket_id)
        if claimed.state == PENDING and not nobody:
            answered = await self._ask_google(claimed)
            if answered is None:
                return True  # to be asked again later
            claimed = answered
        while not self._stopping:
            async with self._sessions.begin() as session:
                store = ClassMessageStore(session)
                recorded, states = await store.record_chunk(
                    claimed, self._owner, self._clock(), LEASE
                )
            self._on_recorded()
            count_outcomes(_outcomes(states, claimed))
            if not recorded:
                break
            await asyncio.sleep(0)  # the writes queued meanwhile go first
        return True

    async def _ask_google(self, claimed: ClaimedClassMessage) -> ClaimedClassMessage | None:
        """Google's answer as what the deliveries become, stored; None when it is to be
        asked again (stored as such)."""
        gateway = self._gateway
        if gateway is None or not gateway.has_credentials:
            return await self._answered(claimed, DeliveryState.FAILED, GOOGLE_NOT_CONFIGURED)
        if claimed.message.operation is Operation.DELETE:
            return await self._remove(gateway, claimed)
        return await self._add(gateway, claimed)

    async def _add(
        self, gateway: GoogleWalletGateway, claimed: ClaimedClassMessage
    ) -> ClaimedClassMessage | None:
        content = claimed.message.content
        assert content is not None
        now = self._clock()
        window = display_window(content, now)
        if window[1] <= now:  # it would never show
            return await self._answered(claimed, DeliveryState.FAILED, DISPLAY_WINDOW_ENDED)
        class_type, class_id = claimed.google_class.class_type, claimed.google_class.class_id
        if claimed.attempts:
            # An earlier attempt may have added it and lost Google's answer: never twice.
            found = await gateway.get_object(class_type, class_id)
            if not found.ok:
                return await self._judged(claimed, found)
            added = find_message(found.body, message_id(claimed.ticket_id))
            if added is not None:
                notified = added.get("messageType") == NOTIFYING
                return await self._judged(claimed, found, notifying=notified)
        message = google_message(claimed.ticket_id, content, window, notifying=True)
        answer = await gateway.add_message(class_type, class_id, message)
        if not is_notification_quota_refusal(answer):
            return await self._judged(claimed, answer)
        # Google would not notify for the class now: shown on every pass, without an alert.
        message = google_message(claimed.ticket_id, content, window, notifying=False)
        answer = await gateway.add_message(class_type, class_id, message)
        return await self._judged(claimed, answer, notifying=False)

    async def _remove(
        self, gateway: GoogleWalletGateway, claimed: ClaimedClassMessage
    ) -> ClaimedClassMessage | None:
        """Takes passpush's messages off the class; then each object's go, as deliveries."""
        class_type, class_id = claimed.google_class.class_type, claimed.google_class.class_id
        found = await gateway.get_object(class_type, class_id)
        if found.ok:
            messages = found.body.get("messages") or []
            kept = [m for m in messages if not is_ours(m)]
            if len(kept) < len(messages):
                found = await gateway.set_messages(class_type, class_id, kept)
        if found.ok or found.status == 404:  # gone, or no class: no message of ours on it
            return await self._answered(claimed, DeliveryState.PENDING, "")
        return await self._judged(claimed, found)

    async def _judged(
        self, claimed: ClaimedClassMessage, answer: GoogleAnswer, *, notifying: bool = True
    ) -> ClaimedClassMessage | None:
        now = self._clock()
        elapsed = claimed.seconds_since_first_attempt(now)
        verdict = judge_answer(answer, claimed.attempts + 1, elapsed, self._retry)
        if verdict.operator_visible:
            log.error(
                "Google Wallet refused a message to class %s: %d %s %s; check "
                "PASSPUSH_GOOGLE_CREDENTIALS and the account's access to the issuer",
                claimed.google_class.class_id,
                answer.status,
                answer.reason,
                answer.message,
            )
        if verdict.state is DeliveryState.PENDING:
            async with self._sessions.begin() as session:
                await ClassMessageStore(session).retry_later(
                    claimed.ticket_id,
                    self._owner,
                    now + timedelta(seconds=verdict.retry_after),
                    verdict.reason,
                    now,
                )
            return None
        reason = GOOGLE_CLASS_NOT_FOUND if answer.status == 404 else verdict.reason
        return await self._answered(claimed, verdict.state, reason, notifying=notifying)

    async def _answered(
        self,
        claimed: ClaimedClassMessage,
        outcome: DeliveryState,
        reason: str,
        *,
        notifying: bool = True,
    ) -> ClaimedClassMessage:
        async with self._sessions.begin() as session:
            await ClassMessageStore(session).answered(
                claimed.ticket_id, self._owner, outcome, reason, self._clock(), notifying=notifying
            )
        return dataclasses.replace(
            claimed,
            attempts=claimed.attempts + 1,
            outcome=outcome,
            reason=reason,
            notifying=notifying,
        )


def _outcomes(
    states: Counter[DeliveryState], claimed: ClaimedClassMessage
) -> Iterator[tuple[tuple[str, DeliveryState, str], int]]:
    """A recorded chunk's outcomes as metrics.count_outcomes takes them: a pass shown
    without an alert had no place left, unless Google refused the class an alert."""
    silent = NO_ALERT_PASS_QUOTA if claimed.notifying else NO_ALERT_GOOGLE_QUOTA
    for state, count in states.items():
        reason = silent if state is DeliveryState.DELIVERED_WITHOUT_ALERT else ""
        yield (Platform.GOOGLE, state, reason), count
