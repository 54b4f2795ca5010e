"""A broadcast's fan-out, one chunk of its passes per call: the chunk's deliveries and pass
changes, the events of what it skipped, the ticket's counts and cursor advanced.

A Send to a broadcast writes its first chunk (outbox/accepting.py); the FanOut loop
(outbox/fanout.py) writes the others, each in a short transaction of its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Update, func, literal, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.errors import NotFound
from passpush.domain.model import Content, DeliveryState, Operation
from passpush.outbox.class_messages import ClassMessageStore
from passpush.outbox.events import skipped_events_after
from passpush.outbox.ticket_writes import insert_deliveries, pass_change, update_active_passes
from passpush.store.audience import Audience, resolve_audience
from passpush.store.connectors.session import run_on_session
from passpush.store.db import dialect_name
from passpush.store.events import announce
from passpush.store.models import DeliveryRow, PassRow, TicketRow, table_of
from passpush.store.ticket_counts import finishing_values
from passpush.store.tickets import ticket_from_row

# Passes a broadcast fans out per transaction. On SQLite a chunk holds the one writer, so every
# other caller's Send may wait for it: 5,000 passes held it for 0.03 s (a template) to 0.05 s
# (1,000 group tags) on a 2-core machine, 100,000 passes (README, Benchmarks).
FANOUT_CHUNK = 5000
# pg_advisory_xact_lock(space, key): a fan-out's chunks, one transaction at a time. The space
# keeps these two-key locks apart from the Google ledger's (store/google_messages.py); the key
# is the ticket id's low 31 bits (two fan-outs that share one merely take turns).
_FANOUT_LOCK_SPACE = 0x66616E6F
_TAKE_FANOUT_LOCK = text("SELECT pg_advisory_xact_lock(:space, :key)")
_tickets = table_of(TicketRow)


async def continue_fan_out(
    session: AsyncSession, ticket_id: int, now: datetime, chunk: int
) -> bool:
    """Fans the next `chunk` passes of a broadcast out, in the session's transaction;
    True when its fan-out is (now) complete.

    The audience is resolved again from the ticket's target. On PostgreSQL the fan-out's
    advisory lock is taken first: two replicas carrying the same fan-out on take turns,
    and the second reads the cursor the first advanced, so no chunk goes out twice. Not
    the ticket's row lock: the worker's record updates the ticket's counts, and would
    wait for the whole chunk (pushes halved during a 1M fan-out).
    """
    if dialect_name(session) == "postgresql":
        await session.execute(
            _TAKE_FANOUT_LOCK, {"space": _FANOUT_LOCK_SPACE, "key": ticket_id & 0x7FFFFFFF}
        )
    query = select(TicketRow).where(TicketRow.id == ticket_id, TicketRow.fanout_after.is_not(None))
    row = await session.scalar(query.execution_options(populate_existing=True))
    if row is None or row.fanout_after is None:
        return True
    ticket = ticket_from_row(row, [])
    try:
        audience = await resolve_audience(session, row.project_id, ticket.target)
    except NotFound:  # what the target named is gone: no pass is left to reach
        await session.execute(_advance(ticket_id, None, 0, 0, now))
        await run_on_session(session, announce())
        return True
    # By the ticket's own record, not the audience's: one sent before an upgrade has none.
    by_class = await ClassMessageStore(session).exists(ticket_id)
    return await fan_out_chunk(
        session,
        ticket_id,
        audience,
        ticket.operation,
        ticket.content,
        row.fanout_after,
        now,
        chunk,
        by_class=by_class,
    )


async def fan_out_chunk(
    session: AsyncSession,
    ticket_id: int,
    audience: Audience,
    operation: Operation,
    content: Content | None,
    after: str,
    now: datetime,
    chunk: int,
    *,
    by_class: bool,
) -> bool:
    """The deliveries and pass changes of the audience's passes among the project's
    next `chunk` passes by id (after the pass id `after`), the events of what they
    skipped, and the ticket's counts and cursor advanced by them; True when no pass is
    left. `by_class`: the deliveries wait for the ticket's class message.

    A chunk is a range of the project's passes (found along its primary key), not of
    the audience's: finding the audience's 5,000th next pass would read the whole rest
    of the audience's lists each time.
    """
    upto = await session.scalar(
        select(PassRow.id)
        .where(PassRow.project_id == audience.project_id, PassRow.id > after)
        .order_by(PassRow.id)
        .offset(chunk - 1)
        .limit(1)
    )
    in_chunk = audience.passes_in(after, upto)
    # This ticket's deliveries above this id are this chunk's: its fan-out is ours alone
    # (SQLite's one writer; PostgreSQL's advisory lock, taken in continue_fan_out).
    before = await session.scalar(select(func.max(DeliveryRow.id))) or 0
    inserted = await session.execute(
        insert_deliveries(literal(ticket_id), in_chunk, by_class=by_class), {"at": now}
    )
    change = pass_change(ticket_id, operation, content, now)
    await session.execute(update_active_passes(in_chunk, change, older_than=ticket_id))
    # The total from the insert itself: only the (few) skipped ones are counted again.
    total = int(inserted.rowcount)  # type: ignore[attr-defined]
    skipped = await session.scalar(
        select(func.count()).where(
            DeliveryRow.ticket_id == ticket_id,
            DeliveryRow.state == DeliveryState.SKIPPED.value,
            DeliveryRow.id > before,
        )
    )
    if skipped:
        await run_on_session(session, skipped_events_after(ticket_id, before, now))
    await session.execute(_advance(ticket_id, upto, total, skipped or 0, now))
    await run_on_session(session, announce())
    return upto is None


def _advance(ticket_id: int, upto: str | None, total: int, skipped: int, now: datetime) -> Update:
    """Counts a chunk's deliveries on its ticket and moves the cursor past its passes (to
    NULL after the last chunk, which also finishes the ticket if nothing is pending: all
    skipped, or the worker recorded the rest already)."""
    t = _tickets
    pending = t.c.pending + (total - skipped)
    values: dict[str, Any] = {
        "total": t.c.total + total,
        "pending": pending,
        "skipped": t.c.skipped + skipped,
        "fanout_after": upto,
        "updated_at": now,
    }
    if upto is None:
        values |= finishing_values(
            pending, t.c.delivered, t.c.failed, literal(now, t.c.completed_at.type), true()
        )
    return update(t).where(t.c.id == ticket_id).values(**values)
