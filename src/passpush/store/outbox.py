"""The deliveries outbox: claim due deliveries under a lease, record outcomes in batches.

The worker runs these statements many times a second, so they are Core statements built
once per database: each call only binds values, with no ORM bookkeeping, and a batch costs a
few round trips whatever its size (a claim: one UPDATE … RETURNING the ids, one SELECT of what
pushing them needs; the answers of one kind: one UPDATE … RETURNING the ids still ours).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    Update,
    and_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.model import (
    Content,
    DeliveryState,
    Operation,
    Platform,
    TicketState,
)
from passpush.domain.outcomes import RegistrationAction
from passpush.store.connectors.connector import ByDialect, Query, Steps
from passpush.store.connectors.session import run_on_session
from passpush.store.db import one_of
from passpush.store.events import announce, recorded_events
from passpush.store.models import (
    DeliveryRow,
    DeviceRegistrationRow,
    PassRow,
    TemplateRow,
    TicketRow,
    table_of,
)

_deliveries = table_of(DeliveryRow)
_registrations = table_of(DeviceRegistrationRow)
_passes = table_of(PassRow)
_templates = table_of(TemplateRow)
_tickets = table_of(TicketRow)


@dataclass(frozen=True)
class TicketMessage:
    """What a Google delivery's ticket asks of the pass object."""

    operation: Operation  # SEND: add the message; DELETE: remove passpush's messages
    content: Content | None  # None for a Delete


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
    project_id: str = ""
    google_object_type: str = ""  # "loyaltyObject", ...
    message: TicketMessage | None = None  # Google deliveries only
    # When it was first claimed: its retry budget runs from there. None only for a
    # delivery built outside a claim.
    first_attempt_at: datetime | None = None

    def seconds_since_first_attempt(self, now: datetime) -> float:
        if self.first_attempt_at is None:
            return 0.0
        return max(0.0, (now - self.first_attempt_at).total_seconds())


@dataclass(frozen=True)
class DeliveryResult:
    delivery: ClaimedDelivery
    state: DeliveryState  # DELIVERED, FAILED, or PENDING to retry at next_attempt_at
    reason: str
    next_attempt_at: datetime | None = None
    registration: RegistrationAction = RegistrationAction.KEEP


class Outbox:
    """One per session (unit of work): the steps below, run in its transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim_due(
        self,
        owner: str,
        now: datetime,
        lease: timedelta,
        limit: int,
        platform: Platform | None = None,
    ) -> list[ClaimedDelivery]:
        steps = claim_due(owner, now, lease, limit, platform)
        return await run_on_session(self.session, steps)

    async def record(self, owner: str, results: Sequence[DeliveryResult], now: datetime) -> None:
        await run_on_session(self.session, record(owner, results, now))

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

    async def depth(self, now: datetime) -> dict[tuple[Platform, str], int]:
        """The pending deliveries by platform and state: "due" (to push now), "leased" (in a
        worker's hands), "retrying" (waiting for their next attempt). One read of the
        pending ones (the claim's index), for a gauge read every few seconds."""
        d = _deliveries
        leased = and_(d.c.lease_until.is_not(None), d.c.lease_until > now)
        due = and_(d.c.next_attempt_at <= now, ~leased)
        waiting = and_(d.c.next_attempt_at > now, ~leased)
        rows = await self.session.execute(
            select(
                d.c.platform,
                func.sum(case((due, 1), else_=0)),
                func.sum(case((leased, 1), else_=0)),
                func.sum(case((waiting, 1), else_=0)),
            )
            .where(d.c.state == DeliveryState.PENDING.value)
            .group_by(d.c.platform)
        )
        counts = {(p, s): 0 for p in Platform for s in ("due", "leased", "retrying")}
        for platform, *numbers in rows:
            for state, number in zip(("due", "leased", "retrying"), numbers, strict=True):
                counts[Platform(platform), state] = int(number or 0)
        return counts


def claim_due(
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    platform: Platform | None = None,
) -> Steps[list[ClaimedDelivery]]:
    """Leases up to `limit` due deliveries (of one platform, if given) to `owner`, oldest
    due first.

    On PostgreSQL, FOR UPDATE SKIP LOCKED lets replicas claim side by side;
    a replica that dies leaves leases that expire and are claimed again.
    """
    params: dict[str, Any] = {
        "owner": owner,
        "now": now,
        "lease_until": now + lease,
        "limit": limit,
    }
    if platform is None:
        claim = _CLAIM
    else:
        claim, params["of_platform"] = _CLAIM_PLATFORM, platform.value
    ids = [row[0] for row in (yield Query(claim, params))]
    if not ids:
        return []
    rows = yield Query(_PUSH_DETAILS, {"ids": ids})
    details = [_PushDetails(*row) for row in rows]
    # What their tickets ask (a few tickets per claim: Apple deliveries, the many, do not read
    # their ticket's content).
    google_tickets = sorted({r.ticket_id for r in details if r.platform == Platform.GOOGLE.value})
    messages = (yield from ticket_messages(google_tickets)) if google_tickets else {}
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
            project_id=r.project_id,
            google_object_type=r.google_object_type,
            message=messages.get(r.ticket_id),
            first_attempt_at=r.first_attempt_at,
        )
        for r in details
    ]
    yield Query.write(_START_TICKETS, {"ids": list({c.ticket_id for c in claimed}), "now": now})
    return claimed


def ticket_messages(ticket_ids: Sequence[int]) -> Steps[dict[int, TicketMessage]]:
    """What the tickets ask of Google, by ticket id: a message to add, or passpush's removed."""
    messages: dict[int, TicketMessage] = {}
    query = Query(_TICKET_MESSAGES, {"ids": list(ticket_ids)})
    for ticket_id, operation, header, body, display_start, display_end in (yield query):
        content = None
        if operation == Operation.SEND.value:
            content = Content(header, body, display_start, display_end)
        messages[ticket_id] = TicketMessage(Operation(operation), content)
    return messages


def renew_leases(owner: str, delivery_ids: Sequence[int], lease_until: datetime) -> Steps[None]:
    """Extends `owner`'s leases of the deliveries it still holds until `lease_until`: they
    wait their turn in its hands, and must not be claimed again meanwhile."""
    for start in range(0, len(delivery_ids), _RENEWAL_CHUNK):
        chunk = list(delivery_ids[start : start + _RENEWAL_CHUNK])
        params = {"ids": chunk, "owner": owner, "lease_until": lease_until}
        yield Query.write(_RENEW, params)


# Ids per statement: SQLite's expanding IN takes one parameter per id (at most 32,766).
_RENEWAL_CHUNK = 5000


def record(owner: str, results: Sequence[DeliveryResult], now: datetime) -> Steps[None]:
    """Stores outcomes and updates ticket counts, finishing the tickets that are done.

    Only deliveries still leased to `owner` are recorded: one whose lease
    expired and was claimed again belongs to its new owner.
    """
    retries = [r for r in results if r.state is DeliveryState.PENDING]
    answered = [r for r in results if r.state is not DeliveryState.PENDING]
    recorded = [
        *(yield from _retry_later(owner, retries, now)),
        *(yield from _finish(owner, answered, now)),
    ]
    # Before registrations go: an event names the device that was pushed.
    yield from recorded_events([r.delivery.id for r in recorded], now)
    yield from announce()
    yield from _act_on_registrations(recorded, now)
    yield from _count(recorded, now)


def _finish(
    owner: str, answered: Sequence[DeliveryResult], now: datetime
) -> Steps[list[DeliveryResult]]:
    """Stores delivered and failed outcomes, one statement per outcome; returns those that
    were still `owner`'s, and so were stored."""
    stored: list[DeliveryResult] = []
    for (state, reason), group in itertools.groupby(sorted(answered, key=_outcome), _outcome):
        same_outcome = list(group)
        params = {
            "ids": [r.delivery.id for r in same_outcome],
            "owner": owner,
            "new_state": state.value,
            "new_reason": reason,
            "now": now,
        }
        held = {row[0] for row in (yield Query(_FINISH, params))}
        stored += (r for r in same_outcome if r.delivery.id in held)
    return stored


def _retry_later(
    owner: str, retries: Sequence[DeliveryResult], now: datetime
) -> Steps[list[DeliveryResult]]:
    """Puts deliveries back in the outbox until their next attempt (each its own time);
    returns those that were still `owner`'s, and so were stored."""
    if not retries:
        return []
    params = {"ids": [r.delivery.id for r in retries], "owner": owner}
    held = {row[0] for row in (yield Query(_HELD, params))}
    mine = [r for r in retries if r.delivery.id in held]
    yield Query.many(
        _RETRY,
        [
            {
                "delivery_id": r.delivery.id,
                "owner": owner,
                "new_reason": r.reason,
                "next_at": r.next_attempt_at or now,
                "now": now,
            }
            for r in mine
        ],
    )
    return mine


def _act_on_registrations(results: Sequence[DeliveryResult], now: datetime) -> Steps[None]:
    for action, statement in (
        (RegistrationAction.DEACTIVATE, _DEACTIVATE_REGISTRATION),
        (RegistrationAction.REMOVE, _REMOVE_REGISTRATION),
    ):
        # Only the token that was pushed: the device may have re-registered since.
        targets: list[dict[str, Any]] = [
            {"registration_id": r.delivery.registration_id, "token": r.delivery.push_token}
            for r in results
            if r.registration is action and r.delivery.registration_id is not None
        ]
        if action is RegistrationAction.DEACTIVATE:
            targets = [t | {"now": now} for t in targets]
        yield Query.many(statement, targets)


def _count(results: Sequence[DeliveryResult], now: datetime) -> Steps[None]:
    """Moves the recorded deliveries from pending to delivered or failed on their tickets,
    finishing each ticket whose last delivery this was: one statement for all of them."""
    delivered = Counter(r.delivery.ticket_id for r in results if r.state.is_delivered)
    without_alert = Counter(
        r.delivery.ticket_id for r in results if r.state is DeliveryState.DELIVERED_WITHOUT_ALERT
    )
    failed = Counter(r.delivery.ticket_id for r in results if r.state is DeliveryState.FAILED)
    tickets = sorted(delivered.keys() | failed.keys())  # one lock order for every worker
    yield Query.many(
        _COUNT_TICKETS,
        [
            {
                "ticket_id": ticket_id,
                "n_answered": delivered[ticket_id] + failed[ticket_id],
                "n_delivered": delivered[ticket_id],
                "n_without_alert": without_alert[ticket_id],
                "n_failed": failed[ticket_id],
                "now": now,
            }
            for ticket_id in tickets
        ],
    )


def count_on_ticket(
    ticket_id: int,
    delivered: int,
    without_alert: int,
    failed: int,
    now: datetime,
) -> Steps[None]:
    """Moves answered deliveries of one ticket from pending to delivered (`without_alert` of
    them without an alert) or failed, finishing the ticket if none is left pending."""
    params = {
        "ticket_id": ticket_id,
        "n_answered": delivered + failed,
        "n_delivered": delivered,
        "n_without_alert": without_alert,
        "n_failed": failed,
        "now": now,
    }
    yield Query.many(_COUNT_TICKETS, [params])


@dataclass(frozen=True)
class _PushDetails:
    """A row of _push_details_statement."""

    id: int
    ticket_id: int
    project_id: str
    pass_id: str
    platform: str
    attempts: int
    registration_id: int | None
    push_token: str | None
    pass_type_identifier: str
    google_object_type: str
    google_object_id: str
    first_attempt_at: datetime | None


def _outcome(result: DeliveryResult) -> tuple[DeliveryState, str]:
    return result.state, result.reason


# The outbox's hot statements, built once (those that differ, once per database).
_d, _t, _r = _deliveries, _tickets, _registrations
_NOW = bindparam("now", type_=_d.c.updated_at.type)
_PUSHED_TOKEN = and_(_r.c.id == bindparam("registration_id"), _r.c.push_token == bindparam("token"))
_CLAIM = ByDialect(lambda dialect: _claim_statement(skip_locked=dialect == "postgresql"))
# Of the platform bound as `of_platform`.
_CLAIM_PLATFORM = ByDialect(
    lambda dialect: _claim_statement(skip_locked=dialect == "postgresql", of_platform=True)
)
_PUSH_DETAILS = ByDialect(lambda dialect: _push_details_statement(dialect))
_TICKET_MESSAGES = ByDialect(
    lambda dialect: select(
        _t.c.id,
        _t.c.operation,
        _t.c.content_header,
        _t.c.content_body,
        _t.c.display_start,
        _t.c.display_end,
    ).where(one_of(_t.c.id, dialect))
)
_START_TICKETS = ByDialect(
    lambda dialect: (
        update(_t)
        .where(one_of(_t.c.id, dialect), _t.c.state == TicketState.PENDING.value)
        .values(state=TicketState.RUNNING.value, updated_at=_NOW)
    )
)
_FINISH = ByDialect(
    lambda dialect: (
        update(_d)
        .where(one_of(_d.c.id, dialect), _d.c.lease_owner == bindparam("owner"))
        .values(
            state=bindparam("new_state"),
            reason=bindparam("new_reason"),
            attempts=_d.c.attempts + 1,
            next_attempt_at=_NOW,
            lease_owner=None,
            lease_until=None,
            updated_at=_NOW,
        )
        .returning(_d.c.id)
    )
)
_HELD = ByDialect(lambda dialect: _held_statement(dialect))
_RETRY = (
    update(_d)
    .where(_d.c.id == bindparam("delivery_id"), _d.c.lease_owner == bindparam("owner"))
    .values(
        state=DeliveryState.PENDING.value,
        reason=bindparam("new_reason"),
        attempts=_d.c.attempts + 1,
        next_attempt_at=bindparam("next_at"),
        lease_owner=None,
        lease_until=None,
        updated_at=_NOW,
    )
)
_RENEW = ByDialect(
    lambda dialect: (
        update(_d)
        .where(one_of(_d.c.id, dialect), _d.c.lease_owner == bindparam("owner"))
        .values(lease_until=bindparam("lease_until", type_=_d.c.lease_until.type))
    )
)
_DEACTIVATE_REGISTRATION = (
    update(_r)
    .where(_PUSHED_TOKEN)
    .values(active=False, updated_at=bindparam("now", type_=_r.c.updated_at.type))
)
_REMOVE_REGISTRATION = delete(_r).where(_PUSHED_TOKEN)


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


def _claim_statement(*, skip_locked: bool, of_platform: bool = False) -> Update:
    """Leases the due deliveries (of the platform bound as `of_platform`, if asked), oldest
    due first, and returns their ids."""
    d = _deliveries
    now = bindparam("now", type_=d.c.next_attempt_at.type)
    conditions = [
        d.c.state == DeliveryState.PENDING.value,
        d.c.next_attempt_at <= now,
        or_(d.c.lease_until.is_(None), d.c.lease_until < now),
    ]
    if of_platform:
        conditions.append(d.c.platform == bindparam("of_platform"))
    due = (
        select(d.c.id)
        .where(*conditions)
        .order_by(d.c.next_attempt_at, d.c.id)
        .limit(bindparam("limit"))
    )
    if skip_locked:
        # In a CTE, which PostgreSQL runs once (it never inlines one that locks): under
        # `id IN (subquery)` a plan or a recheck of a concurrently changed row may run the
        # LIMIT again, and a claim of 2 leased 3 in CI.
        chosen = due.with_for_update(skip_locked=True).cte("due")
        which = d.c.id == chosen.c.id
    else:
        which = d.c.id.in_(due)
    return (
        update(d)
        .where(which)
        .values(
            lease_owner=bindparam("owner"),
            lease_until=bindparam("lease_until"),
            first_attempt_at=func.coalesce(d.c.first_attempt_at, now),
        )
        .returning(d.c.id)
    )


def _held_statement(dialect: str) -> Select[Any]:
    """Which of the deliveries bound as `ids` are still leased to `owner`; on PostgreSQL
    locked, so that no other worker takes one over before this transaction writes it."""
    d = _deliveries
    held = select(d.c.id).where(one_of(d.c.id, dialect), d.c.lease_owner == bindparam("owner"))
    return held.with_for_update() if dialect == "postgresql" else held


def _push_details_statement(dialect: str) -> Select[Any]:
    """What pushing the deliveries bound as `ids` needs: the device's token and the topic
    (Apple), the object's type and id (Google).

    (Not in the claim's RETURNING: SQLite's may not name other tables.)
    """
    d, r, p, t = _deliveries, _registrations, _passes, _templates
    return (
        select(
            d.c.id,
            d.c.ticket_id,
            d.c.project_id,
            d.c.pass_id,
            d.c.platform,
            d.c.attempts,
            d.c.registration_id,
            r.c.push_token,
            t.c.pass_type_identifier,
            t.c.google_object_type,
            p.c.google_object_id,
            d.c.first_attempt_at,
        )
        .join(p, and_(p.c.project_id == d.c.project_id, p.c.id == d.c.pass_id))
        .join(t, and_(t.c.project_id == p.c.project_id, t.c.id == p.c.template_id))
        .outerjoin(r, and_(r.c.id == d.c.registration_id, r.c.active))
        .where(one_of(d.c.id, dialect))
        .order_by(d.c.id)
    )


_COUNT_TICKETS = _count_tickets_statement(_NOW)
