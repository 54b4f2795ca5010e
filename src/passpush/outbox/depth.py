"""The outbox's depth: how many deliveries wait, by platform and state, for a gauge."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, func, select

from passpush.domain.model import DeliveryState, Platform
from passpush.store.connectors.connector import Query, Steps
from passpush.store.models import DeliveryRow, table_of

_deliveries = table_of(DeliveryRow)
STATES = ("due", "leased", "retrying")


def outbox_depth(now: datetime) -> Steps[dict[tuple[Platform, str], int]]:
    """The pending deliveries by platform and state: "due" (to push now), "leased" (in a
    worker's hands), "retrying" (waiting for their next attempt). One read of the pending
    ones (the claim's index), for a gauge read every few seconds."""
    rows = yield Query(_DEPTH, {"now": now})
    counts = {(p, s): 0 for p in Platform for s in STATES}
    for platform, *numbers in rows:
        for state, number in zip(STATES, numbers, strict=True):
            counts[Platform(platform), state] = int(number or 0)
    return counts


def _depth_statement() -> Select[Any]:
    d = _deliveries
    now = bindparam("now", type_=d.c.next_attempt_at.type)
    leased = and_(d.c.lease_until.is_not(None), d.c.lease_until > now)
    due = and_(d.c.next_attempt_at <= now, ~leased)
    waiting = and_(d.c.next_attempt_at > now, ~leased)
    return (
        select(
            d.c.platform,
            func.sum(case((due, 1), else_=0)),
            func.sum(case((leased, 1), else_=0)),
            func.sum(case((waiting, 1), else_=0)),
        )
        .where(d.c.state == DeliveryState.PENDING.value)
        .group_by(d.c.platform)
    )


_DEPTH = _depth_statement()
