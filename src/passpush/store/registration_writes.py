"""Device registrations written many at once: a group of the PassKit web service's (the
devices that registered while the last group was written) and an import's.

On PostgreSQL each is one statement from arrays (an executemany, or a pipeline of
statements, executes once a row), and the web service's checks the devices' tokens in that
same statement; on SQLite one execution a registration, in one transaction.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, Select, String, and_, bindparam, func, select, true
from sqlalchemy.dialects import postgresql, sqlite

from passpush.store.asked_at_once import each_asked, unnested
from passpush.store.connectors.connector import ByDialect, Query, Steps
from passpush.store.models import DeviceRegistrationRow, PassRow
from passpush.store.passkit import apple_passes_named


@dataclass(frozen=True)
class NewRegistration:
    """A device asking for pushes about a pass, with the token to push to."""

    project_id: str
    pass_id: str
    device_library_identifier: str
    push_token: str


@dataclass(frozen=True)
class HeldRegistration:
    """A device asking for pushes about a pass it names as Apple does (pass type and serial
    number), with the pass's authentication token to prove it holds the pass."""

    pass_type_identifier: str
    serial_number: str
    authentication_token: str
    device_library_identifier: str
    push_token: str


@dataclass(frozen=True)
class Registered:
    """Which pass a registration went to, and whether it is new."""

    project_id: str
    pass_id: str
    new: bool


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
    return _upserted(
        select(asked.c.project_id, asked.c.pass_id, asked.c.device, asked.c.push_token)
    )


def _upserted(rows: Select[Any], *, returning: bool = True) -> Insert:
    """PostgreSQL: the registrations `rows` give (project_id, pass_id, device, push_token),
    upserted at the bound time `now` (RETURNING which registration and when first made)."""
    now = bindparam("now", type_=DeviceRegistrationRow.created_at.type)
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
        rows.add_columns(true(), now, now),
    )
    upsert = _renewing(statement)
    return upsert.returning(*_REGISTERED) if returning else upsert


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


def _renew_registrations_from_arrays() -> Insert:
    """PostgreSQL: one project's registrations given as arrays, upserted in one execution
    (an executemany executes once a row), nothing returned."""
    asked = unnested(pass_id=String(), device=String(), push_token=String())
    project_id = bindparam("project_id", type_=String())
    return _upserted(
        select(project_id, asked.c.pass_id, asked.c.device, asked.c.push_token), returning=False
    )


_RENEW_REGISTRATIONS_FROM_ARRAYS = _renew_registrations_from_arrays()


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
            "pass_id": [r.pass_id for r in last.values()],
            "device": [r.device_library_identifier for r in last.values()],
            "push_token": [r.push_token for r in last.values()],
            "now": now,
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
    the first is the new one, the last push token stays). The passes must exist."""
    rows = yield ByDialect(functools.partial(_registering, registrations, now))
    # An upsert keeps the first registration's created_at: new ones have this one's.
    new = {(project, pass_id, device): created == now for project, pass_id, device, created in rows}
    answers = []
    for r in registrations:
        key = (r.project_id, r.pass_id, r.device_library_identifier)
        answers.append(new[key])
        new[key] = False  # the same device again in this group
    return answers


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


def _register_holders() -> Select[Any]:
    """PostgreSQL: the devices' registrations, each written only for the pass it names
    whose token the device gave (the first by project and id, when projects share a pass
    type), in one statement; each row the question's number, its pass, and whether its
    registration is new. Tokens are compared as MD5 digests, so that how long a
    comparison takes tells nothing about the token. The same device twice: its last push
    token is written (PostgreSQL refuses to upsert a row twice in one statement)."""
    asked = unnested(
        pass_type=String(),
        serial=String(),
        token_digest=String(),
        device=String(),
        push_token=String(),
    )
    held_pass = apple_passes_named(
        select(PassRow.project_id, PassRow.id.label("pass_id")), asked.c.pass_type, asked.c.serial
    ).where(func.md5(PassRow.authentication_token) == asked.c.token_digest)
    held = (
        each_asked(asked, held_pass.limit(1))
        .add_columns(asked.c.device, asked.c.push_token)
        .cte("held")
    )
    key = (held.c.project_id, held.c.pass_id, held.c.device)
    written = _upserted(
        select(*key, held.c.push_token)
        .ext(postgresql.distinct_on(*key))
        .order_by(*key, held.c.question.desc())
    ).cte("written")
    # An upsert keeps the first registration's created_at: new ones have this one's.
    new = written.c.created_at == bindparam("now", type_=DeviceRegistrationRow.created_at.type)
    return select(held.c.question, held.c.project_id, held.c.pass_id, new).join_from(
        held,
        written,
        and_(
            written.c.project_id == held.c.project_id,
            written.c.pass_id == held.c.pass_id,
            written.c.device_library_identifier == held.c.device,
        ),
    )


_REGISTER_HOLDERS = _register_holders()


def register_holders(
    asked: Sequence[HeldRegistration], now: datetime
) -> Steps[list[Registered | None]]:
    """PostgreSQL: register_devices for devices that name their pass as Apple does, each
    only if it gave that pass's token (None: no such pass, or not its token), in one
    statement. The same device twice: the first is the new one."""
    rows = yield Query(
        _REGISTER_HOLDERS,
        {
            "pass_type": [a.pass_type_identifier for a in asked],
            "serial": [a.serial_number for a in asked],
            "token_digest": [_digest(a.authentication_token) for a in asked],
            "device": [a.device_library_identifier for a in asked],
            "push_token": [a.push_token for a in asked],
            "now": now,
        },
    )
    found = {question: (project_id, pass_id, new) for question, project_id, pass_id, new in rows}
    answers: list[Registered | None] = []
    seen: set[tuple[str, str, str]] = set()
    for question, a in enumerate(asked, start=1):
        if question not in found:
            answers.append(None)
            continue
        project_id, pass_id, new = found[question]
        key = (project_id, pass_id, a.device_library_identifier)
        answers.append(Registered(project_id, pass_id, new and key not in seen))
        seen.add(key)  # the same device again in this group is not new
    return answers


def _digest(token: str) -> str:
    return hashlib.md5(token.encode(), usedforsecurity=False).hexdigest()
