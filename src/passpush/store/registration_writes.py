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
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Insert, String, bindparam, select, text, true
from sqlalchemy.dialects import postgresql, sqlite

from passpush.domain.model import Platform
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


# PostgreSQL: the devices' registrations, each written only for the pass it names whose
# token the device gave (the first by project and id, when projects share a pass type), in
# one statement; each row the question's number, its pass, and whether it is new. Tokens
# are compared as MD5 digests, so that how long a comparison takes tells nothing about the
# token. The same device twice: its last push token is written (PostgreSQL refuses to upsert
# a row twice in one statement).
_REGISTER_HOLDERS = text(
    "WITH asked AS ("
    " SELECT * FROM unnest(CAST(:pass_types AS text[]), CAST(:serials AS text[]),"
    " CAST(:token_digests AS text[]), CAST(:devices AS text[]), CAST(:push_tokens AS text[]))"
    " WITH ORDINALITY AS a (pass_type, serial, token_digest, device, push_token, question)),"
    " held AS ("
    " SELECT asked.question, asked.device, asked.push_token, named.project_id, named.pass_id"
    " FROM asked CROSS JOIN LATERAL ("
    " SELECT p.project_id, p.id AS pass_id FROM passes AS p JOIN templates AS t"
    " ON t.project_id = p.project_id AND t.id = p.template_id AND t.platform = :apple"
    " WHERE p.serial_number = asked.serial AND t.pass_type_identifier = asked.pass_type"
    " AND md5(p.authentication_token) = asked.token_digest"
    " ORDER BY p.project_id, p.id LIMIT 1) AS named),"
    " written AS ("
    " INSERT INTO device_registrations AS r (project_id, pass_id, device_library_identifier,"
    " push_token, active, created_at, updated_at)"
    " SELECT DISTINCT ON (project_id, pass_id, device) project_id, pass_id, device,"
    " push_token, true, CAST(:now AS timestamp), CAST(:now AS timestamp) FROM held"
    " ORDER BY project_id, pass_id, device, question DESC"
    " ON CONFLICT (project_id, pass_id, device_library_identifier) DO UPDATE"
    " SET push_token = excluded.push_token, active = true, updated_at = excluded.updated_at"
    " RETURNING project_id, pass_id, device_library_identifier,"
    " created_at = CAST(:now AS timestamp) AS new)"
    " SELECT held.question, held.project_id, held.pass_id, written.new FROM held"
    " JOIN written ON written.project_id = held.project_id AND written.pass_id = held.pass_id"
    " AND written.device_library_identifier = held.device"
)


def register_holders(
    asked: Sequence[HeldRegistration], now: datetime
) -> Steps[list[Registered | None]]:
    """PostgreSQL: register_devices for devices that name their pass as Apple does, each
    only if it gave that pass's token (None: no such pass, or not its token), in one
    statement. The same device twice: the first is the new one."""
    rows = yield Query(
        _REGISTER_HOLDERS,
        {
            "pass_types": [a.pass_type_identifier for a in asked],
            "serials": [a.serial_number for a in asked],
            "token_digests": [_digest(a.authentication_token) for a in asked],
            "devices": [a.device_library_identifier for a in asked],
            "push_tokens": [a.push_token for a in asked],
            "apple": Platform.APPLE.value,
            "now": now.astimezone(UTC).replace(tzinfo=None),  # stored naive UTC
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
