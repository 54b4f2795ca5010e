"""Delivery events: appended with the outcomes they tell of, read back after a sequence number.

A subscriber resumes with the last sequence it saw, so sequences must become
visible in increasing order. SQLite has one writer at a time. On PostgreSQL a
sequence is drawn at INSERT but seen at COMMIT, so two replicas' transactions
could show 101 before 100; every transaction that appends events therefore
takes one advisory lock first and holds it to its commit.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.model import DeliveryEvent, DeliveryOutcome, DeliveryState, Platform
from passpush.store.connectors.connector import ByDialect, Query, Steps, on_postgresql
from passpush.store.connectors.session import run_on_session
from passpush.store.db import one_of
from passpush.store.models import (
    DeliveryEventRow,
    DeliveryRow,
    DeviceRegistrationRow,
    PassRow,
    table_of,
)

# The PostgreSQL channel on which a replica announces new events and ticket changes.
CHANGES_CHANNEL = "passpush_changes"
_APPEND_LOCK = 0x70707573  # any constant, the same in every replica
_TAKE_APPEND_LOCK = on_postgresql(text("SELECT pg_advisory_xact_lock(:key)"))
_NOTIFY_CHANGES = on_postgresql(select(func.pg_notify(CHANGES_CHANNEL, "")))
_events = table_of(DeliveryEventRow)


class EventStore:
    """One per session (unit of work)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def append_skipped(self, ticket_ids: Collection[int], now: datetime) -> None:
        """The events of the deliveries these new tickets skipped."""
        await run_on_session(self.session, skipped_events(ticket_ids, now))

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


def recorded_events(delivery_ids: Collection[int], now: datetime) -> Steps[None]:
    """The events of deliveries just recorded: their new state, reason and attempt count."""
    if delivery_ids:
        yield from _append_steps(_APPEND_RECORDED, {"ids": list(delivery_ids), "at": now})


def announce() -> Steps[None]:
    """Tells every replica's streams, at commit, that events or tickets changed (PostgreSQL;
    SQLite's streams are this process's own)."""
    yield Query(_NOTIFY_CHANGES)


def skipped_events(ticket_ids: Collection[int], now: datetime) -> Steps[None]:
    """The events of the deliveries these new tickets skipped (EventStore.append_skipped)."""
    if ticket_ids:
        yield from _append_steps(_APPEND_SKIPPED, {"ids": list(ticket_ids), "at": now})


def skipped_events_after(ticket_id: int, after_delivery_id: int, now: datetime) -> Steps[None]:
    """The events of the deliveries a broadcast's chunk skipped: its deliveries after
    `after_delivery_id`."""
    params = {"ticket": ticket_id, "after": after_delivery_id, "at": now}
    yield from _append_steps(_APPEND_SKIPPED_IN_CHUNK, params)


def taking_append_lock() -> Steps[None]:
    """Takes the events' append lock (PostgreSQL) to the transaction's commit: the step
    before any INSERT of events."""
    yield Query(_TAKE_APPEND_LOCK, {"key": _APPEND_LOCK})


def _append_steps(statement: ByDialect[Insert] | Insert, params: dict[str, Any]) -> Steps[None]:
    yield from taking_append_lock()
    yield Query.write(statement, params)


def _append_statement(deliveries: ColumnElement[bool]) -> Insert:
    """INSERT ... SELECT of the events of the deliveries matching `deliveries`, in id order."""
    d, r = DeliveryRow, DeviceRegistrationRow
    outcome = case(
        (d.state == DeliveryState.PENDING.value, DeliveryOutcome.RETRYING.value),
        else_=d.state,
    )
    rows = (
        select(
            d.project_id,
            d.ticket_id,
            d.pass_id,
            func.coalesce(r.device_library_identifier, ""),
            PassRow.google_object_id,
            d.platform,
            outcome,
            d.reason,
            d.attempts,
            bindparam("at", type_=DeliveryEventRow.created_at.type),
        )
        .select_from(d)
        .join(PassRow, and_(PassRow.project_id == d.project_id, PassRow.id == d.pass_id))
        .outerjoin(r, r.id == d.registration_id)
        .where(deliveries)
        .order_by(d.id)
    )
    columns = [
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
    ]
    return insert(_events).from_select(columns, rows)


_SKIPPED = DeliveryRow.state == DeliveryState.SKIPPED.value
# The events of recorded deliveries (by delivery id), of the deliveries skipped by new
# tickets (by ticket id), and of those a broadcast's chunk skipped.
_APPEND_RECORDED = ByDialect(lambda dialect: _append_statement(one_of(DeliveryRow.id, dialect)))
_APPEND_SKIPPED = ByDialect(
    lambda dialect: _append_statement(and_(one_of(DeliveryRow.ticket_id, dialect), _SKIPPED))
)
_APPEND_SKIPPED_IN_CHUNK = _append_statement(
    and_(
        DeliveryRow.ticket_id == bindparam("ticket"), DeliveryRow.id > bindparam("after"), _SKIPPED
    )
)


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
