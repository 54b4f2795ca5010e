"""Delivery events read back after a sequence number, and what every append takes first.

The outbox appends them with the outcomes they tell of (outbox/events.py), the PassKit side
with the fetches it confirms (store/fetches.py).

A subscriber resumes with the last sequence it saw, so sequences must become
visible in increasing order. SQLite has one writer at a time. On PostgreSQL a
sequence is drawn at INSERT but seen at COMMIT, so two replicas' transactions
could show 101 before 100; every transaction that appends events therefore
takes one advisory lock first and holds it to its commit.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.model import DeliveryEvent, DeliveryOutcome, Platform
from passpush.store.connectors.connector import Query, Steps, on_postgresql
from passpush.store.models import DeliveryEventRow, PassRow, table_of

# The PostgreSQL channel on which a replica announces new events and ticket changes.
CHANGES_CHANNEL = "passpush_changes"
APPEND_LOCK = 0x70707573  # any constant, the same in every replica
_TAKE_APPEND_LOCK = on_postgresql(text("SELECT pg_advisory_xact_lock(:key)"))
_NOTIFY_CHANGES = on_postgresql(select(func.pg_notify(CHANGES_CHANNEL, "")))
_events = table_of(DeliveryEventRow)
# What every append writes, in the order of its INSERT ... SELECT's columns: the outbox's
# outcomes (outbox/events.py), and the fetches with their push_to_fetch_us (fetches.py).
APPENDED_COLUMNS = (
    "project_id",
    "ticket_id",
    "pass_id",
    "device_library_identifier",
    "google_object_id",
    "platform",
    "outcome",
    "reason",
    "attempt",
    "created_at",
)


class EventStore:
    """One per session (unit of work)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def after(
        self,
        project_id: str,
        after_sequence: int,
        limit: int,
        *,
        ticket_id: int = 0,
        audience: ColumnElement[bool] | None = None,
        outcomes: Collection[DeliveryOutcome] = (),
    ) -> list[DeliveryEvent]:
        """Up to `limit` of the project's events after `after_sequence`, in order."""
        e = DeliveryEventRow
        query = select(e).where(e.project_id == project_id, e.sequence > after_sequence)
        if ticket_id:
            query = query.where(e.ticket_id == ticket_id)
        if outcomes:
            query = query.where(e.outcome.in_([o.value for o in outcomes]))
        if audience is not None:
            query = query.where(e.pass_id.in_(select(PassRow.id).where(audience)))
        rows = await self.session.scalars(query.order_by(e.sequence).limit(limit))
        return [_event(row) for row in rows]

    async def purge(self, before: datetime, batch: int) -> int:
        """Deletes up to `batch` of the oldest events older than `before`; returns how many."""
        oldest = select(_events.c.sequence, _events.c.created_at).order_by(_events.c.sequence)
        old = oldest.limit(batch).subquery()
        expired = select(old.c.sequence).where(old.c.created_at < before)
        result = await self.session.execute(delete(_events).where(_events.c.sequence.in_(expired)))
        return int(result.rowcount)  # type: ignore[attr-defined]


def announce() -> Steps[None]:
    """Tells every replica's streams, at commit, that events or tickets changed (PostgreSQL;
    SQLite's streams are this process's own)."""
    yield Query(_NOTIFY_CHANGES)


def taking_append_lock() -> Steps[None]:
    """Takes the events' append lock (PostgreSQL) to the transaction's commit: the step
    before any INSERT of events."""
    yield Query(_TAKE_APPEND_LOCK, {"key": APPEND_LOCK})


def _event(row: DeliveryEventRow) -> DeliveryEvent:
    return DeliveryEvent(
        sequence=row.sequence,
        ticket_id=row.ticket_id,
        pass_id=row.pass_id,
        device_library_identifier=row.device_library_identifier,
        google_object_id=row.google_object_id,
        platform=Platform(row.platform),
        outcome=DeliveryOutcome(row.outcome),
        reason=row.reason,
        attempt=row.attempt,
        time=row.created_at,
        push_to_fetch=(
            None if row.push_to_fetch_us is None else timedelta(microseconds=row.push_to_fetch_us)
        ),
    )
