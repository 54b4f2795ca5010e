"""Scheduled notifications, and the campaign cap they share with immediate sends."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.errors import FailedPrecondition, NotFound, ResourceExhausted
from passpush.domain.model import (
    CampaignTarget,
    Content,
    Operation,
    ScheduledNotification,
    ScheduleState,
    Target,
    target_from_dict,
    target_to_dict,
)
from passpush.store.db import dialect_name
from passpush.store.models import CampaignRow, ScheduledNotificationRow, TicketRow

# Schedules that still hold a place under their campaign's cap (a SENT one holds it through
# its ticket; CANCELLED and FAILED ones gave it back).
_HOLDING = (ScheduleState.PENDING.value, ScheduleState.PROCESSING.value)


def new_schedule_id(now: datetime) -> str:
    """Sorts by creation time (microseconds in hex), then 8 random hex digits."""
    return f"{int(now.timestamp() * 1_000_000):014x}{secrets.token_hex(4)}"


def target_key(target: Target) -> str:
    return json.dumps(target_to_dict(target), sort_keys=True, separators=(",", ":"))


async def reserve_campaign_place(session: AsyncSession, project_id: str, target: Target) -> None:
    """Refuses a notification to a campaign whose cap is used up; holds the campaign row
    (on PostgreSQL) to the end of the transaction, so that concurrent requests queue and
    count one after another. Nothing to do for other targets."""
    if not isinstance(target, CampaignTarget):
        return
    query = select(CampaignRow).where(
        CampaignRow.project_id == project_id, CampaignRow.id == target.campaign_id
    )
    if dialect_name(session) == "postgresql":
        query = query.with_for_update()
    campaign = await session.scalar(query)
    if campaign is None:
        raise NotFound("campaign", target.campaign_id)
    sent = select(func.count()).where(
        TicketRow.project_id == project_id,
        TicketRow.campaign_id == campaign.id,
        TicketRow.operation == Operation.SEND.value,
    )
    waiting = select(func.count()).where(
        ScheduledNotificationRow.project_id == project_id,
        ScheduledNotificationRow.campaign_id == campaign.id,
        ScheduledNotificationRow.state.in_(_HOLDING),
    )
    used = (await session.scalar(sent) or 0) + (await session.scalar(waiting) or 0)
    if used >= campaign.notification_limit:
        raise ResourceExhausted(
            f"campaign {campaign.id!r} has had its {campaign.notification_limit} notifications "
            "(scheduled ones included; a cancelled one gives its place back)",
            subject=f"campaigns/{campaign.id}",
            reason="NOTIFICATION_LIMIT_EXCEEDED",
        )


class ScheduleStore:
    """One per session (unit of work)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(
        self,
        project_id: str,
        target: Target,
        content: Content,
        send_time: datetime,
        request_id: str,
        fingerprint: str,
        now: datetime,
    ) -> ScheduledNotification:
        row = ScheduledNotificationRow(
            project_id=project_id,
            id=new_schedule_id(now),
            target=target_to_dict(target),
            target_key=target_key(target),
            campaign_id=target.campaign_id if isinstance(target, CampaignTarget) else None,
            content_header=content.header,
            content_body=content.body,
            display_start=content.display_start,
            display_end=content.display_end,
            send_time=send_time,
            state=ScheduleState.PENDING.value,
            failure_reason="",
            request_id=request_id or None,
            request_fingerprint=fingerprint,
            created_at=now,
            updated_at=now,
        )
        self.session.add(row)
        await self.session.flush()
        return _scheduled(row)

    async def find_by_request_id(
        self, project_id: str, request_id: str
    ) -> tuple[ScheduledNotification, str] | None:
        """The schedule created under this request_id, with its request's fingerprint."""
        row = await self.session.scalar(
            select(ScheduledNotificationRow).where(
                ScheduledNotificationRow.project_id == project_id,
                ScheduledNotificationRow.request_id == request_id,
            )
        )
        return None if row is None else (_scheduled(row), row.request_fingerprint)

    async def get(self, project_id: str, schedule_id: str) -> ScheduledNotification:
        return _scheduled(await self._row(project_id, schedule_id))

    async def cancel(
        self, project_id: str, schedule_id: str, now: datetime
    ) -> ScheduledNotification:
        row = await self._row(project_id, schedule_id, for_update=True)
        if row.state != ScheduleState.PENDING.value:
            raise FailedPrecondition(
                f"scheduled notification {schedule_id!r} is {row.state}: only a pending one "
                "can be cancelled",
                reason="SCHEDULE_NOT_PENDING",
            )
        row.state = ScheduleState.CANCELLED.value
        row.updated_at = now
        await self.session.flush()
        return _scheduled(row)

    async def newest_first(
        self,
        project_id: str,
        state: ScheduleState | None,
        target: Target | None,
        before_id: str,
        limit: int,
    ) -> Sequence[ScheduledNotification]:
        """Newest first, those created before `before_id` ("" for the newest)."""
        s = ScheduledNotificationRow
        query = select(s).where(s.project_id == project_id)
        if state is not None:
            query = query.where(s.state == state.value)
        if target is not None:
            query = query.where(s.target_key == target_key(target))
        if before_id:
            query = query.where(s.id < before_id)
        rows = await self.session.scalars(query.order_by(s.id.desc()).limit(limit))
        return [_scheduled(row) for row in rows]

    async def claim_due(
        self, owner: str, now: datetime, lease: timedelta, limit: int, max_attempts: int
    ) -> list[tuple[ScheduledNotification, int]]:
        """Marks up to `limit` due schedules PROCESSING for `owner`, each with its attempt
        number: those whose time came, those waiting to be tried again whose wait is over,
        and those whose previous claimer died (claim expired). One already tried
        `max_attempts` times is given up (FAILED) instead: whatever stopped it, it would stop
        again."""
        s = ScheduledNotificationRow
        due = or_(
            (s.state == ScheduleState.PENDING.value) & (s.send_time <= now),
            (s.state == ScheduleState.PROCESSING.value) & (s.claimed_until < now),
        )
        query = select(s).where(due).order_by(s.send_time, s.id).limit(limit)
        if dialect_name(self.session) == "postgresql":
            query = query.with_for_update(skip_locked=True)
        claimed = []
        for row in await self.session.scalars(query):
            row.claimed_until = None
            row.updated_at = now
            if row.send_attempts >= max_attempts:
                row.state = ScheduleState.FAILED.value
                row.claimed_by = None
                row.failure_reason = f"given up after {row.send_attempts} attempts to send it"
                continue
            row.state = ScheduleState.PROCESSING.value
            row.claimed_by = owner
            row.claimed_until = now + lease
            row.send_attempts += 1
            claimed.append((_scheduled(row), row.send_attempts))
        await self.session.flush()
        return claimed

    async def retry_later(
        self, project_id: str, schedule_id: str, owner: str, now: datetime, at: datetime
    ) -> bool:
        """Leaves a schedule whose send failed for a passing reason to be claimed again at
        `at` (by any scheduler); False if `owner` lost the claim."""
        s = ScheduledNotificationRow
        result = await self.session.execute(
            update(s)
            .where(_claimed_by(owner, project_id, schedule_id))
            .values(claimed_by=None, claimed_until=at, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def finish(
        self,
        project_id: str,
        schedule_id: str,
        owner: str,
        now: datetime,
        *,
        ticket_id: int | None = None,
        failure: str = "",
    ) -> bool:
        """SENT with its ticket, or FAILED with a reason; False if `owner` lost the claim."""
        s = ScheduledNotificationRow
        result = await self.session.execute(
            update(s)
            .where(_claimed_by(owner, project_id, schedule_id))
            .values(
                state=(ScheduleState.SENT if ticket_id else ScheduleState.FAILED).value,
                ticket_id=ticket_id,
                failure_reason=failure[:500],
                claimed_by=None,
                claimed_until=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release_claims(self) -> int:
        """Puts every PROCESSING schedule back to PENDING: for a single process at start-up,
        whose previous run died sending them (their send never committed)."""
        s = ScheduledNotificationRow
        result = await self.session.execute(
            update(s)
            .where(s.state == ScheduleState.PROCESSING.value)
            .values(state=ScheduleState.PENDING.value, claimed_by=None, claimed_until=None)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def next_send_time(self) -> datetime | None:
        """When the earliest pending schedule is due, of any project."""
        s = ScheduledNotificationRow
        return await self.session.scalar(
            select(func.min(s.send_time)).where(s.state == ScheduleState.PENDING.value)
        )

    async def _row(
        self, project_id: str, schedule_id: str, *, for_update: bool = False
    ) -> ScheduledNotificationRow:
        query = select(ScheduledNotificationRow).where(
            ScheduledNotificationRow.project_id == project_id,
            ScheduledNotificationRow.id == schedule_id,
        )
        if for_update and dialect_name(self.session) == "postgresql":
            query = query.with_for_update()
        row = await self.session.scalar(query)
        if row is None:
            raise NotFound("scheduled_notification", schedule_id)
        return row


def _scheduled(row: ScheduledNotificationRow) -> ScheduledNotification:
    return ScheduledNotification(
        id=row.id,
        project_id=row.project_id,
        target=target_from_dict(row.target),
        content=Content(row.content_header, row.content_body, row.display_start, row.display_end),
        send_time=row.send_time,
        state=ScheduleState(row.state),
        ticket_id=row.ticket_id or 0,
        failure_reason=row.failure_reason,
        request_id=row.request_id or "",
        create_time=row.created_at,
        update_time=row.updated_at,
    )


def _claimed_by(owner: str, project_id: str, schedule_id: str) -> ColumnElement[bool]:
    """The schedule, while `owner`'s claim on it holds."""
    s = ScheduledNotificationRow
    return and_(
        s.project_id == project_id,
        s.id == schedule_id,
        s.state == ScheduleState.PROCESSING.value,
        s.claimed_by == owner,
    )
