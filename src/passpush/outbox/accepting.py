"""Accepting Sends and Deletes into the outbox: tickets with their deliveries.

Sends to one pass each are accepted a group at a time (NotificationCore's group commit). On
PostgreSQL each is one statement that does the whole of it (whole_tickets.py), and the
group's statements go as one pipelined write: one round trip. On SQLite, which has no
data-modifying `WITH` and where a statement costs no round trip, a group is one short
transaction of a few statements whatever its size: two reads (the retries' first tickets;
the passes named, with their deliveries-to-be), then the tickets, their deliveries, their
passes' change and the events of what they skipped. A broadcast is accepted alone, with its
first chunk of passes (outbox/fanout_chunks.py writes the others).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import and_, insert
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.errors import AlreadyExists, NotFound
from passpush.domain.model import (
    CampaignTarget,
    Content,
    DeliveryCounts,
    DeliveryState,
    Operation,
    PassTarget,
    Target,
    Ticket,
    TicketState,
    target_to_dict,
    terminal_state,
)
from passpush.outbox.class_messages import ClassMessageStore
from passpush.outbox.events import skipped_events
from passpush.outbox.fanout_chunks import FANOUT_CHUNK, fan_out_chunk
from passpush.outbox.ticket_writes import (
    DELIVERY_COLUMNS,
    ONE_PASS,
    PASS_CHANGE_PARAMS,
    as_params,
    deliveries_of,
    pass_change,
    pass_shown,
    sends_notification,
    update_active_passes,
)
from passpush.outbox.whole_tickets import ACCEPT_ONE_PASS, TICKET_COLUMNS
from passpush.store.audience import (
    Audience,
    passes_named,
    passes_named_params,
    targets_found,
)
from passpush.store.connectors.connector import ByDialect, Connector, Query, Steps
from passpush.store.connectors.session import run_on_session
from passpush.store.db import one_of
from passpush.store.models import DeliveryRow, PassRow, TicketRow, table_of
from passpush.store.tickets import PriorTicket, prior_tickets, ticket_from_row

_tickets = table_of(TicketRow)
_deliveries = table_of(DeliveryRow)


class Request(Hashable, Protocol):
    """A Send or Delete to accept, as the service took it in."""

    @property
    def project_id(self) -> str: ...
    @property
    def operation(self) -> Operation: ...
    @property
    def target(self) -> Target: ...
    @property
    def content(self) -> Content | None: ...
    @property
    def request_id(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...  # tells a retry from a reused request_id
    @property
    def key(self) -> tuple[str, str]: ...  # (project_id, request_id)


R = TypeVar("R", bound=Request)
# What a request gets: its ticket, a retry's first ticket, or why it is refused.
Accepted = Ticket | PriorTicket | Exception


async def accept_group(
    transactions: Connector,
    standalone: Connector,
    group: Sequence[R],
    clock: Callable[[], datetime],
) -> dict[R, Accepted]:
    """Accepts Sends and Deletes to one pass each (PassTarget): a few statements for the
    whole group. `clock` gives the tickets' creation time, read once.

    SQLite: one transaction on `transactions`. PostgreSQL: one pipelined write on
    `standalone`, whose connections keep their plans, that also wakes the delivery workers
    at its commit. The plans follow the tables as they grow (the tickets from nothing):
    every process keeps their statistics fresh (store/statistics.py), and an ANALYZE
    replans what depends on the table.
    """
    if transactions.dialect != "postgresql":
        return await transactions.run(lambda: _accept_in_one_transaction(group, clock))
    return await standalone.run(lambda: _accept_whole(group, clock), one_write=True)


def _accept_whole(group: Sequence[R], clock: Callable[[], datetime]) -> Steps[dict[R, Accepted]]:
    """accept_group's one step on PostgreSQL: a statement a request, which accepts it
    whole (whole_tickets.py), the group's as one pipelined write."""
    now = clock()
    new = [_new_one_pass_ticket(r) for r in group]
    rows = yield Query.each(ACCEPT_ONE_PASS, [_accept_params(n, now) for n in new])
    return {r: _accepted(r, n, row, now) for r, n, row in zip(group, new, rows, strict=True)}


def _accept_in_one_transaction(
    group: Sequence[R], clock: Callable[[], datetime]
) -> Steps[dict[R, Accepted]]:
    """accept_group's steps in one transaction (SQLite)."""
    read = yield from _read_group(group)
    now = clock()
    written = yield from _write_one_pass_tickets(read.new_tickets, read.drafts, now)
    yield from skipped_events([t.id for t in written if t.counts.skipped], now)
    return read.answers_with(written)


@dataclass
class _ReadGroup(Generic[R]):
    """What a group's reads decided: the answers known, the tickets to write (with their
    deliveries-to-be), and the retries within the group of a request it writes."""

    answers: dict[R, Accepted]
    new: list[tuple[R, NewTicket]]
    drafts: list[list[_Draft]]
    retries: list[tuple[R, R]]

    @property
    def new_tickets(self) -> list[NewTicket]:
        return [n for _, n in self.new]

    def answers_with(self, written: list[Ticket]) -> dict[R, Accepted]:
        answers = self.answers | dict(zip([r for r, _ in self.new], written, strict=True))
        for retry, first in self.retries:
            answers[retry] = (
                answers[first] if retry.fingerprint == first.fingerprint else reused_request_id()
            )
        return answers


def _read_group(group: Sequence[R]) -> Steps[_ReadGroup[R]]:
    """Two reads: the retries' first tickets, then the passes named with their
    deliveries-to-be."""
    answers: dict[R, Accepted] = {}
    # First: a retry answers its first ticket even if the target changed since.
    prior = yield from prior_tickets({r.key for r in group if r.request_id})
    targets = {(r.project_id, _pass_id(r)) for r in group}
    rows = yield Query(_NAMED_WITH_DELIVERIES, passes_named_params(targets))
    passes = targets_found(targets, [(row[0], row[1], row[6]) for row in rows])
    deliveries: dict[tuple[str, str], list[_Draft]] = defaultdict(list)
    for row in rows:
        deliveries[(row[0], row[1])].append(_Draft(*row[:6]))
    first_in_group: dict[tuple[str, str], R] = {}
    retries: list[tuple[R, R]] = []
    new: list[tuple[R, NewTicket]] = []
    for r in group:
        if r.request_id and r.key in prior:
            answers[r] = retry_answer(r, prior[r.key])
            continue
        if r.request_id and r.key in first_in_group:
            retries.append((r, first_in_group[r.key]))
            continue
        pass_id = _pass_id(r)
        audience = passes.get((r.project_id, pass_id))
        if audience is None:
            answers[r] = NotFound("pass", pass_id)
            continue
        if r.request_id:
            first_in_group[r.key] = r
        new.append((r, new_ticket(r, audience)))
    drafts = [deliveries[n.audience.key] for _, n in new]  # type: ignore[index]
    return _ReadGroup(answers, new, drafts, retries)


def new_ticket(r: Request, audience: Audience) -> NewTicket:
    return NewTicket(audience, r.operation, r.target, r.content, r.request_id, r.fingerprint)


def retry_answer(r: Request, prior: PriorTicket) -> PriorTicket | Exception:
    """A retry gets the first ticket; a reused key with another request is refused."""
    return prior if prior.fingerprint == r.fingerprint else reused_request_id()


def reused_request_id() -> AlreadyExists:
    return AlreadyExists("request", "request_id", reason="REQUEST_ID_REUSED")


def _pass_id(r: Request) -> str:
    assert isinstance(r.target, PassTarget)  # the only target grouped
    return r.target.pass_id


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
class _Draft:
    """A delivery that a one-pass ticket will get (a row of deliveries_of)."""

    project_id: str
    pass_id: str
    registration_id: int | None
    platform: str
    state: str
    reason: str

    def values(self, ticket_id: int, now: datetime) -> dict[str, Any]:
        """The delivery's row, as insert_deliveries would insert it."""
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
        return dict(zip(DELIVERY_COLUMNS, row, strict=True))


async def create_tickets(
    session: AsyncSession, new: Sequence[NewTicket], now: datetime, *, chunk: int = FANOUT_CHUNK
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
            created = await run_on_session(session, one_pass_tickets(list(run), now))
            skipped = [t.id for t in created if t.counts.skipped]
            await run_on_session(session, skipped_events(skipped, now))
            tickets += created
        else:
            tickets += [await _create_broadcast(session, n, now, chunk) for n in run]
    return tickets


async def _create_broadcast(
    session: AsyncSession, n: NewTicket, now: datetime, chunk: int
) -> Ticket:
    ticket_id = await session.scalar(
        insert(_tickets).returning(_tickets.c.id), _ticket_values(n, None, now)
    )
    assert ticket_id is not None
    google_class = n.audience.google_class
    if google_class is not None:
        await ClassMessageStore(session).add(ticket_id, n.audience.project_id, google_class, now)
    by_class = google_class is not None
    await fan_out_chunk(
        session, ticket_id, n.audience, n.operation, n.content, "", now, chunk, by_class=by_class
    )
    row = await session.get(TicketRow, ticket_id, populate_existing=True)
    assert row is not None
    return ticket_from_row(row, [])


def one_pass_tickets(new: Sequence[NewTicket], now: datetime) -> Steps[list[Ticket]]:
    """Tickets whose audience is one pass each, written whole, in order.

    The few deliveries of all of them are read with one query first, so that each
    ticket goes in with its final counts: a batch is four statements whatever its size.
    The events of what they skipped are the caller's to append (skipped_events).
    """
    drafts = yield from _drafts_of(new)
    return (yield from _write_one_pass_tickets(new, drafts, now))


def _write_one_pass_tickets(
    new: Sequence[NewTicket], drafts: Sequence[Sequence[_Draft]], now: datetime
) -> Steps[list[Ticket]]:
    """The tickets, their deliveries, and their passes' change: three statements."""
    counts = [_counted(d) for d in drafts]
    inserted = yield Query.each(
        _INSERT_TICKET, [_ticket_values(n, c, now) for n, c in zip(new, counts, strict=True)]
    )
    ids = [row[0] for row in inserted]
    yield Query.many(
        _INSERT_DELIVERY,
        [d.values(i, now) for i, each in zip(ids, drafts, strict=True) for d in each],
    )
    yield Query.many(
        _UPDATE_ONE_PASS,
        [
            {"of_project": n.audience.project_id, "of_pass": n.audience.pass_id}
            | as_params(pass_change(i, n.operation, n.content, now))
            for i, n in zip(ids, new, strict=True)
        ],
    )
    return [_ticket_of(i, n, c, now) for i, n, c in zip(ids, new, counts, strict=True)]


def _accept_params(n: NewTicket, now: datetime) -> dict[str, Any]:
    """ACCEPT_ONE_PASS's parameters for a request's ticket-to-be (whole_tickets.py)."""
    ticket = _ticket_values(n, {}, now)
    return (
        {f"ticket_{name}": ticket[name] for name in TICKET_COLUMNS}
        | {
            "named": n.audience.pass_id,
            "at": now,
            "sending": sends_notification(n.operation, n.content),
        }
        | as_params(pass_shown(n.operation, n.content, now))
    )


def _accepted(r: Request, n: NewTicket, row: Sequence[Any], now: datetime) -> Accepted:
    """What ACCEPT_ONE_PASS's row says of a request: its ticket, its first ticket (a
    retry, maybe of a request earlier in the group), or that it names no pass."""
    prior_id, prior_fingerprint, ticket_id, pending, skipped, _ = row
    if prior_id is not None:
        return retry_answer(r, PriorTicket(prior_id, r.project_id, prior_fingerprint))
    if ticket_id is None:
        return NotFound("pass", _pass_id(r))
    counts = {DeliveryState.PENDING.value: pending, DeliveryState.SKIPPED.value: skipped}
    return _ticket_of(ticket_id, n, counts, now)


def _new_one_pass_ticket(r: Request) -> NewTicket:
    # The pass as named: of its audience only the project is read here (the statement
    # resolves an external id itself).
    return new_ticket(r, Audience(r.project_id, None, _pass_id(r)))


def _drafts_of(new: Sequence[NewTicket]) -> Steps[list[list[_Draft]]]:
    """Each one-pass ticket's deliveries-to-be, read with one query."""
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
    return [drafts[n.audience.key] for n in new]  # type: ignore[index]


def _ticket_values(n: NewTicket, counts: dict[str, int] | None, now: datetime) -> dict[str, Any]:
    """A ticket row; a broadcast's (counts None) is counted as its fan-out goes in."""
    content = n.content
    scheduled_id, due = n.scheduled or (None, None)
    ticket = _ticket_of(0, n, counts or {}, now)
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


def _ticket_of(ticket_id: int, n: NewTicket, counts: dict[str, int], now: datetime) -> Ticket:
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


# The statements of tickets for one pass each, built once (parameters of_project, of_pass,
# and new_* for the pass change).
_UPDATE_ONE_PASS = update_active_passes(ONE_PASS, PASS_CHANGE_PARAMS)
_INSERT_TICKET = insert(_tickets).returning(_tickets.c.id, sort_by_parameter_order=True)
_INSERT_DELIVERY = insert(_deliveries)


# The passes named by id or external id, each with its deliveries-to-be (a row each) and
# its external id last.
_NAMED_WITH_DELIVERIES = ByDialect(
    lambda dialect: deliveries_of(passes_named(dialect)).add_columns(PassRow.external_id)
)
# The deliveries of the passes bound as `projects` and `pass_ids`.
_DELIVERIES_OF_PASSES = ByDialect(
    lambda dialect: deliveries_of(
        and_(
            one_of(PassRow.project_id, dialect, "projects"),
            one_of(PassRow.id, dialect, "pass_ids"),
        )
    )
)
