"""A one-pass ticket written whole in one statement (PostgreSQL): the ticket, its
deliveries, its pass's notification field and the events of what it skipped.

Tickets for one pass each are accepted a group at a time. Written as separate statements
they were a transaction of eight round trips (BEGIN, three reads, the tickets, their
deliveries, the passes' change, COMMIT), and one group commits at a time, so that a Send
waited for the group before it and then for its own: at 500 Sends/s p50 was 10.7 ms on
PostgreSQL against 3.0 ms on SQLite (benchmarks/README.md, accept). A data-modifying `WITH`
writes a ticket whole, and the group's tickets go as one pipelined statement (asyncpg's
fetchmany: one round trip, committed all or nothing), after two reads that need no
transaction (the retries' first tickets; the passes named, with their deliveries-to-be):
three round trips. They run on connections that keep their plans: planned anew at each
execution (0.44 ms), the write cost PostgreSQL four times what it does kept (0.1 ms a
ticket, in a group of 64). SQLite has no data-modifying `WITH`: it writes the same rows in
steps (accepting.py), where a statement costs no round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Executable,
    Text,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    null,
    select,
    true,
)

from passpush.domain.model import DeliveryState
from passpush.outbox.events import append_rows
from passpush.outbox.ticket_writes import (
    DELIVERY_COLUMNS,
    ONE_PASS,
    PASS_CHANGE_PARAMS,
    as_params,
    update_active_passes,
)
from passpush.store.asked_at_once import unnested
from passpush.store.events import APPEND_LOCK, APPENDED_COLUMNS
from passpush.store.models import DeliveryEventRow, DeliveryRow, PassRow, TicketRow, table_of

_tickets = table_of(TicketRow)
_deliveries = table_of(DeliveryRow)
_events = table_of(DeliveryEventRow)

# A ticket's columns, each bound as `ticket_<column>` (the statement's other parameters:
# of_project and of_pass, the pass; registration_ids, platforms, states and reasons, its
# deliveries, as arrays; sending; at; and new_* for the pass change but its ticket's id).
TICKET_COLUMNS = tuple(c.name for c in _tickets.columns if c.name not in ("id", "fetch_latency"))


def whole_ticket_params(
    ticket: dict[str, Any],
    pass_id: str,
    deliveries: Sequence[tuple[int | None, str, str, str]],
    change: dict[str, Any],
) -> dict[str, Any]:
    """The statement's parameters: a ticket's row (accepting.py _ticket_values), its pass,
    its deliveries (registration id, platform, state, reason) and its pass's change
    (ticket_writes.pass_change, with any ticket id: the statement writes the new one's)."""
    return (
        {f"ticket_{name}": value for name, value in ticket.items()}
        | {
            "of_project": ticket["project_id"],
            "of_pass": pass_id,
            "registration_ids": [d[0] for d in deliveries],
            "platforms": [d[1] for d in deliveries],
            "states": [d[2] for d in deliveries],
            "reasons": [d[3] for d in deliveries],
            "at": ticket["created_at"],
            "sending": change["notification_ticket_id"] is not None,
        }
        | as_params(change)
    )


def _whole_ticket() -> Executable:
    """WITH ticket AS (INSERT ... RETURNING id), ticket_deliveries AS (INSERT ... SELECT
    over the bound arrays), pass_changed AS (UPDATE passes), append_lock, skipped_events AS
    (INSERT ... SELECT over ticket_deliveries) SELECT id FROM ticket. The parts see one
    snapshot, so the events read the deliveries from their INSERT's RETURNING."""
    ticket = (
        insert(_tickets)
        .values(
            {
                name: bindparam(f"ticket_{name}", type_=_tickets.c[name].type)
                for name in TICKET_COLUMNS
            }
        )
        .returning(_tickets.c.id)
        .cte("ticket")
    )
    ticket_id = select(ticket.c.id).scalar_subquery()
    drafts = unnested(registration_ids=BigInteger, platforms=Text, states=Text, reasons=Text)
    at = bindparam("at", type_=DeliveryRow.updated_at.type)
    rows = (
        select(
            ticket.c.id,
            bindparam("of_project", type_=PassRow.project_id.type),
            bindparam("of_pass", type_=PassRow.id.type),
            drafts.c.registration_ids,
            drafts.c.platforms,
            drafts.c.states,
            drafts.c.reasons,
            literal(0),
            at,
            at,
        )
        .select_from(ticket)
        .join(drafts, true())
        .order_by(drafts.c.question)
    )
    delivered = (
        insert(_deliveries)
        .from_select(DELIVERY_COLUMNS, rows)
        .returning(*_deliveries.c)
        .cte("ticket_deliveries")
    )
    change = PASS_CHANGE_PARAMS | {
        "notification_ticket_id": case(
            (bindparam("sending", type_=Boolean), ticket_id), else_=null()
        ),
        "last_ticket_id": ticket_id,
    }
    changed = update_active_passes(ONE_PASS, change).returning(PassRow.id).cte("pass_changed")
    skipped = delivered.c.state == DeliveryState.SKIPPED.value
    # The append lock (store/events.py) before the events' sequence is drawn, and only by a
    # ticket that skipped something: the join needs the lock's row before any event's.
    lock = (
        select(func.pg_advisory_xact_lock(literal(APPEND_LOCK, BigInteger)))
        .where(exists().where(skipped))
        .cte("append_lock")
    )
    events = (
        insert(_events)
        .from_select(APPENDED_COLUMNS, append_rows(delivered, skipped, after=lock))
        .returning(_events.c.sequence)
        .cte("skipped_events")
    )
    return select(ticket.c.id).add_cte(delivered, changed, events)


WHOLE_TICKET = _whole_ticket()
