"""Passes: one holder's pass of a template, with its tags, group tags and values."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, delete, insert, select

from passpush.domain.errors import AlreadyExists, InvalidArgument, NotFound
from passpush.domain.model import Pass, PassStatus, PassValues, Platform
from passpush.domain.passkit import PASS_JSON
from passpush.domain.update_tags import next_update_tag, update_tag_at
from passpush.store.models import PassGroupTagRow, PassRow, PassTagRow, TemplateFileRow, TemplateRow
from passpush.store.project_scope import ProjectScoped, new_id
from passpush.store.templates import TemplateStore


class PassStore(ProjectScoped):
    """One project's passes."""

    async def upsert_pass(self, p: Pass, now: datetime) -> tuple[Pass, bool]:
        """Creates or updates a pass; returns it and whether it was created."""
        template = await TemplateStore(self.session, self.project_id).row(p.template_id)
        if template.platform == Platform.GOOGLE and not p.google_object_id:
            raise InvalidArgument.field(
                "pass.google_object_id", "is required for passes of Google templates"
            )
        row = await self._find_pass_for_upsert(p)
        if row is not None and row.template_id != template.id:
            raise InvalidArgument.field("pass.template_id", "cannot move to another template")
        if p.external_id and (row is None or p.external_id != row.external_id):
            clash = await self.session.scalar(
                select(PassRow.id).where(
                    PassRow.project_id == self.project_id,
                    PassRow.template_id == template.id,
                    PassRow.external_id == p.external_id,
                )
            )
            if clash is not None:
                raise AlreadyExists("pass", p.external_id)
        created = row is None
        if row is None:
            pass_id = p.id or new_id()
            row = PassRow(
                project_id=self.project_id,
                id=pass_id,
                template_id=template.id,
                serial_number=pass_id,
                # Devices already hold an imported pass's token; a new pass gets a random one.
                authentication_token=secrets.token_urlsafe(24),
                created_at=now,
            )
            self.session.add(row)
        row.external_id = p.external_id or row.external_id
        if p.serial_number:
            row.serial_number = p.serial_number
        if p.authentication_token:
            row.authentication_token = p.authentication_token
        assert p.status is not None, "validated by the caller"
        row.status = p.status.value
        row.google_object_id = p.google_object_id
        if p.apple_values is not None:  # unset: the pass keeps its values
            row.apple_values = p.apple_values.as_json() if p.apple_values else None
        row.update_tag = update_tag_at(now) if created else next_update_tag(row.update_tag, now)
        row.updated_at = now
        await self.session.flush()
        await self._replace_tags(PassTagRow, row.id, p.tags, created)
        await self._replace_tags(PassGroupTagRow, row.id, p.group_tags, created)
        return await self.get_pass(row.id), created

    async def _find_pass_for_upsert(self, p: Pass) -> PassRow | None:
        if p.id:
            return await self.session.get(PassRow, self._key(p.id))
        if p.external_id:
            return await self.session.scalar(
                select(PassRow).where(
                    PassRow.project_id == self.project_id,
                    PassRow.template_id == p.template_id,
                    PassRow.external_id == p.external_id,
                )
            )
        return None

    async def _replace_tags(
        self,
        table: type[PassTagRow] | type[PassGroupTagRow],
        pass_id: str,
        tags: Sequence[str],
        created: bool,
    ) -> None:
        if not created:
            await self.session.execute(
                delete(table).where(table.project_id == self.project_id, table.pass_id == pass_id)
            )
        unique = sorted(set(tags))
        if unique:
            await self.session.execute(
                insert(table),
                [{"project_id": self.project_id, "pass_id": pass_id, "tag": t} for t in unique],
            )

    async def get_pass(self, pass_id: str) -> Pass:
        """The pass with that id, else the only pass of the project with that external id
        (as a pass target resolves: PassEntry callers name passes either way)."""
        row = await self.session.get(PassRow, self._key(pass_id), populate_existing=True)
        if row is None:
            by_external_id = (
                await self.session.scalars(
                    select(PassRow)
                    .where(PassRow.project_id == self.project_id, PassRow.external_id == pass_id)
                    .limit(2)
                )
            ).all()
            row = by_external_id[0] if len(by_external_id) == 1 else None
        if row is None:
            raise NotFound("pass", pass_id)
        return (await self._with_tags([row]))[0]

    async def serial_number_taken(
        self, pass_type_identifier: str, serial_number: str, other_than: str
    ) -> bool:
        """Whether another Apple pass of the project with that pass type has the serial:
        a device names a pass by the two, so they must name one pass."""
        found = await self.session.scalar(
            select(PassRow.id)
            .join(TemplateRow, _template_of_pass())
            .where(
                PassRow.project_id == self.project_id,
                PassRow.serial_number == serial_number,
                PassRow.id != other_than,
                TemplateRow.pass_type_identifier == pass_type_identifier,
                TemplateRow.platform == Platform.APPLE.value,
            )
            .limit(1)
        )
        return found is not None

    async def list_passes(self, template_id: str, after: str, limit: int) -> Sequence[Pass]:
        await TemplateStore(self.session, self.project_id).row(template_id)
        rows = await self.session.scalars(
            select(PassRow)
            .where(
                PassRow.project_id == self.project_id,
                PassRow.template_id == template_id,
                PassRow.id > after,
            )
            .order_by(PassRow.id)
            .limit(limit)
        )
        return await self._with_tags(list(rows))

    async def _with_tags(self, rows: Sequence[PassRow]) -> list[Pass]:
        """The passes with their tags and group tags: two queries for the whole page."""
        ids = [row.id for row in rows]
        tags: dict[str, list[str]] = {pass_id: [] for pass_id in ids}
        group_tags: dict[str, list[str]] = {pass_id: [] for pass_id in ids}
        for table, found in ((PassTagRow, tags), (PassGroupTagRow, group_tags)):
            pairs = await self.session.execute(
                select(table.pass_id, table.tag).where(
                    table.project_id == self.project_id, table.pass_id.in_(ids)
                )
            )
            for pass_id, tag in pairs:
                found[pass_id].append(tag)
        with_content = set(
            await self.session.scalars(
                select(TemplateFileRow.template_id).where(
                    TemplateFileRow.project_id == self.project_id,
                    TemplateFileRow.template_id.in_(sorted({row.template_id for row in rows})),
                    TemplateFileRow.name == PASS_JSON,
                )
            )
        )
        return [
            _pass(
                row,
                tuple(sorted(tags[row.id])),
                tuple(sorted(group_tags[row.id])),
                template_has_content=row.template_id in with_content,
            )
            for row in rows
        ]


def _template_of_pass() -> ColumnElement[bool]:
    return (TemplateRow.project_id == PassRow.project_id) & (TemplateRow.id == PassRow.template_id)


def _pass(
    row: PassRow,
    tags: tuple[str, ...],
    group_tags: tuple[str, ...],
    *,
    template_has_content: bool = False,
) -> Pass:
    return Pass(
        id=row.id,
        template_id=row.template_id,
        external_id=row.external_id or "",
        serial_number=row.serial_number,
        status=PassStatus(row.status),
        tags=tags,
        group_tags=group_tags,
        google_object_id=row.google_object_id,
        notification_header=row.notification_header,
        notification_body=row.notification_body,
        notification_ticket_id=row.notification_ticket_id,
        update_tag=row.update_tag,
        create_time=row.created_at,
        update_time=row.updated_at,
        has_content=row.has_content or template_has_content,
        apple_values=PassValues.from_json(row.apple_values) if row.apple_values else None,
    )
