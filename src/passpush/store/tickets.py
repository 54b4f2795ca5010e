"""Tickets and their fan-out into the deliveries outbox, set-based."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, exists, func, insert, literal, not_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.errors import NotFound
from passpush.domain.model import (
    SKIP_NO_DEVICES,
    SKIP_PASS_NOT_ACTIVE,
    Content,
    DeliveryCounts,
    DeliveryState,
    Operation,
    PassStatus,
    Platform,
    Target,
    Ticket,
    TicketState,
    target_from_dict,
    target_to_dict,
    terminal_state,
)
from passpush.store.audience import Audience
from passpush.store.models import (
    DeliveryRow,
    DeviceRegistrationRow,
    PassRow,
    TemplateRow,
    TicketRow,
)
from passpush.store.passes import update_tag_at

ERROR_SAMPLE_SIZE = 10
_DELIVERY_COLUMNS = [
    "ticket_id",
    "project_id",
    "pass_id",
    "registration_id",
    "platform",
    "state",
    "reason",
    "attempts",
    "next_attempt_at",
    "updated_at",
]


class TicketStore:
    """The ticket-side repository; one per session (unit of work)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def find_by_request_id(self, project_id: str, request_id: str) -> TicketRow | None:
        return await self.session.scalar(
            select(TicketRow).where(
                TicketRow.project_id == project_id, TicketRow.request_id == request_id
            )
        )

    async def create(
        self,
        *,
        audience: Audience,
        operation: Operation,
        target: Target,
        content: Content | None,
        request_id: str,
        fingerprint: str,
        now: datetime,
    ) -> int:
        """Commits-to-be a ticket with all its deliveries; returns its id.

        Everything is INSERT ... SELECT / UPDATE ... WHERE over the audience
        condition: the audience is never loaded into Python.
        """
        row = TicketRow(
            project_id=audience.project_id,
            operation=operation.value,
            target=target_to_dict(target),
            content_header=content.header if content else "",
            content_body=content.body if content else "",
            display_start=content.display_start if content else None,
            display_end=content.display_end if content else None,
            state=TicketState.PENDING.value,
            request_id=request_id or None,
            request_fingerprint=fingerprint,
            created_at=now,
            updated_at=now,
        )
        self.session.add(row)
        await self.session.flush()
        for query in _fan_out(row.id, audience.condition, now):
            await self.session.execute(insert(DeliveryRow).from_select(_DELIVERY_COLUMNS, query))
        await self._change_passes(row.id, audience, operation, content, now)
        await self._count_deliveries(row, now)
        return row.id

    async def _change_passes(
        self,
        ticket_id: int,
        audience: Audience,
        operation: Operation,
        content: Content | None,
        now: datetime,
    ) -> None:
        """Sets (or clears) the notification field of the audience's active passes."""
        values: dict[str, Any] = {"update_tag": update_tag_at(now), "updated_at": now}
        if operation is Operation.SEND and content is not None:
            values |= {
                "notification_header": content.header,
                "notification_body": content.body,
                "notification_ticket_id": ticket_id,
            }
        else:
            values |= {
                "notification_header": None,
                "notification_body": None,
                "notification_ticket_id": None,
            }
        await self.session.execute(
            update(PassRow)
            .where(audience.condition, PassRow.status == PassStatus.ACTIVE.value)
            .values(**values)
            .execution_options(synchronize_session=False)
        )

    async def _count_deliveries(self, row: TicketRow, now: datetime) -> None:
        counts: dict[str, int] = dict(
            (
                await self.session.execute(
                    select(DeliveryRow.state, func.count())
                    .where(DeliveryRow.ticket_id == row.id)
                    .group_by(DeliveryRow.state)
                )
            ).all()
        )
        row.pending = counts.get(DeliveryState.PENDING.value, 0)
        row.skipped = counts.get(DeliveryState.SKIPPED.value, 0)
        row.total = row.pending + row.skipped
        if row.pending == 0:
            row.state = terminal_state(0, 0).value
            row.completed_at = now
        await self.session.flush()

    async def get(self, project_id: str, ticket_id: int) -> Ticket:
        row = await self.session.get(TicketRow, ticket_id, populate_existing=True)
        if row is None or row.project_id != project_id:
            raise NotFound("ticket", str(ticket_id))
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
        return ticket_from_row(row, [(reason, count) for reason, count in errors])


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
        counts=DeliveryCounts(row.total, row.pending, row.delivered, row.failed, row.skipped),
        request_id=row.request_id or "",
        create_time=row.created_at,
        update_time=row.updated_at,
        complete_time=row.completed_at,
        errors=errors,
    )


def _fan_out(ticket_id: int, audience: Any, now: datetime) -> list[Select[Any]]:
    """The SELECTs whose rows become the ticket's deliveries.

    Apple: one pending delivery per active registered device of each active
    pass. Google: one per active pass. A pass that gets nothing (not active,
    or an Apple pass without devices) is one skipped delivery with a reason.
    """
    active = PassRow.status == PassStatus.ACTIVE.value
    apple = TemplateRow.platform == Platform.APPLE.value
    registered = and_(
        DeviceRegistrationRow.project_id == PassRow.project_id,
        DeviceRegistrationRow.pass_id == PassRow.id,
        DeviceRegistrationRow.active,
    )
    has_device = exists().where(registered)

    def rows(registration: Any, state: DeliveryState, reason: str, condition: Any) -> Select[Any]:
        query = select(
            literal(ticket_id),
            PassRow.project_id,
            PassRow.id,
            registration,
            TemplateRow.platform,
            literal(state.value),
            literal(reason),
            literal(0),
            literal(now, type_=DeliveryRow.next_attempt_at.type),
            literal(now, type_=DeliveryRow.updated_at.type),
        ).join(
            TemplateRow,
            and_(
                TemplateRow.project_id == PassRow.project_id,
                TemplateRow.id == PassRow.template_id,
            ),
        )
        return query.where(audience, condition)

    apple_devices = rows(
        DeviceRegistrationRow.id, DeliveryState.PENDING, "", and_(active, apple)
    ).join(DeviceRegistrationRow, registered)
    none = literal(None, type_=DeliveryRow.registration_id.type)
    return [
        apple_devices,
        rows(none, DeliveryState.PENDING, "", and_(active, not_(apple))),
        rows(none, DeliveryState.SKIPPED, SKIP_PASS_NOT_ACTIVE, not_(active)),
        rows(none, DeliveryState.SKIPPED, SKIP_NO_DEVICES, and_(active, apple, not_(has_device))),
    ]
