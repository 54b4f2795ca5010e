"""Recording what the platforms answered: outcomes stored in batches, tickets counted.

The worker records many times a second, so these are Core statements built once per
database: the answers of one kind cost one UPDATE … RETURNING the ids still ours, whatever
their number, then the events, the registrations to drop and the tickets' counts.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, delete, select, update

from passpush.domain.model import DeliveryState
from passpush.domain.outcomes import RegistrationAction
from passpush.outbox.claiming import ClaimedDelivery
from passpush.outbox.events import recorded_events
from passpush.store.connectors.connector import ByDialect, Query, Steps
from passpush.store.db import one_of
from passpush.store.events import announce
from passpush.store.models import DeliveryRow, DeviceRegistrationRow, table_of
from passpush.store.ticket_counts import COUNT_TICKETS, counted

_deliveries = table_of(DeliveryRow)
_registrations = table_of(DeviceRegistrationRow)


@dataclass(frozen=True)
class DeliveryResult:
    delivery: ClaimedDelivery
    state: DeliveryState  # DELIVERED, FAILED, or PENDING to retry at next_attempt_at
    reason: str
    next_attempt_at: datetime | None = None
    registration: RegistrationAction = RegistrationAction.KEEP


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
        COUNT_TICKETS,
        [counted(t, delivered[t], without_alert[t], failed[t], now) for t in tickets],
    )


def _outcome(result: DeliveryResult) -> tuple[DeliveryState, str]:
    return result.state, result.reason


def _held_statement(dialect: str) -> Select[Any]:
    """Which of the deliveries bound as `ids` are still leased to `owner`; on PostgreSQL
    locked, so that no other worker takes one over before this transaction writes it."""
    d = _deliveries
    held = select(d.c.id).where(one_of(d.c.id, dialect), d.c.lease_owner == bindparam("owner"))
    return held.with_for_update() if dialect == "postgresql" else held


# Built once (those that differ, once per database).
_d, _r = _deliveries, _registrations
_NOW = bindparam("now", type_=_d.c.updated_at.type)
_PUSHED_TOKEN = and_(_r.c.id == bindparam("registration_id"), _r.c.push_token == bindparam("token"))
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
_DEACTIVATE_REGISTRATION = (
    update(_r)
    .where(_PUSHED_TOKEN)
    .values(active=False, updated_at=bindparam("now", type_=_r.c.updated_at.type))
)
_REMOVE_REGISTRATION = delete(_r).where(_PUSHED_TOKEN)
