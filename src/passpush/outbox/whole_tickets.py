"""A Send or Delete to one pass accepted whole by one statement (PostgreSQL): the retry
check, the pass named, its deliveries-to-be, the ticket with its counts, its deliveries,
its pass's notification field, the events of what it skipped, and the workers' wake-up.

Sends to one pass each are accepted a group at a time. Written as separate statements they
were a transaction of eight round trips (BEGIN, three reads, the tickets, their deliveries,
the passes' change, COMMIT); then two reads and a write, each on its own, and the workers'
wake-up after them: four round trips a group. At 500 Sends/s a group holds one or two, so
that each round trip was paid by almost every Send, in the latency and in the CPU of the
api process (its socket writes alone were a quarter of its samples) and of PostgreSQL. Here
the whole of a Send is one data-modifying `WITH`, and the group's statements go as one
pipelined `fetchmany`: one round trip, committed all or nothing. The statements run in one
implicit transaction, in order, each seeing the ones before it: a retry later in the group
finds the ticket an earlier one wrote. They run on connections that keep their plans:
planned anew at each execution, such a statement cost PostgreSQL four times what it does
kept. SQLite has no data-modifying `WITH`: it accepts the same rows in steps (accepting.py),
where a statement costs no round trip.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Executable,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    null,
    select,
    true,
    union_all,
)

from passpush.domain.model import DeliveryState, TicketState, terminal_state
from passpush.outbox.events import append_rows
from passpush.outbox.ticket_writes import (
    DELIVERY_COLUMNS,
    PASS_CHANGE_PARAMS,
    deliveries_of,
    update_active_passes,
)
from passpush.store.events import APPEND_LOCK, APPENDED_COLUMNS
from passpush.store.models import (
    DeliveryEventRow,
    DeliveryRow,
    PassRow,
    TicketRow,
    table_of,
)
from passpush.store.tickets import request_id_holders
from passpush.store.wakeups import Topic

_tickets = table_of(TicketRow)
_deliveries = table_of(DeliveryRow)
_events = table_of(DeliveryEventRow)

# The ticket's columns the statement counts from the pass's deliveries-to-be; each of the
# others is bound as `ticket_<column>`. The statement's other parameters: `named`, the pass
# id or external id the Send names; `at`, its time; `sending`, whether it sets the pass's
# notification; and new_* for the pass's change but its ticket's id (ticket_writes.py).
COUNTED_COLUMNS = ("state", "total", "pending", "skipped", "completed_at")
TICKET_COLUMNS = tuple(
    c.name for c in _tickets.columns if c.name not in ("id", "fetch_latency", *COUNTED_COLUMNS)
)


def _accept_one_pass() -> Executable:
    """WITH prior (the ticket or schedule holding the request_id), named (the pass),
    drafts (its deliveries-to-be), counts, ticket (INSERT unless prior or no pass),
    ticket_deliveries, pass_changed, append_lock, skipped_events, wake (NOTIFY, at commit)
    SELECT prior's id and fingerprint, the ticket's id, its counts.

    The parts see one snapshot: the events read the deliveries from their INSERT's
    RETURNING, and the pass's change names the ticket through its INSERT's."""
    binds = {
        name: bindparam(f"ticket_{name}", type_=_tickets.c[name].type) for name in TICKET_COLUMNS
    }
    project, request_id = binds["project_id"], binds["request_id"]
    at = bindparam("at", type_=DeliveryRow.updated_at.type)

    # A retry: the ticket that holds the request_id, else a schedule that does (id 0). A
    # Send without one (NULL) matches nothing.
    holders = request_id_holders(
        lambda table: and_(table.c.project_id == project, table.c.request_id == request_id)
    ).subquery("holders")
    prior = (
        select(holders.c.id, holders.c.request_fingerprint)
        .order_by(holders.c.id.desc())
        .limit(1)
        .cte("prior")
    )
    # The pass with the id named, else the only pass with that external id.
    name = bindparam("named", type_=PassRow.id.type)
    by_id = select(PassRow.id).where(PassRow.project_id == project, PassRow.id == name)
    by_external_id = (
        select(func.min(PassRow.id))
        .where(
            PassRow.project_id == project,
            PassRow.external_id == name,
            ~exists(by_id.correlate(None)),
        )
        .having(func.count() == 1)
    )
    named = union_all(by_id, by_external_id).cte("named")
    named_id = select(named.c.id).scalar_subquery()
    the_pass = and_(PassRow.project_id == project, PassRow.id == named_id)

    drafts = deliveries_of(and_(the_pass, ~exists(select(prior.c.id)))).cte("drafts")
    d_project, d_pass, d_registration, d_platform, d_state, d_reason = drafts.c
    pending = func.count().filter(d_state == DeliveryState.PENDING.value)
    skipped = func.count().filter(d_state == DeliveryState.SKIPPED.value)
    counts = select(
        func.count().label("total"), pending.label("pending"), skipped.label("skipped")
    ).cte("counts")

    # No drafts, no ticket: a one-pass audience always has one (maybe skipped), unless the
    # Send is a retry or names no pass.
    done = counts.c.pending == 0
    counted = {
        "state": case((done, terminal_state(0, 0).value), else_=TicketState.PENDING.value),
        "total": counts.c.total,
        "pending": counts.c.pending,
        "skipped": counts.c.skipped,
        "completed_at": case((done, at), else_=null()),
    }
    ticket = (
        insert(_tickets)
        .from_select(
            [*binds, *counted],
            select(*binds.values(), *counted.values()).where(counts.c.total > 0),
        )
        .returning(_tickets.c.id)
        .cte("ticket")
    )
    ticket_id = select(ticket.c.id).scalar_subquery()
    rows = (
        select(
            ticket.c.id,
            d_project,
            d_pass,
            d_registration,
            d_platform,
            d_state,
            d_reason,
            literal(0),
            at,
            at,
        )
        .select_from(ticket)
        .join(drafts, true())
        .order_by(d_registration)
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
    changed = (
        update_active_passes(and_(the_pass, exists(select(ticket.c.id))), change)
        .returning(PassRow.id)
        .cte("pass_changed")
    )
    skipped_row = delivered.c.state == DeliveryState.SKIPPED.value
    # The append lock (store/events.py) before the events' sequence is drawn, and only by a
    # ticket that skipped something: the join needs the lock's row before any event's.
    lock = (
        select(func.pg_advisory_xact_lock(literal(APPEND_LOCK, BigInteger)))
        .where(exists().where(skipped_row))
        .cte("append_lock")
    )
    events = (
        insert(_events)
        .from_select(APPENDED_COLUMNS, append_rows(delivered, skipped_row, after=lock))
        .returning(_events.c.sequence)
        .cte("skipped_events")
    )
    # The delivery workers' wake-up, sent at commit: no round trip of its own.
    wake = (
        select(func.pg_notify(Topic.DELIVERIES.value, ""))
        .where(exists().where(delivered.c.state == DeliveryState.PENDING.value))
        .cte("wake")
    )
    return (
        select(
            select(prior.c.id).scalar_subquery(),
            select(prior.c.request_fingerprint).scalar_subquery(),
            ticket_id,
            counts.c.pending,
            counts.c.skipped,
            select(func.count()).select_from(wake).scalar_subquery(),
        )
        .select_from(counts)
        .add_cte(delivered, changed, events)
    )


ACCEPT_ONE_PASS = _accept_one_pass()
