"""Delivery events the outbox appends: of the deliveries it records, and of those new tickets
skipped. Each append takes the events' append lock first (store/events.py says why)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Insert,
    Select,
    and_,
    bindparam,
    case,
    func,
    insert,
    select,
    true,
)

from passpush.domain.model import DeliveryOutcome, DeliveryState
from passpush.store.connectors.connector import ByDialect, Query, Steps
from passpush.store.db import one_of
from passpush.store.events import APPENDED_COLUMNS, taking_append_lock
from passpush.store.models import (
    DeliveryEventRow,
    DeliveryRow,
    DeviceRegistrationRow,
    PassRow,
    table_of,
)

_events = table_of(DeliveryEventRow)


def recorded_events(delivery_ids: Collection[int], now: datetime) -> Steps[None]:
    """The events of deliveries just recorded: their new state, reason and attempt count."""
    if delivery_ids:
        yield from _append_steps(_APPEND_RECORDED, {"ids": list(delivery_ids), "at": now})


def skipped_events(ticket_ids: Collection[int], now: datetime) -> Steps[None]:
    """The events of the deliveries these new tickets skipped."""
    if ticket_ids:
        yield from _append_steps(_APPEND_SKIPPED, {"ids": list(ticket_ids), "at": now})


def skipped_events_after(ticket_id: int, after_delivery_id: int, now: datetime) -> Steps[None]:
    """The events of the deliveries a broadcast's chunk skipped: its deliveries after
    `after_delivery_id`."""
    params = {"ticket": ticket_id, "after": after_delivery_id, "at": now}
    yield from _append_steps(_APPEND_SKIPPED_IN_CHUNK, params)


def _append_steps(statement: ByDialect[Insert] | Insert, params: dict[str, Any]) -> Steps[None]:
    yield from taking_append_lock()
    yield Query.write(statement, params)


def _append_statement(deliveries: ColumnElement[bool]) -> Insert:
    """INSERT ... SELECT of the events of the deliveries matching `deliveries`, in id order."""
    rows = append_rows(table_of(DeliveryRow), deliveries)
    return insert(_events).from_select(APPENDED_COLUMNS, rows)


def append_rows(
    deliveries: FromClause, where: ColumnElement[bool], *, after: FromClause | None = None
) -> Select[Any]:
    """The events (APPENDED_COLUMNS) of the rows of `deliveries` (the table, or the rows a
    statement just inserted) matching `where`, in id order; joined to `after`'s one row when
    given (what must be done before the events' sequence is drawn)."""
    d, r = deliveries.c, DeviceRegistrationRow
    outcome = case(
        (d.state == DeliveryState.PENDING.value, DeliveryOutcome.RETRYING.value),
        else_=d.state,
    )
    source = deliveries.join(
        PassRow, and_(PassRow.project_id == d.project_id, PassRow.id == d.pass_id)
    ).outerjoin(r, r.id == d.registration_id)
    if after is not None:
        source = source.join(after, true())
    return (
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
        .select_from(source)
        .where(where)
        .order_by(d.id)
    )


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
