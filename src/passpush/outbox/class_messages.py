"""Google class messages: the one message a Send to a whole Google template puts on the class.

A ticket whose audience is every pass of a Google template gets a row here, and its
deliveries wait in state `by_class` instead of being claimed one object at a time. Once its
fan-out is complete a worker leases the row and asks Google once; then the answer is written
on the waiting deliveries a chunk at a time, each chunk its own transaction (on SQLite
others' Sends commit between chunks): delivered, with or without an alert as the pass's
place in Google's 3-per-24-hours ledger says; failed; or, for a Delete, pending again, for
the removal of the messages on each object.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, case, false, func, insert, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.model import (
    GOOGLE_NOTIFYING_MESSAGES_PER_WINDOW,
    GOOGLE_NOTIFYING_WINDOW,
    NO_ALERT_GOOGLE_QUOTA,
    NO_ALERT_PASS_QUOTA,
    DeliveryState,
    GoogleClass,
)
from passpush.outbox.events import recorded_events
from passpush.store.connectors.session import run_on_session
from passpush.store.db import dialect_name, one_of
from passpush.store.events import announce
from passpush.store.models import (
    DeliveryRow,
    GoogleClassMessageRow,
    GoogleMessageRow,
    TicketRow,
    table_of,
)
from passpush.store.ticket_counts import count_on_ticket
from passpush.store.ticket_messages import TicketMessage, ticket_messages

PENDING = "pending"  # Google to be asked
ANSWERED = "answered"  # its waiting deliveries being recorded
DONE = "done"
# Waiting deliveries recorded per transaction.
RECORD_CHUNK = 5000

_rows = table_of(GoogleClassMessageRow)
_deliveries = table_of(DeliveryRow)
_ledger = table_of(GoogleMessageRow)


@dataclass(frozen=True)
class ClaimedClassMessage:
    """A class message leased to a worker, with what its ticket asks."""

    ticket_id: int
    project_id: str
    google_class: GoogleClass
    message: TicketMessage  # what its ticket asks: a message to add, or passpush's removed
    state: str  # PENDING or ANSWERED
    attempts: int  # made so far (once ANSWERED: with the one answered)
    first_attempt_at: datetime
    outcome: DeliveryState | None  # once ANSWERED: what its deliveries become
    reason: str
    notifying: bool

    def seconds_since_first_attempt(self, now: datetime) -> float:
        return max(0.0, (now - self.first_attempt_at).total_seconds())


class ClassMessageStore:
    """One per session (unit of work)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(
        self, ticket_id: int, project_id: str, google_class: GoogleClass, now: datetime
    ) -> None:
        """The class message of a new ticket, due once its fan-out is complete."""
        await self.session.execute(
            insert(_rows).values(
                ticket_id=ticket_id,
                project_id=project_id,
                class_type=google_class.class_type,
                class_id=google_class.class_id,
                state=PENDING,
                outcome="",
                reason="",
                notifying=True,
                attempts=0,
                next_attempt_at=now,
                updated_at=now,
            )
        )

    async def exists(self, ticket_id: int) -> bool:
        found = await self.session.scalar(
            select(_rows.c.ticket_id).where(_rows.c.ticket_id == ticket_id)
        )
        return found is not None

    async def claim_due(
        self, owner: str, now: datetime, lease: timedelta
    ) -> ClaimedClassMessage | None:
        """Leases the class message due first whose ticket has all its deliveries (its
        fan-out complete), if any."""
        c, t = _rows, table_of(TicketRow)
        due = (
            select(c.c.ticket_id)
            .join(t, t.c.id == c.c.ticket_id)
            .where(
                c.c.state.in_([PENDING, ANSWERED]),
                c.c.next_attempt_at <= now,
                or_(c.c.lease_until.is_(None), c.c.lease_until < now),
                t.c.fanout_after.is_(None),
            )
            .order_by(c.c.next_attempt_at, c.c.ticket_id)
            .limit(1)
        )
        if dialect_name(self.session) == "postgresql":
            due = due.with_for_update(of=c, skip_locked=True)
        ticket_id = await self.session.scalar(due)
        if ticket_id is None:
            return None
        await self.session.execute(
            update(c)
            .where(c.c.ticket_id == ticket_id)
            .values(
                lease_owner=owner,
                lease_until=now + lease,
                first_attempt_at=func.coalesce(c.c.first_attempt_at, now),
            )
        )
        row = (await self.session.execute(select(c).where(c.c.ticket_id == ticket_id))).one()
        messages = await run_on_session(self.session, ticket_messages([ticket_id]))
        return ClaimedClassMessage(
            ticket_id=ticket_id,
            project_id=row.project_id,
            google_class=GoogleClass(row.class_type, row.class_id),
            message=messages[ticket_id],
            state=row.state,
            attempts=row.attempts,
            first_attempt_at=row.first_attempt_at or now,
            outcome=DeliveryState(row.outcome) if row.outcome else None,
            reason=row.reason,
            notifying=row.notifying,
        )

    async def has_waiting(self, ticket_id: int) -> bool:
        """Whether any of the ticket's deliveries waits for its class message."""
        d = _deliveries
        found = await self.session.scalar(
            select(d.c.id)
            .where(d.c.ticket_id == ticket_id, d.c.state == DeliveryState.BY_CLASS.value)
            .limit(1)
        )
        return found is not None

    async def retry_later(
        self, ticket_id: int, owner: str, next_attempt_at: datetime, reason: str, now: datetime
    ) -> None:
        """Google gave no usable answer: asked again at `next_attempt_at`."""
        await self._update_held(
            ticket_id,
            owner,
            attempts=_rows.c.attempts + 1,
            reason=reason,
            next_attempt_at=next_attempt_at,
            lease_owner=None,
            lease_until=None,
            updated_at=now,
        )

    async def answered(
        self,
        ticket_id: int,
        owner: str,
        outcome: DeliveryState,
        reason: str,
        now: datetime,
        *,
        notifying: bool = True,
    ) -> None:
        """Google answered: what the ticket's waiting deliveries become."""
        await self._update_held(
            ticket_id,
            owner,
            state=ANSWERED,
            outcome=outcome.value,
            reason=reason,
            notifying=notifying,
            attempts=_rows.c.attempts + 1,
            updated_at=now,
        )

    async def record_chunk(
        self, claimed: ClaimedClassMessage, owner: str, now: datetime, lease: timedelta
    ) -> tuple[int, Counter[DeliveryState]]:
        """Writes the answer on the next RECORD_CHUNK waiting deliveries (events and ticket
        counts included) and renews the lease; the number written, 0 when none was left (it
        is then DONE), and how many it wrote in each state."""
        d = _deliveries
        dialect = dialect_name(self.session)
        await self._update_held(claimed.ticket_id, owner, lease_until=now + lease)
        ids = list(
            await self.session.scalars(
                select(d.c.id)
                .where(
                    d.c.ticket_id == claimed.ticket_id,
                    d.c.state == DeliveryState.BY_CLASS.value,
                )
                .order_by(d.c.id)
                .limit(RECORD_CHUNK)
            )
        )
        if not ids:
            await self.session.execute(
                update(_rows)
                .where(_rows.c.ticket_id == claimed.ticket_id)
                .values(state=DONE, lease_owner=None, lease_until=None, updated_at=now)
            )
            return 0, Counter()
        outcome = claimed.outcome
        assert outcome is not None
        chunk = {"ids": ids}
        waiting = and_(one_of(d.c.id, dialect), d.c.state == DeliveryState.BY_CLASS.value)
        if outcome is DeliveryState.PENDING:  # a Delete's objects, each now its own delivery
            await self.session.execute(
                update(d)
                .where(waiting)
                .values(state=outcome.value, next_attempt_at=now, updated_at=now),
                chunk,
            )
            return len(ids), Counter()  # no outcome yet: each is pushed on its own
        if outcome is DeliveryState.DELIVERED:
            await self._take_places(dialect, claimed, chunk, now)
            state, reason = self._alert_or_not(claimed)
        else:
            state, reason = literal(outcome.value), literal(claimed.reason)
        recorded = (
            await self.session.execute(
                update(d)
                .where(waiting)
                .values(
                    state=state,
                    reason=reason,
                    attempts=claimed.attempts,
                    first_attempt_at=claimed.first_attempt_at,
                    next_attempt_at=now,
                    updated_at=now,
                )
                .returning(d.c.id, d.c.state),
                chunk,
            )
        ).all()
        await run_on_session(self.session, recorded_events([r.id for r in recorded], now))
        await run_on_session(self.session, announce())
        counted = Counter(DeliveryState(r.state) for r in recorded)
        without_alert = counted[DeliveryState.DELIVERED_WITHOUT_ALERT]
        delivered = counted[DeliveryState.DELIVERED] + without_alert
        failed = counted[DeliveryState.FAILED]
        await run_on_session(
            self.session,
            count_on_ticket(claimed.ticket_id, delivered, without_alert, failed, now),
        )
        return len(ids), counted

    async def _take_places(
        self, dialect: str, claimed: ClaimedClassMessage, chunk: dict[str, list[int]], now: datetime
    ) -> None:
        """Each pass's place in the ledger of notifying messages: the class message notifies
        a pass that had fewer than 3 in the last 24 hours (Google's limit per pass), and
        shows on the others without an alert. Unlike a message to one object, no lock per
        pass is taken: a Send to that pass at the same moment may both take its third place."""
        d, m = _deliveries, _ledger
        if claimed.notifying:
            notified = (
                select(func.count())
                .where(
                    m.c.project_id == d.c.project_id,
                    m.c.pass_id == d.c.pass_id,
                    m.c.notifying,
                    m.c.sent_at > now - GOOGLE_NOTIFYING_WINDOW,
                )
                .scalar_subquery()
            )
            notifying = notified < GOOGLE_NOTIFYING_MESSAGES_PER_WINDOW
        else:
            notifying = false()
        places = select(
            d.c.id, d.c.project_id, d.c.pass_id, notifying, literal(now, m.c.sent_at.type)
        )
        await self.session.execute(
            insert(m).from_select(
                ["delivery_id", "project_id", "pass_id", "notifying", "sent_at"],
                places.where(one_of(d.c.id, dialect)),
            ),
            chunk,
        )

    @staticmethod
    def _alert_or_not(
        claimed: ClaimedClassMessage,
    ) -> tuple[ColumnElement[str], ColumnElement[str]]:
        """A delivered pass's state and reason, by the place it took."""
        d, m = _deliveries, _ledger
        if not claimed.notifying:  # Google refused the class a notifying message
            return (
                literal(DeliveryState.DELIVERED_WITHOUT_ALERT.value),
                literal(NO_ALERT_GOOGLE_QUOTA),
            )
        alerted = select(m.c.notifying).where(m.c.delivery_id == d.c.id).scalar_subquery()
        return (
            case(
                (alerted, DeliveryState.DELIVERED.value),
                else_=DeliveryState.DELIVERED_WITHOUT_ALERT.value,
            ),
            case((alerted, ""), else_=NO_ALERT_PASS_QUOTA),
        )

    async def _update_held(self, ticket_id: int, owner: str, **values: object) -> None:
        await self.session.execute(
            update(_rows)
            .where(_rows.c.ticket_id == ticket_id, _rows.c.lease_owner == owner)
            .values(**values)
        )
