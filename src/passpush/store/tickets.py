"""Tickets and their fan-out into the deliveries outbox, set-based."""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import (
    BigInteger,
    CompoundSelect,
    Insert,
    Select,
    Update,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    literal_column,
    not_,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import BindParameter

from passpush.domain.errors import NotFound
from passpush.domain.model import (
    SKIP_NO_DEVICES,
    SKIP_PASS_NOT_ACTIVE,
    CampaignTarget,
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
from passpush.store.db import dialect_name, one_of
from passpush.store.direct import Query, Steps, run_on_session
from passpush.store.models import (
    DeliveryRow,
    DeviceRegistrationRow,
    PassRow,
    ScheduledNotificationRow,
    TemplateRow,
    TicketRow,
    table_of,
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


@dataclass(frozen=True)
class NewTicket:
    """A ticket to create: what was asked, and the audience it resolved to."""

    audience: Audience
    operation: Operation
    target: Target
    content: Content | None
    request_id: str
    fingerprint: str
    # The scheduled notification this ticket sends, and the time it was due.
    scheduled: tuple[str, datetime] | None = None


@dataclass(frozen=True)
class PriorTicket:
    """A ticket found by its request_id: enough to tell a retry from a reused key."""

    id: int
    project_id: str
    fingerprint: str


@dataclass(frozen=True)
class _Draft:
    """A delivery that a one-pass ticket will get (a row of _deliveries_of)."""

    project_id: str
    pass_id: str
    registration_id: int | None
    platform: str
    state: str
    reason: str

    def values(self, ticket_id: int, now: datetime) -> dict[str, Any]:
        """The delivery's row, as _insert_deliveries would insert it."""
        row = (
            ticket_id,
            self.project_id,
            self.pass_id,
            self.registration_id,
            self.platform,
            self.state,
            self.reason,
            0,  # attempts
            now,  # next_attempt_at
            now,  # updated_at
        )
        return dict(zip(_DELIVERY_COLUMNS, row, strict=True))


class TicketStore:
    """The ticket-side repository; one per session (unit of work)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create_many(self, new: Sequence[NewTicket], now: datetime) -> list[Ticket]:
        """Commits-to-be tickets with all their deliveries, in order; returns them.

        A broadcast is INSERT ... SELECT / UPDATE ... WHERE over its audience
        condition: an audience is never loaded into Python. Tickets for one pass
        each are written whole by `one_pass_tickets`.
        """
        dialect = dialect_name(self.session)
        tickets: list[Ticket] = []
        # Runs in ticket order, so that the last notification to a pass is the one it shows.
        for one_pass, run in groupby(new, key=lambda n: n.audience.key is not None):
            if one_pass:
                steps = one_pass_tickets(list(run), dialect, now)
                tickets += await run_on_session(self.session, steps)
            else:
                tickets += [await self._create_broadcast(n, now) for n in run]
        return tickets

    async def _create_broadcast(self, n: NewTicket, now: datetime) -> Ticket:
        ticket_id = await self.session.scalar(
            insert(_tickets).returning(_tickets.c.id), _ticket_values(n, None, now)
        )
        assert ticket_id is not None
        ticket = _new_ticket(ticket_id, n, await self._fan_out(ticket_id, n, now), now)
        await self.session.execute(_COUNT_BROADCAST, _counts_params(ticket))
        return ticket

    async def _fan_out(self, ticket_id: int, n: NewTicket, now: datetime) -> dict[str, int]:
        """One broadcast's deliveries and pass changes; its counts by delivery state."""
        condition = n.audience.condition
        inserted = await self.session.execute(
            _insert_deliveries(literal(ticket_id), condition), {"at": now}
        )
        change = _pass_change(ticket_id, n.operation, n.content, now)
        await self.session.execute(_update_active_passes(condition, change))
        # The total from the insert itself: only the (few) skipped ones are counted again.
        total = int(inserted.rowcount)  # type: ignore[attr-defined]
        skipped = await self.session.scalar(
            select(func.count()).where(
                DeliveryRow.ticket_id == ticket_id,
                DeliveryRow.state == DeliveryState.SKIPPED.value,
            )
        )
        return {
            DeliveryState.PENDING.value: total - (skipped or 0),
            DeliveryState.SKIPPED.value: skipped or 0,
        }

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


def prior_tickets(
    keys: Collection[tuple[str, str]], dialect: str
) -> Steps[dict[tuple[str, str], PriorTicket]]:
    """The tickets created under these (project_id, request_id) pairs, by pair.

    A request_id is one namespace per project across Send, Delete and Schedule: a pair a
    schedule holds is found too, as a PriorTicket with id 0 and no fingerprint, which no
    request matches (REQUEST_ID_REUSED). The same statement looks in both tables, so this
    costs a Send no round trip.
    """
    if not keys:
        return {}
    rows = yield Query(
        _statements(dialect).by_request_id,
        {"projects": list({p for p, _ in keys}), "request_ids": list({r for _, r in keys})},
    )
    # The two lists match some crossings of the pairs too: those are left out.
    found: dict[tuple[str, str], PriorTicket] = {}
    for ticket_id, p, r, fingerprint in rows:  # tickets first: a ticket's pair is its own
        found.setdefault((p, r), PriorTicket(ticket_id, p, fingerprint))
    return {key: found[key] for key in keys if key in found}


def one_pass_tickets(new: Sequence[NewTicket], dialect: str, now: datetime) -> Steps[list[Ticket]]:
    """Tickets whose audience is one pass each, written whole, in order.

    The few deliveries of all of them are read with one query first, so that each
    ticket goes in with its final counts: a batch is four statements whatever its size.
    """
    if not new:
        return []
    keys = {n.audience.key for n in new if n.audience.key is not None}
    rows = yield Query(
        _statements(dialect).deliveries_of_passes,
        {"projects": list({p for p, _ in keys}), "pass_ids": list({i for _, i in keys})},
    )
    drafts: dict[tuple[str, str], list[_Draft]] = {key: [] for key in keys}
    for row in rows:
        draft = _Draft(*row)
        if (draft.project_id, draft.pass_id) in drafts:  # not a crossing of the two lists
            drafts[(draft.project_id, draft.pass_id)].append(draft)
    audiences = [drafts[n.audience.key] for n in new]  # type: ignore[index]
    counts = [_counted(a) for a in audiences]
    inserted = yield Query.each(
        _INSERT_TICKET, [_ticket_values(n, c, now) for n, c in zip(new, counts, strict=True)]
    )
    ids = [row[0] for row in inserted]
    yield Query.many(
        _INSERT_DELIVERY,
        [d.values(i, now) for i, a in zip(ids, audiences, strict=True) for d in a],
    )
    yield Query.many(
        _UPDATE_ONE_PASS,
        [
            {"of_project": n.audience.project_id, "of_pass": n.audience.pass_id}
            | _as_params(_pass_change(i, n.operation, n.content, now))
            for i, n in zip(ids, new, strict=True)
        ],
    )
    return [_new_ticket(i, n, c, now) for i, n, c in zip(ids, new, counts, strict=True)]


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
        ),
        request_id=row.request_id or "",
        create_time=row.created_at,
        update_time=row.updated_at,
        complete_time=row.completed_at,
        errors=errors,
        scheduled_notification_id=row.scheduled_notification_id or "",
        late_by=row.created_at - row.scheduled_send_time if row.scheduled_send_time else None,
    )


# Core tables: parametrized statements run as executemany, without ORM bookkeeping.
_tickets = table_of(TicketRow)
_passes = table_of(PassRow)
_deliveries = table_of(DeliveryRow)
_PASS_CHANGE_PARAMS: dict[str, BindParameter[Any]] = {
    name: bindparam(f"new_{name}", type_=BigInteger if name == "update_tag" else None)
    for name in (
        "update_tag",
        "updated_at",
        "notification_header",
        "notification_body",
        "notification_ticket_id",
    )
}


def _ticket_values(n: NewTicket, counts: dict[str, int] | None, now: datetime) -> dict[str, Any]:
    """A ticket row; a broadcast's (counts None) is counted once its fan-out is in."""
    content = n.content
    scheduled_id, due = n.scheduled or (None, None)
    ticket = _new_ticket(0, n, counts or {}, now)
    counted = counts is not None
    return {
        "campaign_id": n.target.campaign_id if isinstance(n.target, CampaignTarget) else None,
        "scheduled_notification_id": scheduled_id,
        "scheduled_send_time": due,
        "project_id": n.audience.project_id,
        "operation": n.operation.value,
        "target": target_to_dict(n.target),
        "content_header": content.header if content else "",
        "content_body": content.body if content else "",
        "display_start": content.display_start if content else None,
        "display_end": content.display_end if content else None,
        "state": ticket.state.value if counted else TicketState.PENDING.value,
        "total": ticket.counts.total,
        "pending": ticket.counts.pending,
        "delivered": 0,
        "failed": 0,
        "skipped": ticket.counts.skipped,
        "delivered_without_alert": 0,
        "completed_at": ticket.complete_time if counted else None,
        "request_id": n.request_id or None,
        "request_fingerprint": n.fingerprint,
        "created_at": now,
        "updated_at": now,
    }


def _counted(drafts: Sequence[_Draft]) -> dict[str, int]:
    """Counts by delivery state; a one-pass audience always has a row (maybe skipped)."""
    counts: dict[str, int] = {}
    for draft in drafts:
        counts[draft.state] = counts.get(draft.state, 0) + 1
    return counts


def _counts_params(ticket: Ticket) -> dict[str, Any]:
    return {
        "ticket_id": ticket.id,
        "new_state": ticket.state.value,
        "new_total": ticket.counts.total,
        "new_pending": ticket.counts.pending,
        "new_skipped": ticket.counts.skipped,
        "new_completed_at": ticket.complete_time,
    }


def _new_ticket(ticket_id: int, n: NewTicket, counts: dict[str, int], now: datetime) -> Ticket:
    pending = counts.get(DeliveryState.PENDING.value, 0)
    skipped = counts.get(DeliveryState.SKIPPED.value, 0)
    done = pending == 0
    return Ticket(
        id=ticket_id,
        project_id=n.audience.project_id,
        operation=n.operation,
        target=n.target,
        content=n.content if n.operation is Operation.SEND else None,
        state=terminal_state(0, 0) if done else TicketState.PENDING,
        counts=DeliveryCounts(pending + skipped, pending, 0, 0, skipped),
        request_id=n.request_id,
        create_time=now,
        update_time=now,
        complete_time=now if done else None,
        scheduled_notification_id=n.scheduled[0] if n.scheduled else "",
        late_by=now - n.scheduled[1] if n.scheduled else None,
    )


def _pass_change(
    ticket_id: int, operation: Operation, content: Content | None, now: datetime
) -> dict[str, Any]:
    """Sets (Send) or clears (Delete) the notification field of a pass."""
    sending = operation is Operation.SEND and content is not None
    return {
        "update_tag": update_tag_at(now),
        "updated_at": now,
        "notification_header": content.header if sending and content else None,
        "notification_body": content.body if sending and content else None,
        "notification_ticket_id": ticket_id if sending else None,
    }


def _as_params(change: dict[str, Any]) -> dict[str, Any]:
    """A pass change as the parameters of _PASS_CHANGE_PARAMS."""
    return {f"new_{name}": value for name, value in change.items()}


def _update_active_passes(audience: Any, values: dict[str, Any]) -> Update:
    """Changes the audience's active passes (the inactive ones get nothing).

    The update tag is the time's, but above the pass's previous one whatever the clock
    did (store/passes.py next_update_tag): a device that saw a tag sees later changes.
    """
    values = dict(values)
    new_tag = values.pop("update_tag")
    if not isinstance(new_tag, BindParameter):  # a broadcast's value: a 64-bit bind
        new_tag = literal(new_tag, BigInteger)
    tag = case((PassRow.update_tag >= new_tag, PassRow.update_tag + 1), else_=new_tag)
    return (
        update(_passes)
        .where(audience, PassRow.status == PassStatus.ACTIVE.value)
        .values(update_tag=tag, **values)
    )


def _deliveries_of(audience: Any, *, ticket_id: Any = None, at: Any = None) -> Select[Any]:
    """The deliveries of an audience, in one pass over it: project_id, pass_id,
    registration_id, platform, state, reason (with `ticket_id` first and attempts,
    next_attempt_at and updated_at last when given, as _DELIVERY_COLUMNS).

    Apple: one pending delivery per active registered device of each active
    pass. Google: one per active pass. A pass that gets nothing (not active,
    or an Apple pass without devices) is one skipped delivery with a reason.
    """
    active = PassRow.status == PassStatus.ACTIVE.value
    apple = TemplateRow.platform == Platform.APPLE.value
    # Only an active Apple pass is joined to its devices: any other pass stays one row.
    device = and_(
        DeviceRegistrationRow.project_id == PassRow.project_id,
        DeviceRegistrationRow.pass_id == PassRow.id,
        DeviceRegistrationRow.active,
        active,
        apple,
    )
    no_device = and_(apple, DeviceRegistrationRow.id.is_(None))
    skipped = DeliveryState.SKIPPED.value
    columns: list[Any] = [
        PassRow.project_id,
        PassRow.id,
        DeviceRegistrationRow.id,
        TemplateRow.platform,
        case((not_(active), skipped), (no_device, skipped), else_=DeliveryState.PENDING.value),
        case((not_(active), SKIP_PASS_NOT_ACTIVE), (no_device, SKIP_NO_DEVICES), else_=""),
    ]
    if ticket_id is not None:
        columns = [ticket_id, *columns, literal(0), at, at]
    return (
        select(*columns)
        .select_from(PassRow)
        .join(
            TemplateRow,
            and_(
                TemplateRow.project_id == PassRow.project_id,
                TemplateRow.id == PassRow.template_id,
            ),
        )
        .outerjoin(DeviceRegistrationRow, device)
        .where(audience)
    )


def _insert_deliveries(ticket_id: Any, audience: Any) -> Insert:
    """One INSERT ... SELECT of a ticket's deliveries; the parameter `at` is the Send's time."""
    at = bindparam("at", type_=DeliveryRow.next_attempt_at.type)
    rows = _deliveries_of(audience, ticket_id=ticket_id, at=at)
    return insert(_deliveries).from_select(_DELIVERY_COLUMNS, rows)


# The statements of tickets for one pass each, built once (parameters of_project, of_pass,
# and new_* for the pass change).
_ONE_PASS = and_(PassRow.project_id == bindparam("of_project"), PassRow.id == bindparam("of_pass"))
_UPDATE_ONE_PASS = _update_active_passes(_ONE_PASS, _PASS_CHANGE_PARAMS)
_INSERT_TICKET = insert(_tickets).returning(_tickets.c.id, sort_by_parameter_order=True)
_INSERT_DELIVERY = insert(_deliveries)


@dataclass(frozen=True)
class _DialectStatements:
    by_request_id: CompoundSelect[Any]  # parameters projects, request_ids
    deliveries_of_passes: Select[Any]  # parameters projects, pass_ids


@functools.cache
def _statements(dialect: str) -> _DialectStatements:
    """The statements whose lists bind as arrays on PostgreSQL, built once per database."""
    t, s = _tickets, table_of(ScheduledNotificationRow)
    return _DialectStatements(
        by_request_id=union_all(
            select(t.c.id, t.c.project_id, t.c.request_id, t.c.request_fingerprint).where(
                one_of(t.c.project_id, dialect, "projects"),
                one_of(t.c.request_id, dialect, "request_ids"),
            ),
            select(literal_column("0"), s.c.project_id, s.c.request_id, literal_column("''")).where(
                one_of(s.c.project_id, dialect, "projects"),
                one_of(s.c.request_id, dialect, "request_ids"),
            ),
        ),
        deliveries_of_passes=_deliveries_of(
            and_(
                one_of(PassRow.project_id, dialect, "projects"),
                one_of(PassRow.id, dialect, "pass_ids"),
            )
        ),
    )


# A broadcast's counts, once its deliveries are in.
_COUNT_BROADCAST = (
    update(_tickets)
    .where(_tickets.c.id == bindparam("ticket_id"))
    .values(
        state=bindparam("new_state"),
        total=bindparam("new_total"),
        pending=bindparam("new_pending"),
        skipped=bindparam("new_skipped"),
        completed_at=bindparam("new_completed_at"),
    )
)
