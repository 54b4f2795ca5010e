"""The deliveries outbox: claim due deliveries under a lease, record outcomes in batches."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.model import DeliveryState, Platform, TicketState, terminal_state
from passpush.domain.outcomes import RegistrationAction
from passpush.store.db import dialect_name
from passpush.store.models import (
    DeliveryRow,
    DeviceRegistrationRow,
    PassRow,
    TemplateRow,
    TicketRow,
    table_of,
)


@dataclass(frozen=True)
class ClaimedDelivery:
    id: int
    ticket_id: int
    pass_id: str
    platform: Platform
    attempts: int  # attempts made before this one
    registration_id: int | None
    push_token: str | None  # None when the device unregistered since the send
    topic: str
    google_object_id: str


@dataclass(frozen=True)
class DeliveryResult:
    delivery: ClaimedDelivery
    state: DeliveryState  # DELIVERED, FAILED, or PENDING to retry at next_attempt_at
    reason: str
    next_attempt_at: datetime | None = None
    registration: RegistrationAction = RegistrationAction.KEEP


class Outbox:
    """One per session (unit of work)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim_due(
        self, owner: str, now: datetime, lease: timedelta, limit: int
    ) -> list[ClaimedDelivery]:
        """Leases up to `limit` due deliveries to `owner`.

        On PostgreSQL, FOR UPDATE SKIP LOCKED lets replicas claim side by side;
        a replica that dies leaves leases that expire and are claimed again.
        """
        due = (
            select(DeliveryRow.id)
            .where(
                DeliveryRow.state == DeliveryState.PENDING.value,
                DeliveryRow.next_attempt_at <= now,
                or_(DeliveryRow.lease_until.is_(None), DeliveryRow.lease_until < now),
            )
            .order_by(DeliveryRow.next_attempt_at, DeliveryRow.id)
            .limit(limit)
        )
        if dialect_name(self.session) == "postgresql":
            due = due.with_for_update(skip_locked=True)
        ids = list(await self.session.scalars(due))
        if not ids:
            return []
        await self.session.execute(
            update(DeliveryRow)
            .where(DeliveryRow.id.in_(ids))
            .values(lease_owner=owner, lease_until=now + lease)
        )
        rows = await self.session.execute(
            select(
                DeliveryRow.id,
                DeliveryRow.ticket_id,
                DeliveryRow.pass_id,
                DeliveryRow.platform,
                DeliveryRow.attempts,
                DeliveryRow.registration_id,
                DeviceRegistrationRow.push_token,
                TemplateRow.pass_type_identifier,
                PassRow.google_object_id,
            )
            .join(
                PassRow,
                and_(
                    PassRow.project_id == DeliveryRow.project_id, PassRow.id == DeliveryRow.pass_id
                ),
            )
            .join(
                TemplateRow,
                and_(
                    TemplateRow.project_id == PassRow.project_id,
                    TemplateRow.id == PassRow.template_id,
                ),
            )
            .outerjoin(
                DeviceRegistrationRow,
                and_(
                    DeviceRegistrationRow.id == DeliveryRow.registration_id,
                    DeviceRegistrationRow.active,
                ),
            )
            .where(DeliveryRow.id.in_(ids))
            .order_by(DeliveryRow.id)
        )
        claimed = [
            ClaimedDelivery(
                id=r.id,
                ticket_id=r.ticket_id,
                pass_id=r.pass_id,
                platform=Platform(r.platform),
                attempts=r.attempts,
                registration_id=r.registration_id,
                push_token=r.push_token,
                topic=r.pass_type_identifier,
                google_object_id=r.google_object_id,
            )
            for r in rows
        ]
        await self.session.execute(
            update(TicketRow)
            .where(
                TicketRow.id.in_({c.ticket_id for c in claimed}),
                TicketRow.state == TicketState.PENDING.value,
            )
            .values(state=TicketState.RUNNING.value, updated_at=now)
        )
        return claimed

    async def record(
        self, owner: str, results: Sequence[DeliveryResult], now: datetime
    ) -> set[int]:
        """Stores outcomes, updates ticket counts, and returns the tickets that finished.

        Only deliveries still leased to `owner` are recorded: one whose lease
        expired and was claimed again belongs to its new owner.
        """
        if not results:
            return set()
        held_query = select(DeliveryRow.id).where(
            DeliveryRow.id.in_([r.delivery.id for r in results]),
            DeliveryRow.lease_owner == owner,
        )
        if dialect_name(self.session) == "postgresql":
            held_query = held_query.with_for_update()
        held = set(await self.session.scalars(held_query))
        mine = [r for r in results if r.delivery.id in held]
        if not mine:
            return set()
        # Core statements: executemany over the batch, one round trip, no ORM bookkeeping.
        deliveries = table_of(DeliveryRow)
        await self.session.execute(
            update(deliveries)
            .where(deliveries.c.id == bindparam("delivery_id"))
            .values(
                state=bindparam("new_state"),
                reason=bindparam("new_reason"),
                attempts=bindparam("new_attempts"),
                next_attempt_at=bindparam("next_at"),
                lease_owner=None,
                lease_until=None,
                updated_at=now,
            ),
            [
                {
                    "delivery_id": r.delivery.id,
                    "new_state": r.state.value,
                    "new_reason": r.reason,
                    "new_attempts": r.delivery.attempts + 1,
                    "next_at": r.next_attempt_at or now,
                }
                for r in mine
            ],
        )
        await self._act_on_registrations(mine, now)
        return await self._count(mine, now)

    async def _act_on_registrations(self, results: Sequence[DeliveryResult], now: datetime) -> None:
        for action in (RegistrationAction.DEACTIVATE, RegistrationAction.REMOVE):
            # Only the token that was pushed: the device may have re-registered since.
            targets = [
                {"registration_id": r.delivery.registration_id, "token": r.delivery.push_token}
                for r in results
                if r.registration is action and r.delivery.registration_id is not None
            ]
            if not targets:
                continue
            registrations = table_of(DeviceRegistrationRow)
            condition = and_(
                registrations.c.id == bindparam("registration_id"),
                registrations.c.push_token == bindparam("token"),
            )
            statement = (
                update(registrations).where(condition).values(active=False, updated_at=now)
                if action is RegistrationAction.DEACTIVATE
                else delete(registrations).where(condition)
            )
            await self.session.execute(statement, targets)

    async def _count(self, results: Sequence[DeliveryResult], now: datetime) -> set[int]:
        done: dict[int, dict[str, int]] = defaultdict(lambda: {"delivered": 0, "failed": 0})
        for r in results:
            if r.state is DeliveryState.DELIVERED:
                done[r.delivery.ticket_id]["delivered"] += 1
            elif r.state is DeliveryState.FAILED:
                done[r.delivery.ticket_id]["failed"] += 1
        finished: set[int] = set()
        for ticket_id, counts in done.items():
            n = counts["delivered"] + counts["failed"]
            if n == 0:
                continue
            await self.session.execute(
                update(TicketRow)
                .where(TicketRow.id == ticket_id)
                .values(
                    pending=TicketRow.pending - n,
                    delivered=TicketRow.delivered + counts["delivered"],
                    failed=TicketRow.failed + counts["failed"],
                    updated_at=now,
                )
            )
            ticket = await self.session.get(TicketRow, ticket_id, populate_existing=True)
            assert ticket is not None
            if ticket.pending == 0 and not TicketState(ticket.state).is_terminal:
                ticket.state = terminal_state(ticket.delivered, ticket.failed).value
                ticket.completed_at = now
                finished.add(ticket_id)
        await self.session.flush()
        return finished

    async def release(self, owner: str | None = None) -> int:
        """Hands back leased, unfinished deliveries (all of them when owner is None)."""
        condition: ColumnElement[bool] = DeliveryRow.lease_owner.is_not(None)
        if owner is not None:
            condition = DeliveryRow.lease_owner == owner
        result = await self.session.execute(
            update(DeliveryRow)
            .where(condition, DeliveryRow.state == DeliveryState.PENDING.value)
            .values(lease_owner=None, lease_until=None)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
