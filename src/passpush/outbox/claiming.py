"""Claiming due deliveries: a worker leases a batch and reads what pushing them needs.

The worker claims many times a second, so these are Core statements built once per database:
a claim costs a few round trips whatever its size (one UPDATE … RETURNING the ids, one
SELECT of what pushing them needs, the Google tickets' messages, the tickets started).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Update, and_, bindparam, func, or_, select, update

from passpush.domain.model import DeliveryState, Platform, TicketState
from passpush.store.connectors.connector import ByDialect, Query, Steps
from passpush.store.db import one_of
from passpush.store.models import (
    DeliveryRow,
    DeviceRegistrationRow,
    PassRow,
    TemplateRow,
    TicketRow,
    table_of,
)
from passpush.store.ticket_messages import TicketMessage, ticket_messages

_deliveries = table_of(DeliveryRow)
_registrations = table_of(DeviceRegistrationRow)
_passes = table_of(PassRow)
_templates = table_of(TemplateRow)
_tickets = table_of(TicketRow)


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


# Built once (those that differ, once per database).
_CLAIM = ByDialect(lambda dialect: _claim_statement(skip_locked=dialect == "postgresql"))
# Of the platform bound as `of_platform`.
_CLAIM_PLATFORM = ByDialect(
    lambda dialect: _claim_statement(skip_locked=dialect == "postgresql", of_platform=True)
)
_PUSH_DETAILS = ByDialect(lambda dialect: _push_details_statement(dialect))
_START_TICKETS = ByDialect(
    lambda dialect: (
        update(_tickets)
        .where(one_of(_tickets.c.id, dialect), _tickets.c.state == TicketState.PENDING.value)
        .values(
            state=TicketState.RUNNING.value,
            updated_at=bindparam("now", type_=_tickets.c.updated_at.type),
        )
    )
)
