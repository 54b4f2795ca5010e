"""A ticket's counts as its deliveries are answered, and the terminal state they finish it in.

Shared by what records answers (the outbox's deliveries, Google class messages) and what
completes a fan-out: each moves counts in its own statement, and the one that leaves none
pending sets the ticket's terminal state in the same SET.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, Update, and_, bindparam, case, or_, update

from passpush.domain.model import TicketState
from passpush.store.connectors.connector import Query, Steps
from passpush.store.models import TicketRow, table_of

_tickets = table_of(TicketRow)


def count_on_ticket(
    ticket_id: int,
    delivered: int,
    without_alert: int,
    failed: int,
    now: datetime,
) -> Steps[None]:
    """Moves answered deliveries of one ticket from pending to delivered (`without_alert` of
    them without an alert) or failed, finishing the ticket if none is left pending."""
    yield Query.many(COUNT_TICKETS, [counted(ticket_id, delivered, without_alert, failed, now)])


def counted(
    ticket_id: int, delivered: int, without_alert: int, failed: int, now: datetime
) -> dict[str, Any]:
    """COUNT_TICKETS's parameters for one ticket."""
    return {
        "ticket_id": ticket_id,
        "n_answered": delivered + failed,
        "n_delivered": delivered,
        "n_without_alert": without_alert,
        "n_failed": failed,
        "now": now,
    }


def finishing_values(
    pending: ColumnElement[Any],
    delivered: ColumnElement[Any],
    failed: ColumnElement[Any],
    now: ColumnElement[Any],
    fanned_out: ColumnElement[bool],
) -> dict[str, ColumnElement[Any]]:
    """The state and completed_at of a ticket whose counts become these: terminal, as
    `terminal_state` decides it, when none is left pending and its fan-out is complete
    (`fanned_out`). SET reads the row as it was."""
    t = _tickets
    # Not in_(): an expanding IN list cannot go through executemany.
    unfinished = or_(*(t.c.state == s.value for s in TicketState if not s.is_terminal))
    finishing = and_(pending == 0, unfinished, fanned_out)
    finished_state = case(
        (failed == 0, TicketState.SUCCEEDED.value),
        (delivered == 0, TicketState.FAILED.value),
        else_=TicketState.PARTIALLY_FAILED.value,
    )
    return {
        "state": case((finishing, finished_state), else_=t.c.state),
        "completed_at": case((finishing, now), else_=t.c.completed_at),
    }


def _count_tickets_statement(now: BindParameter[Any]) -> Update:
    """Counts one ticket's answered deliveries; the answer that leaves none pending also
    sets its terminal state, as `terminal_state` decides it (SET reads the row as it was)."""
    t = _tickets
    answered, delivered, failed = (
        t.c.pending - bindparam("n_answered"),
        t.c.delivered + bindparam("n_delivered"),
        t.c.failed + bindparam("n_failed"),
    )
    return (
        update(t)
        .where(t.c.id == bindparam("ticket_id"))
        .values(
            pending=answered,
            delivered=delivered,
            delivered_without_alert=t.c.delivered_without_alert + bindparam("n_without_alert"),
            failed=failed,
            updated_at=now,
            # A broadcast still fanning out is not finished by its first deliveries.
            **finishing_values(answered, delivered, failed, now, t.c.fanout_after.is_(None)),
        )
    )


# Executed once per ticket (executemany), with `counted`'s parameters.
COUNT_TICKETS = _count_tickets_statement(bindparam("now", type_=_tickets.c.updated_at.type))
