"""Device registrations written many at once: a group of the PassKit web service's (the
devices that registered while the last group was written) and an import's.

On PostgreSQL each is one statement from arrays (an executemany, or a pipeline of
statements, executes once a row); on SQLite one execution a registration, in one
transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Insert, String, bindparam, select, text, true
from sqlalchemy.dialects import postgresql, sqlite

from passpush.store.asked_at_once import unnested
from passpush.store.connectors.connector import ByDialect, Query, Steps
from passpush.store.models import DeviceRegistrationRow


@dataclass(frozen=True)
class NewRegistration:
    """A device asking for pushes about a pass, with the token to push to."""

    project_id: str
    pass_id: str
    device_library_identifier: str
    push_token: str


def _upsert_registration(insert: Any, *, returning: bool = True) -> Insert:
    """INSERT … ON CONFLICT DO UPDATE (… RETURNING which registration, and when first
    made), in the dialect of `insert`."""
    statement = insert(DeviceRegistrationRow).values(
        project_id=bindparam("project_id"),
        pass_id=bindparam("pass_id"),
        device_library_identifier=bindparam("device"),
        push_token=bindparam("push_token"),
        active=True,
        created_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
    upsert = _renewing(statement)
    return upsert.returning(*_REGISTERED) if returning else upsert


# What an upsert returns: which registration, and when it was first made (an upsert keeps
# the first registration's created_at).
_REGISTERED = (
    DeviceRegistrationRow.project_id,
    DeviceRegistrationRow.pass_id,
    DeviceRegistrationRow.device_library_identifier,
    DeviceRegistrationRow.created_at,
)
_INSERT_OF = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
_UPSERT_REGISTRATION = ByDialect(lambda dialect: _upsert_registration(_INSERT_OF[dialect]))


def _upsert_registrations_from_arrays() -> Insert:
    """PostgreSQL: registrations given as arrays, upserted in one execution (an
    executemany, or a pipeline of statements, executes once a row)."""
    asked = unnested(project_id=String(), pass_id=String(), device=String(), push_token=String())
    now = bindparam("now", type_=DeviceRegistrationRow.created_at.type)
    rows = select(
        asked.c.project_id, asked.c.pass_id, asked.c.device, asked.c.push_token, true(), now, now
    )
    statement = postgresql.insert(DeviceRegistrationRow).from_select(
        [
            "project_id",
            "pass_id",
            "device_library_identifier",
            "push_token",
            "active",
            "created_at",
            "updated_at",
        ],
        rows,
    )
    return _renewing(statement).returning(*_REGISTERED)


def _renewing(statement: Any) -> Insert:
    """The insert, where the registration is there already, renewing it instead: its push
    token, active again (APNs may have called it gone), its update time."""
    return statement.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=["project_id", "pass_id", "device_library_identifier"],
        set_={
            "push_token": statement.excluded.push_token,
            "active": True,
            "updated_at": statement.excluded.updated_at,
        },
    )


_UPSERT_REGISTRATIONS_FROM_ARRAYS = _upsert_registrations_from_arrays()
# Without RETURNING, so that a batch is one executemany.
_RENEW_REGISTRATION = ByDialect(
    lambda dialect: _upsert_registration(_INSERT_OF[dialect], returning=False)
)


# PostgreSQL: from arrays, in one execution (an executemany executes once a row).
_RENEW_REGISTRATIONS_FROM_ARRAYS = text(
    "INSERT INTO device_registrations AS r (project_id, pass_id, device_library_identifier,"
    " push_token, active, created_at, updated_at)"
    " SELECT :project_id, v.*, true, CAST(:now AS timestamp), CAST(:now AS timestamp)"
    " FROM unnest(CAST(:pass_ids AS text[]), CAST(:devices AS text[]),"
    " CAST(:push_tokens AS text[])) AS v"
    " ON CONFLICT (project_id, pass_id, device_library_identifier) DO UPDATE"
    " SET push_token = excluded.push_token, active = true, updated_at = excluded.updated_at"
)


def renew_registrations(
    project_id: str, registrations: Sequence[NewRegistration], now: datetime
) -> Steps[None]:
    """As register_devices, for one project's registrations, at once, without telling which
    are new (the same device twice: the last push token stays)."""
    yield ByDialect(functools.partial(_renewal, project_id, registrations, now))


def _renewal(
    project_id: str, registrations: Sequence[NewRegistration], now: datetime, dialect: str
) -> Query:
    """renew_registrations' statement: PostgreSQL's from arrays, elsewhere an executemany."""
    if dialect != "postgresql":
        return Query.many(_RENEW_REGISTRATION, _registration_params(registrations, now))
    last = {(r.pass_id, r.device_library_identifier): r for r in registrations}
    return Query.write(
        _RENEW_REGISTRATIONS_FROM_ARRAYS,
        {
            "project_id": project_id,
            "pass_ids": [r.pass_id for r in last.values()],
            "devices": [r.device_library_identifier for r in last.values()],
            "push_tokens": [r.push_token for r in last.values()],
            "now": now.astimezone(UTC).replace(tzinfo=None),  # stored naive UTC
        },
    )


def _registration_params(
    registrations: Sequence[NewRegistration], now: datetime
) -> list[dict[str, Any]]:
    return [
        {
            "project_id": r.project_id,
            "pass_id": r.pass_id,
            "device": r.device_library_identifier,
            "push_token": r.push_token,
            "now": now,
        }
        for r in registrations
    ]


def register_devices(registrations: Sequence[NewRegistration], now: datetime) -> Steps[list[bool]]:
    """Registers each device for its pass (or renews its push token; a registration APNs
    had called gone is active again); for each, whether it is new (the same device twice:
    both new, or neither; the last push token stays). The passes must exist."""
    rows = yield ByDialect(functools.partial(_registering, registrations, now))
    # An upsert keeps the first registration's created_at: new ones have this one's.
    new = {(project, pass_id, device): created == now for project, pass_id, device, created in rows}
    return [new[(r.project_id, r.pass_id, r.device_library_identifier)] for r in registrations]


def _registering(registrations: Sequence[NewRegistration], now: datetime, dialect: str) -> Query:
    """register_devices' statement: PostgreSQL's from arrays, in one execution; elsewhere
    one a registration."""
    if dialect != "postgresql":
        return Query.each(_UPSERT_REGISTRATION, _registration_params(registrations, now))
    # Each registration once: PostgreSQL refuses to upsert a row twice in one statement.
    last = {(r.project_id, r.pass_id, r.device_library_identifier): r for r in registrations}
    return Query(
        _UPSERT_REGISTRATIONS_FROM_ARRAYS,
        {
            "project_id": [r.project_id for r in last.values()],
            "pass_id": [r.pass_id for r in last.values()],
            "device": [r.device_library_identifier for r in last.values()],
            "push_token": [r.push_token for r in last.values()],
            "now": now,
        },
    )
