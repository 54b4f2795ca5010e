"""Tickets and their fan-out into the deliveries outbox, set-based."""

from __future__ import annotations

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
    Text,
    Update,
    and_,
    bindparam,
    case,
    false,
    func,
    insert,
    literal,
    literal_column,
    not_,
    or_,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import BindParameter

from passpush.domain.errors import NotFound
from passpush.domain.fetches import percentile
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
from passpush.domain.passkit import REPEAT_MARK
from passpush.domain.update_tags import update_tag_at
from passpush.store.audience import Audience, resolve_audience
from passpush.store.class_messages import ClassMessageStore
from passpush.store.connectors.connector import ByDialect, Query, Steps
from passpush.store.connectors.session import run_on_session
from passpush.store.db import dialect_name, one_of
from passpush.store.events import announce, skipped_events, skipped_events_after
from passpush.store.models import (
    DeliveryRow,
    DeviceRegistrationRow,
    PassRow,
    ScheduledNotificationRow,
    TemplateRow,
    TicketRow,
    table_of,
)
from passpush.store.ticket_counts import finishing_values

ERROR_SAMPLE_SIZE = 10
# Passes a broadcast fans out per transaction. On SQLite a chunk holds the one writer, so every
# other caller's Send may wait for it: 5,000 passes held it for 0.03 s (a template) to 0.05 s
# (1,000 group tags) on a 2-core machine, 100,000 passes (README, Benchmarks).
FANOUT_CHUNK = 5000
# pg_advisory_xact_lock(space, key): a fan-out's chunks, one transaction at a time. The space
# keeps these two-key locks apart from the Google ledger's (store/google_messages.py); the key
# is the ticket id's low 31 bits (two fan-outs that share one merely take turns).
_FANOUT_LOCK_SPACE = 0x66616E6F
_TAKE_FANOUT_LOCK = text("SELECT pg_advisory_xact_lock(:space, :key)")
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

    async def create_many(
        self, new: Sequence[NewTicket], now: datetime, *, chunk: int = FANOUT_CHUNK
    ) -> list[Ticket]:
        """Commits-to-be tickets with their deliveries (a broadcast: its first `chunk`
        passes'), in order, and the events of what they skipped; returns them.

        A broadcast is INSERT ... SELECT / UPDATE ... WHERE over its audience
        condition: an audience is never loaded into Python. Tickets for one pass
        each are written whole by `one_pass_tickets`.
        """
        tickets: list[Ticket] = []
        # Runs in ticket order, so that the last notification to a pass is the one it shows.
        for one_pass, run in groupby(new, key=lambda n: n.audience.key is not None):
            if one_pass:
                created = await run_on_session(self.session, one_pass_tickets(list(run), now))
                skipped = [t.id for t in created if t.counts.skipped]
                await run_on_session(self.session, skipped_events(skipped, now))
                tickets += created
            else:
                tickets += [await self._create_broadcast(n, now, chunk) for n in run]
        return tickets

    async def _create_broadcast(self, n: NewTicket, now: datetime, chunk: int) -> Ticket:
        ticket_id = await self.session.scalar(
            insert(_tickets).returning(_tickets.c.id), _ticket_values(n, None, now)
        )
        assert ticket_id is not None
        google_class = n.audience.google_class
        if google_class is not None:
            await ClassMessageStore(self.session).add(
                ticket_id, n.audience.project_id, google_class, now
            )
        by_class = google_class is not None
        await self._fan_out_chunk(
            ticket_id, n.audience, n.operation, n.content, "", now, chunk, by_class=by_class
        )
        return await self._fresh(ticket_id)

    async def continue_fan_out(self, ticket_id: int, now: datetime, chunk: int) -> bool:
        """Fans the next `chunk` passes of a broadcast out, in the session's transaction;
        True when its fan-out is (now) complete.

        The audience is resolved again from the ticket's target. On PostgreSQL the fan-out's
        advisory lock is taken first: two replicas carrying the same fan-out on take turns,
        and the second reads the cursor the first advanced, so no chunk goes out twice. Not
        the ticket's row lock: the worker's record updates the ticket's counts, and would
        wait for the whole chunk (pushes halved during a 1M fan-out).
        """
        if dialect_name(self.session) == "postgresql":
            await self.session.execute(
                _TAKE_FANOUT_LOCK, {"space": _FANOUT_LOCK_SPACE, "key": ticket_id & 0x7FFFFFFF}
            )
        query = select(TicketRow).where(
            TicketRow.id == ticket_id, TicketRow.fanout_after.is_not(None)
        )
        row = await self.session.scalar(query.execution_options(populate_existing=True))
        if row is None or row.fanout_after is None:
            return True
        ticket = ticket_from_row(row, [])
        try:
            audience = await resolve_audience(self.session, row.project_id, ticket.target)
        except NotFound:  # what the target named is gone: no pass is left to reach
            await self.session.execute(_advance(ticket_id, None, 0, 0, now))
            await run_on_session(self.session, announce())
            return True
        # By the ticket's own record, not the audience's: one sent before an upgrade has none.
        by_class = await ClassMessageStore(self.session).exists(ticket_id)
        return await self._fan_out_chunk(
            ticket_id,
            audience,
            ticket.operation,
            ticket.content,
            row.fanout_after,
            now,
            chunk,
            by_class=by_class,
        )

    async def _fan_out_chunk(
        self,
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
        upto = await self.session.scalar(
            select(PassRow.id)
            .where(PassRow.project_id == audience.project_id, PassRow.id > after)
            .order_by(PassRow.id)
            .offset(chunk - 1)
            .limit(1)
        )
        in_chunk = audience.passes_in(after, upto)
        # This ticket's deliveries above this id are this chunk's: its fan-out is ours alone
        # (SQLite's one writer; PostgreSQL's advisory lock, taken in continue_fan_out).
        before = await self.session.scalar(select(func.max(DeliveryRow.id))) or 0
        inserted = await self.session.execute(
            _insert_deliveries(literal(ticket_id), in_chunk, by_class=by_class), {"at": now}
        )
        change = _pass_change(ticket_id, operation, content, now)
        await self.session.execute(_update_active_passes(in_chunk, change, older_than=ticket_id))
        # The total from the insert itself: only the (few) skipped ones are counted again.
        total = int(inserted.rowcount)  # type: ignore[attr-defined]
        skipped = await self.session.scalar(
            select(func.count()).where(
                DeliveryRow.ticket_id == ticket_id,
                DeliveryRow.state == DeliveryState.SKIPPED.value,
                DeliveryRow.id > before,
            )
        )
        if skipped:
            await run_on_session(self.session, skipped_events_after(ticket_id, before, now))
        await self.session.execute(_advance(ticket_id, upto, total, skipped or 0, now))
        await run_on_session(self.session, announce())
        return upto is None

    async def fanning_out(self, changed_before: datetime | None = None) -> list[int]:
        """The broadcasts whose fan-out is incomplete (and has not advanced since
        `changed_before`, if given), oldest first."""
        query = select(TicketRow.id).where(TicketRow.fanout_after.is_not(None))
        if changed_before is not None:
            query = query.where(TicketRow.updated_at < changed_before)
        return list(await self.session.scalars(query.order_by(TicketRow.id)))

    async def _fresh(self, ticket_id: int) -> Ticket:
        row = await self.session.get(TicketRow, ticket_id, populate_existing=True)
        assert row is not None
        return ticket_from_row(row, [])

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


def one_pass_tickets(new: Sequence[NewTicket], now: datetime) -> Steps[list[Ticket]]:
    """Tickets whose audience is one pass each, written whole, in order.

    The few deliveries of all of them are read with one query first, so that each
    ticket goes in with its final counts: a batch is four statements whatever its size.
    """
    if not new:
        return []
    keys = {n.audience.key for n in new if n.audience.key is not None}
    rows = yield Query(
        _DELIVERIES_OF_PASSES,
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
        "last_ticket_id",
    )
}


def _ticket_values(n: NewTicket, counts: dict[str, int] | None, now: datetime) -> dict[str, Any]:
    """A ticket row; a broadcast's (counts None) is counted as its fan-out goes in."""
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
        "fetched": 0,
        "completed_at": ticket.complete_time if counted else None,
        "fanout_after": None if counted else "",
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
        "last_ticket_id": ticket_id,
    }


def _as_params(change: dict[str, Any]) -> dict[str, Any]:
    """A pass change as the parameters of _PASS_CHANGE_PARAMS."""
    return {f"new_{name}": value for name, value in change.items()}


def _update_active_passes(
    audience: Any, values: dict[str, Any], *, older_than: int | None = None
) -> Update:
    """Changes the audience's active passes (the inactive ones get nothing), but those that
    a ticket after `older_than` changed already, if given: a broadcast's chunk may reach a
    pass after a later Send did, and the last notification to a pass is the one it shows.

    The update tag is the time's, but above the pass's previous one whatever the clock
    did (store/passes.py next_update_tag): a device that saw a tag sees later changes.
    """
    values = dict(values)
    new_tag = values.pop("update_tag")
    if not isinstance(new_tag, BindParameter):  # a broadcast's value: a 64-bit bind
        new_tag = literal(new_tag, BigInteger)
    tag = case((PassRow.update_tag >= new_tag, PassRow.update_tag + 1), else_=new_tag)
    # A body equal to the value the pass shows now is marked (domain/passkit.py REPEAT_MARK):
    # Wallet alerts only on a changed value. Comparing with the value shown, mark included,
    # makes the next value differ whatever the body; a Delete (NULL) unmarks.
    body = values["notification_body"]
    if not isinstance(body, BindParameter):
        body = literal(body, Text)
    shown = PassRow.notification_body + case((PassRow.notification_marked, REPEAT_MARK), else_="")
    values["notification_marked"] = case((shown == body, true()), else_=false())
    conditions = [audience, PassRow.status == PassStatus.ACTIVE.value]
    if older_than is not None:
        last = PassRow.last_ticket_id
        conditions.append(or_(last.is_(None), last < older_than))
    return update(_passes).where(*conditions).values(update_tag=tag, **values)


def _deliveries_of(
    audience: Any, *, ticket_id: Any = None, at: Any = None, by_class: bool = False
) -> Select[Any]:
    """The deliveries of an audience, in one pass over it: project_id, pass_id,
    registration_id, platform, state, reason (with `ticket_id` first and attempts,
    next_attempt_at and updated_at last when given, as _DELIVERY_COLUMNS).

    Apple: one pending delivery per active registered device of each active
    pass. Google: one per active pass (waiting for the class message if `by_class`). A
    pass that gets nothing (not active, or an Apple pass without devices) is one skipped
    delivery with a reason.
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
    waiting = DeliveryState.BY_CLASS if by_class else DeliveryState.PENDING
    columns: list[Any] = [
        PassRow.project_id,
        PassRow.id,
        DeviceRegistrationRow.id,
        TemplateRow.platform,
        case((not_(active), skipped), (no_device, skipped), else_=waiting.value),
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


def _insert_deliveries(ticket_id: Any, audience: Any, *, by_class: bool = False) -> Insert:
    """One INSERT ... SELECT of a ticket's deliveries; the parameter `at` is the Send's time."""
    at = bindparam("at", type_=DeliveryRow.next_attempt_at.type)
    rows = _deliveries_of(audience, ticket_id=ticket_id, at=at, by_class=by_class)
    return insert(_deliveries).from_select(_DELIVERY_COLUMNS, rows)


# The statements of tickets for one pass each, built once (parameters of_project, of_pass,
# and new_* for the pass change).
_ONE_PASS = and_(PassRow.project_id == bindparam("of_project"), PassRow.id == bindparam("of_pass"))
_UPDATE_ONE_PASS = _update_active_passes(_ONE_PASS, _PASS_CHANGE_PARAMS)
_INSERT_TICKET = insert(_tickets).returning(_tickets.c.id, sort_by_parameter_order=True)
_INSERT_DELIVERY = insert(_deliveries)


def _by_request_id(dialect: str) -> CompoundSelect[Any]:
    """The tickets and schedules of the projects and request ids bound as `projects` and
    `request_ids` (arrays on PostgreSQL)."""
    t, s = _tickets, table_of(ScheduledNotificationRow)
    return union_all(
        select(t.c.id, t.c.project_id, t.c.request_id, t.c.request_fingerprint).where(
            one_of(t.c.project_id, dialect, "projects"),
            one_of(t.c.request_id, dialect, "request_ids"),
        ),
        select(literal_column("0"), s.c.project_id, s.c.request_id, literal_column("''")).where(
            one_of(s.c.project_id, dialect, "projects"),
            one_of(s.c.request_id, dialect, "request_ids"),
        ),
    )


_BY_REQUEST_ID = ByDialect(_by_request_id)
# The deliveries of the passes bound as `projects` and `pass_ids`.
_DELIVERIES_OF_PASSES = ByDialect(
    lambda dialect: _deliveries_of(
        and_(
            one_of(PassRow.project_id, dialect, "projects"),
            one_of(PassRow.id, dialect, "pass_ids"),
        )
    )
)


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
