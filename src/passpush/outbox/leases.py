"""Leases: a worker keeps the deliveries it holds from being claimed again, and hands them
back when it stops (or, on SQLite at start, every lease a crashed run left)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, update

from passpush.domain.model import DeliveryState
from passpush.store.connectors.connector import ByDialect, Query, Steps
from passpush.store.db import one_of
from passpush.store.models import DeliveryRow, table_of

_deliveries = table_of(DeliveryRow)


def renew_leases(owner: str, delivery_ids: Sequence[int], lease_until: datetime) -> Steps[None]:
    """Extends `owner`'s leases of the deliveries it still holds until `lease_until`: they
    wait their turn in its hands, and must not be claimed again meanwhile."""
    for start in range(0, len(delivery_ids), _RENEWAL_CHUNK):
        chunk = list(delivery_ids[start : start + _RENEWAL_CHUNK])
        params = {"ids": chunk, "owner": owner, "lease_until": lease_until}
        yield Query.write(_RENEW, params)


def release_leases(owner: str | None = None) -> Steps[int]:
    """Hands back leased, unfinished deliveries (all of them when owner is None); returns
    how many."""
    if owner is None:
        released = yield Query(_RELEASE_ALL)
    else:
        released = yield Query(_RELEASE_OWNED, {"owner": owner})
    return len(released)


# Ids per statement: SQLite's expanding IN takes one parameter per id (at most 32,766).
_RENEWAL_CHUNK = 5000

_d = _deliveries
_RENEW = ByDialect(
    lambda dialect: (
        update(_d)
        .where(one_of(_d.c.id, dialect), _d.c.lease_owner == bindparam("owner"))
        .values(lease_until=bindparam("lease_until", type_=_d.c.lease_until.type))
    )
)
_RELEASE = update(_d).values(lease_owner=None, lease_until=None).returning(_d.c.id)
_UNFINISHED = _d.c.state == DeliveryState.PENDING.value
_RELEASE_ALL = _RELEASE.where(_d.c.lease_owner.is_not(None), _UNFINISHED)
_RELEASE_OWNED = _RELEASE.where(_d.c.lease_owner == bindparam("owner"), _UNFINISHED)
