"""A batch of ImportPasses written with a few set-based statements instead of a savepoint
and half a dozen statements a pass: the passes' rows inserted and updated, their tags
replaced, their devices registered. SQLite takes each as one executemany on the driver's
connection; PostgreSQL inserts each table's rows with one statement over arrays (unnest),
where an executemany still executes once a row.

Each pass gets exactly what PassStore.upsert_pass and
DeviceRegistrationStore.register_device would give it. A pass this path would judge
differently, or could not judge without reading more (values to check against a pass.json,
the same pass twice in a batch), makes the whole batch `OneByOne`: the caller then writes
it a pass at a time.
"""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Executable, bindparam, delete, insert, select, text, update

from passpush.domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from passpush.domain.model import ImportedPass, Pass, Platform
from passpush.domain.passkit import PASS_JSON, check_merged, check_values_platform
from passpush.domain.update_tags import next_update_tag, update_tag_at
from passpush.store.connectors.connector import ByDialect, Query, Steps, on_postgresql
from passpush.store.db import one_of
from passpush.store.models import (
    ContentFileRow,
    PassGroupTagRow,
    PassRow,
    PassTagRow,
    TemplateFileRow,
    TemplateRow,
    table_of,
)
from passpush.store.project_scope import new_id
from passpush.store.registration_writes import NewRegistration, renew_registrations

# The first step of a batch's transaction: its plans are kept (PostgreSQL). The server's
# connections plan every execution anew (db.py: a generic plan once chose a scan of every
# pending delivery), and that includes the foreign-key checks run for each inserted row: an
# import's batch ran at 12,900 passes/s planning each foreign-key check and 21,300 with them
# kept (the same statements from asyncpg alone). The statistics the server keeps fresh
# replan them as the tables grow.
_REUSE_PLANS = on_postgresql(text("SET LOCAL plan_cache_mode = auto"))
_PASSES = table_of(PassRow)
_CURRENT = select(
    PassRow.id,
    PassRow.template_id,
    PassRow.external_id,
    PassRow.serial_number,
    PassRow.authentication_token,
    PassRow.update_tag,
    PassRow.has_content,
)
_PLATFORMS = ByDialect(
    lambda d: select(TemplateRow.id, TemplateRow.platform).where(
        TemplateRow.project_id == bindparam("project_id"), one_of(TemplateRow.id, d)
    )
)
# The pass.json skeletons the batch's values go on (templates' content).
_SKELETONS = ByDialect(
    lambda d: (
        select(TemplateFileRow.template_id, ContentFileRow.data)
        .join(
            ContentFileRow,
            (ContentFileRow.project_id == TemplateFileRow.project_id)
            & (ContentFileRow.digest == TemplateFileRow.digest),
        )
        .where(
            TemplateFileRow.project_id == bindparam("project_id"),
            TemplateFileRow.name == PASS_JSON,
            one_of(TemplateFileRow.template_id, d),
        )
    )
)


def _current_by(column: str, dialect: str) -> Executable:
    """The current rows of the passes whose `column` is one of those bound as `ids`."""
    if dialect != "postgresql":
        return _CURRENT.where(
            PassRow.project_id == bindparam("project_id"),
            one_of(getattr(PassRow, column), dialect),
        )
    # A join from the array, not `= ANY(array)`: planned on a table's statistics from when it
    # was small (an import's first seconds), ANY filtered every row of the project against
    # every id, and each batch took longer than the one before. Locked: a batch written
    # beside this one waits for these rows until this one commits (see write_batch).
    return text(
        "SELECT p.id, p.template_id, p.external_id, p.serial_number, p.authentication_token,"
        " p.update_tag, p.has_content FROM unnest(CAST(:ids AS text[])) AS v(value)"
        f" JOIN passes p ON p.project_id = :project_id AND p.{column} = v.value"
        " FOR UPDATE OF p"
    )


_CURRENT_BY = {
    column: ByDialect(functools.partial(_current_by, column)) for column in ("id", "external_id")
}
_UPDATE_PASS = (
    update(_PASSES)
    .where(_PASSES.c.project_id == bindparam("b_project"), _PASSES.c.id == bindparam("b_id"))
    .values(
        external_id=bindparam("external_id"),
        serial_number=bindparam("serial_number"),
        authentication_token=bindparam("authentication_token"),
        status=bindparam("status"),
        google_object_id=bindparam("google_object_id"),
        update_tag=bindparam("update_tag"),
        updated_at=bindparam("updated_at"),
    )
)
# The same, for passes given values (apple_values): set, or cleared when given empty.
_UPDATE_PASS_VALUES = _UPDATE_PASS.values(apple_values=bindparam("apple_values"))
_INSERT_PASS = insert(_PASSES)
_INSERT_PASSES_FROM_ARRAYS = text(
    "INSERT INTO passes (project_id, id, template_id, external_id, serial_number, status,"
    " authentication_token, google_object_id, apple_values, update_tag, created_at,"
    " updated_at)"
    " SELECT :project_id, r.id, r.template_id, r.external_id, r.serial_number, r.status,"
    " r.token, r.google_object_id, CAST(r.apple_values AS json), CAST(:update_tag AS bigint),"
    " CAST(:now AS timestamp), CAST(:now AS timestamp)"
    " FROM unnest(CAST(:ids AS text[]), CAST(:template_ids AS text[]),"
    " CAST(:external_ids AS text[]), CAST(:serial_numbers AS text[]),"
    " CAST(:statuses AS text[]), CAST(:tokens AS text[]), CAST(:google_object_ids AS text[]),"
    " CAST(:apple_values AS text[]))"
    " AS r(id, template_id, external_id, serial_number, status, token, google_object_id,"
    " apple_values)"
)
_TAG_TABLES = (PassTagRow, PassGroupTagRow)
_DELETE_TAGS = {
    table: ByDialect(
        lambda d, table=table: delete(table).where(  # type: ignore[misc]
            table.project_id == bindparam("project_id"), one_of(table.pass_id, d)
        )
    )
    for table in _TAG_TABLES
}
_INSERT_TAG = {table: insert(table_of(table)) for table in _TAG_TABLES}
_INSERT_TAGS_FROM_ARRAYS = {
    table: text(
        f"INSERT INTO {table.__tablename__} (project_id, pass_id, tag) SELECT :project_id, r.*"
        " FROM unnest(CAST(:pass_ids AS text[]), CAST(:tags AS text[])) AS r"
    )
    for table in _TAG_TABLES
}
_TAGS_OF: dict[type[PassTagRow] | type[PassGroupTagRow], Callable[[Pass], Sequence[str]]] = {
    PassTagRow: lambda p: p.tags,
    PassGroupTagRow: lambda p: p.group_tags,
}


@dataclass
class BatchResult:
    created: int = 0
    updated: int = 0
    failures: list[tuple[int, DomainError]] = field(default_factory=list)


class OneByOne(Exception):
    """The batch needs the pass-at-a-time path."""


@dataclass
class _Current:
    id: str
    template_id: str
    external_id: str | None
    serial_number: str
    authentication_token: str
    update_tag: int
    has_content: bool  # its own files (SetPassContent), its own pass.json among them


def write_batch(
    project_id: str,
    batch: Sequence[ImportedPass],
    now: datetime,
    locked: Callable[[], None] = lambda: None,
) -> Steps[BatchResult]:
    """Upserts the batch's passes (checked by the caller) and registers their devices;
    raises OneByOne, before writing anything, when the batch needs the slow path.

    `locked` is called once the passes it updates are read: on PostgreSQL they are then
    locked to its commit, so that a batch started after that point and naming one of them
    (by id or external id) reads and writes it after this one, as the import's order says."""
    yield Query.write(_REUSE_PLANS, {})
    template_ids = sorted({item.pass_.template_id for item in batch})
    rows = yield Query(_PLATFORMS, {"project_id": project_id, "ids": template_ids})
    templates: dict[str, str] = {template_id: platform for template_id, platform in rows}
    found: list[_Current] = []
    for column in ("id", "external_id"):
        values = sorted({getattr(i.pass_, column) for i in batch} - {""})
        if values:
            found_rows = yield Query(_CURRENT_BY[column], {"project_id": project_id, "ids": values})
            found += [_Current(*row) for row in found_rows]
    locked()
    with_values = {i.pass_.template_id for i in batch if i.pass_.apple_values}
    skeletons: dict[str, bytes] = {}
    if with_values:
        params = {"project_id": project_id, "ids": sorted(with_values)}
        skeletons = {t: bytes(data) for t, data in (yield Query(_SKELETONS, params))}
    by_id = {row.id: row for row in found}
    by_external = {(r.template_id, r.external_id): r for r in found if r.external_id}

    result = BatchResult()
    new: list[tuple[ImportedPass, str]] = []
    changed: list[dict[str, Any]] = []
    written: list[tuple[ImportedPass, str, bool]] = []  # the item, its pass id, created
    seen: set[str] = set()
    seen_external: set[tuple[str, str]] = set()
    for item in batch:
        p = item.pass_
        try:
            current = _resolve(p, templates, by_id, by_external, bool(item.devices))
        except DomainError as error:
            result.failures.append((item.index, error))
            continue
        if p.apple_values:
            if current is not None and current.has_content:
                raise OneByOne  # its values go on its own pass.json, read a pass at a time
            misfits = _values_misfit(p, templates, skeletons)
            if misfits:
                result.failures.append((item.index, InvalidArgument(misfits)))
                continue
        pass_id = current.id if current is not None else (p.id or new_id())
        external = (p.template_id, p.external_id)
        if pass_id in seen or (current is None and p.external_id and external in seen_external):
            raise OneByOne  # the same pass twice: the second must see what the first wrote
        seen.add(pass_id)
        if p.external_id:
            seen_external.add(external)
        assert p.status is not None, "checked by the caller"
        if current is None:
            new.append((item, pass_id))
        else:
            changed.append(
                _given_values(p)
                | {
                    "b_project": project_id,
                    "b_id": pass_id,
                    "external_id": p.external_id or current.external_id,
                    "serial_number": p.serial_number or current.serial_number,
                    "authentication_token": p.authentication_token or current.authentication_token,
                    "status": p.status.value,
                    "google_object_id": p.google_object_id,
                    "update_tag": next_update_tag(current.update_tag, now),
                    "updated_at": now,
                }
            )
        written.append((item, pass_id, current is None))

    if new:
        yield ByDialect(functools.partial(_insert_passes, project_id, new, now))
    if with_plain := [c for c in changed if "apple_values" not in c]:
        yield Query.many(_UPDATE_PASS, with_plain)
    if with_given := [c for c in changed if "apple_values" in c]:
        yield Query.many(_UPDATE_PASS_VALUES, with_given)
    updated = sorted(pass_id for _, pass_id, created in written if not created)
    for table in _TAG_TABLES:
        if updated:
            yield Query.write(_DELETE_TAGS[table], {"project_id": project_id, "ids": updated})
        tags = [
            (pass_id, tag)
            for item, pass_id, _ in written
            for tag in sorted(set(_TAGS_OF[table](item.pass_)))
        ]
        if tags:
            yield ByDialect(functools.partial(_insert_tags, table, project_id, tags))
    registrations = [
        NewRegistration(project_id, pass_id, device, push_token)
        for item, pass_id, _ in written
        for device, push_token in item.devices
    ]
    if registrations:
        yield from renew_registrations(project_id, registrations, now)
    result.created = len(new)
    result.updated = len(written) - len(new)
    return result


def _insert_passes(
    project_id: str, new: Sequence[tuple[ImportedPass, str]], now: datetime, dialect: str
) -> Query:
    def token(p: Pass) -> str:
        # Devices already hold an imported pass's token; a new pass gets a random one.
        return p.authentication_token or secrets.token_urlsafe(24)

    if dialect == "postgresql":
        return Query.write(
            _INSERT_PASSES_FROM_ARRAYS,
            {
                "project_id": project_id,
                "ids": [pass_id for _, pass_id in new],
                "template_ids": [i.pass_.template_id for i, _ in new],
                "external_ids": [i.pass_.external_id or None for i, _ in new],
                "serial_numbers": [i.pass_.serial_number or pass_id for i, pass_id in new],
                "statuses": [i.pass_.status.value if i.pass_.status else "" for i, _ in new],
                "tokens": [token(i.pass_) for i, _ in new],
                "google_object_ids": [i.pass_.google_object_id for i, _ in new],
                "apple_values": [
                    json.dumps(i.pass_.apple_values.as_json()) if i.pass_.apple_values else None
                    for i, _ in new
                ],
                "update_tag": update_tag_at(now),
                "now": now.astimezone(UTC).replace(tzinfo=None),  # stored naive UTC
            },
        )
    return Query.many(
        _INSERT_PASS,
        [
            {
                "project_id": project_id,
                "id": pass_id,
                "template_id": i.pass_.template_id,
                "external_id": i.pass_.external_id or None,
                "serial_number": i.pass_.serial_number or pass_id,
                "status": i.pass_.status.value if i.pass_.status else "",
                "authentication_token": token(i.pass_),
                "google_object_id": i.pass_.google_object_id,
                "apple_values": i.pass_.apple_values.as_json() if i.pass_.apple_values else None,
                "update_tag": update_tag_at(now),
                "created_at": now,
                "updated_at": now,
                # The models' defaults: this statement is compiled with every column bound.
                "has_content": False,
                "notification_marked": False,
            }
            for i, pass_id in new
        ],
    )


def _insert_tags(
    table: type[PassTagRow] | type[PassGroupTagRow],
    project_id: str,
    tags: Sequence[tuple[str, str]],
    dialect: str,
) -> Query:
    if dialect == "postgresql":
        return Query.write(
            _INSERT_TAGS_FROM_ARRAYS[table],
            {
                "project_id": project_id,
                "pass_ids": [pass_id for pass_id, _ in tags],
                "tags": [tag for _, tag in tags],
            },
        )
    return Query.many(
        _INSERT_TAG[table],
        [{"project_id": project_id, "pass_id": pass_id, "tag": tag} for pass_id, tag in tags],
    )


def _given_values(p: Pass) -> dict[str, Any]:
    """The pass's values to store, if it gives any (unset: it keeps those it has)."""
    if p.apple_values is None:
        return {}
    return {"apple_values": p.apple_values.as_json() if p.apple_values else None}


def _values_misfit(
    p: Pass, templates: dict[str, str], skeletons: dict[str, bytes]
) -> list[FieldViolation]:
    """Why the pass's values are refused, as UpsertPass would refuse them: they are for
    Apple passes, and must fit the template's pass.json (when it has one)."""
    assert p.apple_values is not None
    if wrong_platform := check_values_platform(templates[p.template_id]):
        return wrong_platform
    skeleton = skeletons.get(p.template_id)
    return [] if skeleton is None else check_merged(skeleton, p.apple_values, "pass.apple_values")


def _resolve(
    p: Pass,
    templates: dict[str, str],
    by_id: dict[str, _Current],
    by_external: dict[tuple[str, str], _Current],
    has_devices: bool,
) -> _Current | None:
    """The pass's current row (None: a new pass), or why it is refused, as upsert_pass and
    register_device would say it."""
    platform = templates.get(p.template_id)
    if platform is None:
        raise NotFound("template", p.template_id)
    if platform == Platform.GOOGLE.value and not p.google_object_id:
        raise InvalidArgument.field(
            "pass.google_object_id", "is required for passes of Google templates"
        )
    if p.id:
        current = by_id.get(p.id)
    else:
        current = by_external.get((p.template_id, p.external_id)) if p.external_id else None
    if current is not None and current.template_id != p.template_id:
        raise InvalidArgument.field("pass.template_id", "cannot move to another template")
    renamed = p.external_id and (current is None or p.external_id != current.external_id)
    if renamed and (p.template_id, p.external_id) in by_external:
        raise AlreadyExists("pass", p.external_id)
    if has_devices and platform != Platform.APPLE.value:
        raise FailedPrecondition(
            f"the pass is of a {platform} template: devices register on Apple passes",
            reason="NOT_AN_APPLE_PASS",
        )
    return current
