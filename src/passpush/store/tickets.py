"""Tickets as they are read: by id, by request_id (a retry's first ticket), and the broadcasts
still fanning out. What writes them (accepting, fanning out, recording) is the outbox's."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Table,
    and_,
    func,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.errors import NotFound
from passpush.domain.fetches import percentile
from passpush.domain.model import (
    Content,
    DeliveryCounts,
    DeliveryState,
    Operation,
    Ticket,
    TicketState,
    target_from_dict,
)
from passpush.store.connectors.connector import ByDialect, Query, Steps
from passpush.store.db import one_of
from passpush.store.models import DeliveryRow, ScheduledNotificationRow, TicketRow, table_of

ERROR_SAMPLE_SIZE = 10
_tickets = table_of(TicketRow)


@dataclass(frozen=True)
class PriorTicket:
    """A ticket found by its request_id: enough to tell a retry from a reused key."""

    id: int
    project_id: str
    fingerprint: str


class TicketStore:
    """Ticket reads; one per session (unit of work)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def fanning_out(self, changed_before: datetime | None = None) -> list[int]:
        """The broadcasts whose fan-out is incomplete (and has not advanced since
        `changed_before`, if given), oldest first."""
        query = select(TicketRow.id).where(TicketRow.fanout_after.is_not(None))
        if changed_before is not None:
            query = query.where(TicketRow.updated_at < changed_before)
        return list(await self.session.scalars(query.order_by(TicketRow.id)))

    async def get(self, project_id: str, ticket_id: int) -> Ticket:
        row = await self.session.get(TicketRow, ticket_id, populate_existing=True)
        if row is None or row.project_id != project_id:
            raise NotFound("ticket", str(ticket_id))
        return ticket_from_row(row, await self._errors(ticket_id))

    async def state(self, project_id: str, ticket_id: int) -> TicketState:
        """Where the ticket stands, without its counts' error sample; NotFound as `get`."""
        state = await self.session.scalar(
            select(TicketRow.state).where(
                TicketRow.id == ticket_id, TicketRow.project_id == project_id
            )
        )
        if state is None:
            raise NotFound("ticket", str(ticket_id))
        return TicketState(state)

    async def get_many(self, ticket_ids: Collection[int]) -> list[Ticket]:
        """The tickets that exist among `ticket_ids`, whatever their project."""
        rows = await self.session.scalars(
            select(TicketRow)
            .where(TicketRow.id.in_(ticket_ids))
            .execution_options(populate_existing=True)
        )
        return [
            ticket_from_row(row, await self._errors(row.id) if row.failed else []) for row in rows
        ]

    async def _errors(self, ticket_id: int) -> list[tuple[str, int]]:
        """The commonest reasons of the ticket's failed deliveries, with their counts."""
        errors = await self.session.execute(
            select(DeliveryRow.reason, func.count())
            .where(
                DeliveryRow.ticket_id == ticket_id,
                DeliveryRow.state == DeliveryState.FAILED.value,
            )
            .group_by(DeliveryRow.reason)
            .order_by(func.count().desc(), DeliveryRow.reason)
            .limit(ERROR_SAMPLE_SIZE)
        )
        return [(reason, count) for reason, count in errors]


def prior_tickets(keys: Collection[tuple[str, str]]) -> Steps[dict[tuple[str, str], PriorTicket]]:
    """The tickets created under these (project_id, request_id) pairs, by pair.

    A request_id is one namespace per project across Send, Delete and Schedule: a pair a
    schedule holds is found too, as a PriorTicket with id 0 and no fingerprint, which no
    request matches (REQUEST_ID_REUSED). The same statement looks in both tables, so this
    costs a Send no round trip.
    """
    if not keys:
        return {}
    rows = yield Query(
        _BY_REQUEST_ID,
        {"projects": list({p for p, _ in keys}), "request_ids": list({r for _, r in keys})},
    )
    # The two lists match some crossings of the pairs too: those are left out.
    found: dict[tuple[str, str], PriorTicket] = {}
    for ticket_id, p, r, fingerprint in rows:  # tickets first: a ticket's pair is its own
        found.setdefault((p, r), PriorTicket(ticket_id, p, fingerprint))
    return {key: found[key] for key in keys if key in found}


def ticket_from_row(row: TicketRow, errors: list[tuple[str, int]]) -> Ticket:
    operation = Operation(row.operation)
    content = None
    if operation is Operation.SEND:
        content = Content(row.content_header, row.content_body, row.display_start, row.display_end)
    return Ticket(
        id=row.id,
        project_id=row.project_id,
        operation=operation,
        target=target_from_dict(row.target),
        content=content,
        state=TicketState(row.state),
        counts=DeliveryCounts(
            row.total,
            row.pending,
            row.delivered,
            row.failed,
            row.skipped,
            row.delivered_without_alert,
            row.fetched,
        ),
        request_id=row.request_id or "",
        create_time=row.created_at,
        update_time=row.updated_at,
        complete_time=row.completed_at,
        errors=errors,
        scheduled_notification_id=row.scheduled_notification_id or "",
        late_by=row.created_at - row.scheduled_send_time if row.scheduled_send_time else None,
        fanning_out=row.fanout_after is not None,
        push_to_fetch_p50=percentile(row.fetch_latency, 0.50),
        push_to_fetch_p95=percentile(row.fetch_latency, 0.95),
    )


def request_id_holders(
    matching: Callable[[Table], ColumnElement[bool]],
) -> CompoundSelect[Any]:
    """The tickets and the schedules whose (project_id, request_id) match (`matching`, given
    either table): id, project_id, request_id, fingerprint. A request_id is one namespace per
    project across Send, Delete and Schedule: a schedule comes as id 0 with no fingerprint,
    which no request matches (REQUEST_ID_REUSED)."""
    t, s = _tickets, table_of(ScheduledNotificationRow)
    return union_all(
        select(t.c.id, t.c.project_id, t.c.request_id, t.c.request_fingerprint).where(matching(t)),
        select(literal_column("0"), s.c.project_id, s.c.request_id, literal_column("''")).where(
            matching(s)
        ),
    )


def _by_request_id(dialect: str) -> CompoundSelect[Any]:
    """The holders of the projects and request ids bound as `projects` and `request_ids`
    (arrays on PostgreSQL)."""
    return request_id_holders(
        lambda table: and_(
            one_of(table.c.project_id, dialect, "projects"),
            one_of(table.c.request_id, dialect, "request_ids"),
        )
    )


_BY_REQUEST_ID = ByDialect(_by_request_id)
