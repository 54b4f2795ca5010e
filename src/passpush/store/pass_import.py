"""A batch of ImportPasses written with a few set-based statements instead of a savepoint
and half a dozen statements a pass: the passes' rows inserted and updated, their tags
replaced, their devices registered, each an executemany over the batch.

Each pass gets exactly what PassStore.upsert_pass and register_device would give it. A
pass this path would judge differently, or could not judge without reading more (values
to check against a pass.json, the same pass twice in a batch), makes the whole batch
`OneByOne`: the caller then writes it a pass at a time, as before.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Table, and_, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from passpush.domain.model import ImportedPass, Pass, Platform
from passpush.store.db import dialect_name, one_of_values
from passpush.store.direct import run_on_session
from passpush.store.models import PassGroupTagRow, PassRow, PassTagRow, TemplateRow
from passpush.store.passes import new_id, next_update_tag, update_tag_at
from passpush.store.passkit import NewRegistration, register_devices

_PASSES: Table = PassRow.__table__  # type: ignore[assignment]
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


@dataclass
class BatchResult:
    created: int = 0
    updated: int = 0
    failures: list[tuple[int, DomainError]] = field(default_factory=list)


_TagTable = type[PassTagRow] | type[PassGroupTagRow]
_TAG_TABLES: tuple[tuple[_TagTable, Callable[[Pass], Sequence[str]]], ...] = (
    (PassTagRow, lambda p: p.tags),
    (PassGroupTagRow, lambda p: p.group_tags),
)


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


async def write_batch(
    session: AsyncSession, project_id: str, batch: Sequence[ImportedPass], now: datetime
) -> BatchResult:
    """Upserts the batch's passes (checked by the caller) and registers their devices in
    `session`'s transaction; raises OneByOne when the batch needs the slow path."""
    if any(item.pass_.apple_values is not None for item in batch):
        raise OneByOne  # values are checked against each pass's pass.json
    dialect = dialect_name(session)
    templates = await _platforms(session, project_id, {i.pass_.template_id for i in batch})
    by_id, by_external = await _current_rows(session, project_id, batch, dialect)
    result = BatchResult()
    new_rows: list[dict[str, object]] = []
    changed_rows: list[dict[str, object]] = []
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
        pass_id = current.id if current is not None else (p.id or new_id())
        external = (p.template_id, p.external_id)
        if pass_id in seen or (current is None and p.external_id and external in seen_external):
            raise OneByOne  # the same pass twice: the second sees what the first wrote
        seen.add(pass_id)
        if p.external_id:
            seen_external.add(external)
        assert p.status is not None, "checked by the caller"
        if current is None:
            new_rows.append(
                {
                    "project_id": project_id,
                    "id": pass_id,
                    "template_id": p.template_id,
                    "external_id": p.external_id or None,
                    "serial_number": p.serial_number or pass_id,
                    "status": p.status.value,
                    # Devices already hold an imported pass's token; else a random one.
                    "authentication_token": p.authentication_token or secrets.token_urlsafe(24),
                    "google_object_id": p.google_object_id,
                    "update_tag": update_tag_at(now),
                    "created_at": now,
                    "updated_at": now,
                }
            )
        else:
            changed_rows.append(
                {
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
    if new_rows:
        await session.execute(insert(_PASSES), new_rows)
    if changed_rows:
        await session.execute(_UPDATE_PASS, changed_rows)
    await _replace_tags(session, project_id, written, dialect)
    registrations = [
        NewRegistration(project_id, pass_id, device, push_token)
        for item, pass_id, _ in written
        for device, push_token in item.devices
    ]
    if registrations:
        await run_on_session(session, register_devices(registrations, now, dialect))
    result.created = sum(1 for _, _, created in written if created)
    result.updated = len(written) - result.created
    return result


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


async def _platforms(session: AsyncSession, project_id: str, ids: set[str]) -> dict[str, str]:
    rows = await session.execute(
        select(TemplateRow.id, TemplateRow.platform).where(
            TemplateRow.project_id == project_id,
            one_of_values(TemplateRow.id, dialect_name(session), ids),
        )
    )
    return {template_id: platform for template_id, platform in rows}


async def _current_rows(
    session: AsyncSession, project_id: str, batch: Sequence[ImportedPass], dialect: str
) -> tuple[dict[str, _Current], dict[tuple[str, str], _Current]]:
    """The batch's passes that exist, by id and by (template, external id)."""
    columns = (
        PassRow.id,
        PassRow.template_id,
        PassRow.external_id,
        PassRow.serial_number,
        PassRow.authentication_token,
        PassRow.update_tag,
    )
    ids = {i.pass_.id for i in batch if i.pass_.id}
    externals = {i.pass_.external_id for i in batch if i.pass_.external_id}
    found: list[_Current] = []
    for column, values in ((PassRow.id, ids), (PassRow.external_id, externals)):
        if values:
            rows = await session.execute(
                select(*columns).where(
                    PassRow.project_id == project_id, one_of_values(column, dialect, values)
                )
            )
            found += [_Current(*row) for row in rows]
    by_id = {row.id: row for row in found}
    by_external = {(r.template_id, r.external_id): r for r in found if r.external_id}
    return by_id, by_external


async def _replace_tags(
    session: AsyncSession,
    project_id: str,
    written: Sequence[tuple[ImportedPass, str, bool]],
    dialect: str,
) -> None:
    updated = {pass_id for _, pass_id, created in written if not created}
    tables: tuple[
        tuple[type[PassTagRow] | type[PassGroupTagRow], Callable[[Pass], Sequence[str]]], ...
    ] = (
        (PassTagRow, lambda p: p.tags),
        (PassGroupTagRow, lambda p: p.group_tags),
    )
    for table, tags_of in tables:
        if updated:
            await session.execute(
                delete(table).where(
                    and_(
                        table.project_id == project_id,
                        one_of_values(table.pass_id, dialect, updated),
                    )
                )
            )
        rows = [
            {"project_id": project_id, "pass_id": pass_id, "tag": tag}
            for item, pass_id, _ in written
            for tag in sorted(set(tags_of(item.pass_)))
        ]
        if rows:
            await session.execute(insert(table), rows)
