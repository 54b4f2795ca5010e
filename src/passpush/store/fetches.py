"""Fetch confirmations recorded: a device fetched the pass version that a delivery pushed.

A batch is one transaction of a few set-based statements whatever its size: the devices'
registrations resolved at once, one UPDATE … FROM … RETURNING of the deliveries fetched
for the first time, their events, and one write per ticket. The batch travels as one JSON
parameter (a row set on the database's side), so that the statements' text and their
bound parameters do not grow with it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    DateTime,
    FromClause,
    Insert,
    Select,
    String,
    Update,
    and_,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal,
    select,
    update,
)

from passpush.domain.fetches import added
from passpush.domain.model import DeliveryOutcome, DeliveryState, Platform
from passpush.store.connectors.connector import ByDialect, Query, Steps
from passpush.store.db import one_of
from passpush.store.events import APPENDED_COLUMNS, announce, taking_append_lock
from passpush.store.models import (
    DeliveryEventRow,
    DeliveryRow,
    DeviceRegistrationRow,
    TicketRow,
    table_of,
)

_deliveries = table_of(DeliveryRow)
_registrations = table_of(DeviceRegistrationRow)
_tickets = table_of(TicketRow)
_events = table_of(DeliveryEventRow)
_DELIVERED = (DeliveryState.DELIVERED.value, DeliveryState.DELIVERED_WITHOUT_ALERT.value)


@dataclass(frozen=True)
class FetchConfirmation:
    """A device fetched the version of a pass that carries a ticket's notification."""

    project_id: str
    pass_id: str
    device_library_identifier: str
    update_tag: int  # the version fetched
    ticket_id: int  # the ticket whose notification that version carries
    fetched_at: datetime


@dataclass(frozen=True)
class RecordedFetch:
    """A delivery marked fetched, for the first time."""

    delivery_id: int
    ticket_id: int
    project_id: str
    pass_id: str
    device_library_identifier: str
    attempts: int  # the pushes it took
    fetched_at: datetime
    push_to_fetch: timedelta


def record_fetches(confirmations: Sequence[FetchConfirmation]) -> Steps[list[RecordedFetch]]:
    """Marks the deliveries the confirmations name fetched (each at most once, whatever
    the batch or other replicas hold), appends their FETCHED events and counts them on
    their tickets. A confirmation with no such delivery (the device registered after the
    send, the push was not delivered) changes nothing."""
    if not confirmations:
        return []
    devices = {(c.project_id, c.pass_id, c.device_library_identifier) for c in confirmations}
    registrations = {
        (project_id, pass_id, device): registration_id
        for registration_id, project_id, pass_id, device in (
            yield Query(
                _REGISTRATIONS,
                {"rows": _json([{"p": p, "s": s, "d": d} for p, s, d in devices])},
            )
        )
    }
    # One per delivery: the earliest fetch of it in the batch.
    firsts: dict[tuple[int, int], FetchConfirmation] = {}
    for c in sorted(confirmations, key=lambda c: c.fetched_at):
        registration_id = registrations.get((c.project_id, c.pass_id, c.device_library_identifier))
        if registration_id is not None:
            firsts.setdefault((c.ticket_id, registration_id), c)
    if not firsts:
        return []
    rows = yield Query(
        _MARK_FETCHED,
        {
            "rows": _json(
                [
                    {"t": ticket_id, "r": registration_id, "at": _stored(c.fetched_at)}
                    for (ticket_id, registration_id), c in firsts.items()
                ]
            )
        },
    )
    recorded = []
    for delivery_id, ticket_id, project_id, pass_id, registration_id, attempts, answered in rows:
        fetch = firsts[(ticket_id, registration_id)]
        recorded.append(
            RecordedFetch(
                delivery_id,
                ticket_id,
                project_id,
                pass_id,
                fetch.device_library_identifier,
                attempts,
                fetch.fetched_at,
                # From the push's answer (recorded a moment after it: never below zero).
                max(timedelta(0), fetch.fetched_at - _aware(answered)),
            )
        )
    recorded.sort(key=lambda r: r.delivery_id)  # events in a stable order
    if not recorded:
        return []
    yield from taking_append_lock()
    yield Query.write(
        _APPEND_EVENTS,
        {
            "rows": _json(
                [
                    {
                        "i": r.delivery_id,
                        "dv": r.device_library_identifier,
                        "at": _stored(r.fetched_at),
                        "l": _microseconds(r.push_to_fetch),
                    }
                    for r in recorded
                ]
            )
        },
    )
    yield from announce()
    by_ticket: dict[int, list[timedelta]] = defaultdict(list)
    for r in recorded:
        by_ticket[r.ticket_id].append(r.push_to_fetch)
    tickets = sorted(by_ticket)  # one lock order for every writer
    histograms: dict[int, dict[str, int] | None] = {
        ticket_id: histogram
        for ticket_id, histogram in (yield Query(_HISTOGRAMS, {"ids": tickets}))
    }
    yield Query.many(
        _COUNT_FETCHED,
        [
            {
                "ticket_id": ticket_id,
                "n_fetched": len(by_ticket[ticket_id]),
                "new_histogram": added(histograms.get(ticket_id), by_ticket[ticket_id]),
            }
            for ticket_id in tickets
        ],
    )
    return recorded


def _json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, separators=(",", ":"))


def _stored(at: datetime) -> str:
    """A time as the store keeps it (naive UTC), in a form both databases read as one."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _microseconds(latency: timedelta) -> int:
    return latency // timedelta(microseconds=1)


@dataclass(frozen=True)
class _Statements:
    registrations: Select[Any]  # parameter rows: [{"p": project, "s": pass, "d": device}]
    mark_fetched: Update  # parameter rows: [{"t": ticket, "r": registration, "at": time}]
    append_events: Insert  # parameter rows: [{"i": delivery, "dv": device, "at", "l": µs}]
    histograms: Select[Any]  # parameter ids: ticket ids
    count_fetched: Update  # executemany: ticket_id, n_fetched, new_histogram


def _statements_for(dialect: str) -> _Statements:
    d, r, t = _deliveries, _registrations, _tickets
    asked = _row_set(dialect, "p", "s", "d")
    fetched = _row_set(dialect, "t", "r", "at")
    # SQLite, which keeps no statistics, would otherwise read every delivered delivery by
    # the state's index and match each with the batch: `state || ''` keeps it to the
    # (registration, ticket) index, a lookup per fetch.
    state = d.c.state if dialect == "postgresql" else d.c.state.concat("")
    histograms = select(t.c.id, t.c.fetch_latency).where(one_of(t.c.id, dialect))
    if dialect == "postgresql":
        histograms = histograms.with_for_update()
    return _Statements(
        registrations=select(
            r.c.id, r.c.project_id, r.c.pass_id, r.c.device_library_identifier
        ).join(
            asked,
            and_(
                r.c.project_id == asked.c.p,
                r.c.pass_id == asked.c.s,
                r.c.device_library_identifier == asked.c.d,
            ),
        ),
        mark_fetched=update(d)
        .where(
            d.c.ticket_id == fetched.c.t,
            d.c.registration_id == fetched.c.r,
            state.in_(_DELIVERED),
            d.c.fetched_at.is_(None),
        )
        .values(fetched_at=fetched.c.at)
        .returning(
            d.c.id,
            d.c.ticket_id,
            d.c.project_id,
            d.c.pass_id,
            d.c.registration_id,
            d.c.attempts,
            d.c.updated_at,
        ),
        append_events=_append_events(_row_set(dialect, "i", "dv", "at", "l")),
        histograms=histograms,
        count_fetched=update(t)
        .where(t.c.id == bindparam("ticket_id"))
        .values(
            fetched=t.c.fetched + bindparam("n_fetched"),
            fetch_latency=bindparam("new_histogram", type_=t.c.fetch_latency.type),
        ),
    )


_STATEMENTS = ByDialect(_statements_for)
_REGISTRATIONS = _STATEMENTS.then(lambda s: s.registrations)
_MARK_FETCHED = _STATEMENTS.then(lambda s: s.mark_fetched)
_APPEND_EVENTS = _STATEMENTS.then(lambda s: s.append_events)
_HISTOGRAMS = _STATEMENTS.then(lambda s: s.histograms)
_COUNT_FETCHED = _STATEMENTS.then(lambda s: s.count_fetched)


def _append_events(fetched: FromClause) -> Insert:
    """The FETCHED events of the deliveries in the batch, in delivery order."""
    d = _deliveries
    rows = (
        select(
            d.c.project_id,
            d.c.ticket_id,
            d.c.pass_id,
            fetched.c.dv,
            literal(""),
            literal(Platform.APPLE.value),
            literal(DeliveryOutcome.FETCHED.value),
            literal(""),
            d.c.attempts,
            fetched.c.at,
            fetched.c.l,
        )
        .select_from(fetched)
        .join(d, d.c.id == fetched.c.i)
        .order_by(d.c.id)
    )
    return insert(_events).from_select([*APPENDED_COLUMNS, "push_to_fetch_us"], rows)


_TYPES: dict[str, Any] = {
    "p": String(),
    "s": String(),
    "d": String(),
    "t": BigInteger(),
    "r": BigInteger(),
    "at": DateTime(),
    "i": BigInteger(),
    "dv": String(),
    "l": BigInteger(),
}


def _row_set(dialect: str, *names: str) -> FromClause:
    """The rows of the JSON array of objects bound as `rows`, with these keys as columns."""
    rows = bindparam("rows", type_=String())
    if dialect == "postgresql":
        record_set = func.json_to_recordset(cast(rows, JSON)).table_valued(
            *(column(name, _TYPES[name]) for name in names)
        )
        return record_set.render_derived(name="batch", with_types=True)
    each = func.json_each(rows).table_valued("value")
    values: list[ColumnElement[Any]] = [
        func.json_extract(each.c.value, f"$.{name}").label(name) for name in names
    ]
    return select(*values).select_from(each).subquery("batch")
