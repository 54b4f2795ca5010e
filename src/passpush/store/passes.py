"""Queries for projects, templates, passes, segments, campaigns, entities and devices."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, case, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import Executable

from passpush.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from passpush.domain.model import (
    Campaign,
    DeviceRegistration,
    Entity,
    Pass,
    PassStatus,
    PassValues,
    Platform,
    Project,
    Segment,
    Template,
)
from passpush.domain.passkit import (
    PASS_JSON,
    PassContent,
    StoredFile,
)
from passpush.domain.signing import AppleSigningPem, certificate_expire_time
from passpush.domain.update_tags import next_update_tag, update_tag_at
from passpush.store.content import ContentStore
from passpush.store.db import dialect_name, one_of_values
from passpush.store.models import (
    CampaignMemberRow,
    CampaignRow,
    ContentFileRow,
    DeviceRegistrationRow,
    EntityRow,
    PassGroupTagRow,
    PassOwnFileRow,
    PassRow,
    PassTagRow,
    ProjectRow,
    SegmentRow,
    TemplateFileRow,
    TemplateRow,
)


def new_id() -> str:
    return str(uuid.uuid4())


class PassStore:
    """The pass-side repository of one project; one per session (unit of work).

    Every query is confined to `project_id`: another project's rows are never
    read, and to this store they do not exist.
    """

    def __init__(self, session: AsyncSession, project_id: str) -> None:
        self.session = session
        self.project_id = project_id

    # Projects -------------------------------------------------------------
    async def create_project(self, display_name: str, now: datetime) -> Project:
        if await self.session.get(ProjectRow, self.project_id) is not None:
            raise AlreadyExists("project", self.project_id)
        row = ProjectRow(id=self.project_id, display_name=display_name, created_at=now)
        self.session.add(row)
        await self.session.flush()
        return _project(row)

    async def ensure_project(self, now: datetime) -> None:
        if await self.session.get(ProjectRow, self.project_id) is None:
            await self.create_project(self.project_id, now)

    # Entities -------------------------------------------------------------
    async def create_entity(self, entity: Entity, now: datetime) -> Entity:
        if await self.session.get(EntityRow, self._key(entity.id)) is not None:
            raise AlreadyExists("entity", entity.id)
        row = EntityRow(project_id=self.project_id, id=entity.id, name=entity.name, created_at=now)
        self.session.add(row)
        await self.session.flush()
        return Entity(row.id, row.project_id, row.name, row.created_at)

    # Templates ------------------------------------------------------------
    async def create_template(self, template: Template, now: datetime) -> Template:
        assert template.platform is not None, "validated by the caller"
        if await self.session.get(TemplateRow, self._key(template.id)) is not None:
            raise AlreadyExists("template", template.id)
        if template.external_id and await self.session.scalar(
            select(TemplateRow.id).where(
                TemplateRow.project_id == self.project_id,
                TemplateRow.external_id == template.external_id,
            )
        ):
            raise AlreadyExists("template", template.external_id)
        if template.entity_id and (
            await self.session.get(EntityRow, self._key(template.entity_id)) is None
        ):
            raise NotFound("entity", template.entity_id)
        row = TemplateRow(
            project_id=self.project_id,
            id=template.id,
            external_id=template.external_id or None,
            platform=template.platform.value,
            display_name=template.display_name,
            pass_type_identifier=template.pass_type_identifier,
            google_class_id=template.google_class_id,
            google_object_type=template.google_object_type,
            entity_id=template.entity_id or None,
            created_at=now,
        )
        _set_signing(row, template.apple_signing)
        self.session.add(row)
        await self.session.flush()
        return _template(row)

    async def set_template_signing(
        self, template_id: str, signing: AppleSigningPem | None
    ) -> Template:
        row = await self._template_row(template_id)
        if row.platform != Platform.APPLE:
            raise FailedPrecondition(
                f"template {template_id!r} is not an Apple template", reason="NOT_AN_APPLE_TEMPLATE"
            )
        _set_signing(row, signing)
        await self.session.flush()
        return _template(row)

    async def get_template(self, template_id: str) -> Template:
        return _template(await self._template_row(template_id))

    async def _template_row(self, template_id: str) -> TemplateRow:
        row = await self.session.get(TemplateRow, self._key(template_id))
        if row is None:
            raise NotFound("template", template_id)
        return row

    async def list_templates(self, after: str, limit: int) -> Sequence[Template]:
        rows = await self.session.scalars(
            select(TemplateRow)
            .where(TemplateRow.project_id == self.project_id, TemplateRow.id > after)
            .order_by(TemplateRow.id)
            .limit(limit)
        )
        return [_template(r) for r in rows]

    # Passes ---------------------------------------------------------------
    async def upsert_pass(self, p: Pass, now: datetime) -> tuple[Pass, bool]:
        """Creates or updates a pass; returns it and whether it was created."""
        template = await self._template_row(p.template_id)
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

    # Apple pass content -----------------------------------------------------
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

    async def set_pass_content(
        self,
        pass_id: str,
        content: PassContent,
        serial_number: str,
        authentication_token: str,
        now: datetime,
    ) -> Pass:
        """Replaces the pass's own content; a new update tag tells devices it changed."""
        row = await self.session.get(PassRow, self._key(pass_id))
        if row is None:
            raise NotFound("pass", pass_id)
        own = PassOwnFileRow.project_id == self.project_id, PassOwnFileRow.pass_id == pass_id
        before = set(await self.session.scalars(select(PassOwnFileRow.digest).where(*own)))
        contents = ContentStore(self.session, self.project_id)
        stored = await contents.put(content.stored_files())
        await self.session.execute(delete(PassOwnFileRow).where(*own))
        await self.session.execute(
            insert(PassOwnFileRow),
            [
                {"project_id": self.project_id, "pass_id": pass_id, "name": n, "digest": f.digest}
                for n, f in stored.items()
            ],
        )
        await contents.drop_unreferenced(before - {f.digest for f in stored.values()})
        row.serial_number = serial_number
        if authentication_token:
            row.authentication_token = authentication_token
        row.has_content = True
        row.update_tag = next_update_tag(row.update_tag, now)
        row.updated_at = now
        await self.session.flush()
        return await self.get_pass(pass_id)

    async def set_template_content(
        self, template_id: str, content: PassContent, now: datetime
    ) -> Template:
        """Replaces the content the template's passes share; each pass gets a new update
        tag (one statement), so that devices fetch it at their next update."""
        row = await self._template_row(template_id)
        of_template = (
            TemplateFileRow.project_id == self.project_id,
            TemplateFileRow.template_id == template_id,
        )
        before = set(await self.session.scalars(select(TemplateFileRow.digest).where(*of_template)))
        contents = ContentStore(self.session, self.project_id)
        stored = await contents.put(content.stored_files())
        await self.session.execute(delete(TemplateFileRow).where(*of_template))
        await self.session.execute(
            insert(TemplateFileRow),
            [
                {
                    "project_id": self.project_id,
                    "template_id": template_id,
                    "name": name,
                    "digest": known.digest,
                }
                for name, known in stored.items()
            ],
        )
        await contents.drop_unreferenced(before - {f.digest for f in stored.values()})
        row.has_content = True
        tag = update_tag_at(now)
        await self.session.execute(
            update(PassRow)
            .where(PassRow.project_id == self.project_id, PassRow.template_id == template_id)
            .values(
                update_tag=case((PassRow.update_tag >= tag, PassRow.update_tag + 1), else_=tag),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        await self.session.flush()
        return _template(row)

    async def stored_pass_json(self, pass_id: str) -> bytes | None:
        """The pass.json the pass's values go on: its own, else its template's; None when
        it has neither."""
        pass_row = await self.session.get(PassRow, self._key(pass_id))
        if pass_row is None:
            raise NotFound("pass", pass_id)
        known = await self._content_files(pass_row)
        if PASS_JSON not in known:
            return None
        digest = known[PASS_JSON].digest
        return (await ContentStore(self.session, self.project_id).read([digest]))[digest]

    async def _content_files(self, pass_row: PassRow) -> dict[str, StoredFile]:
        """The pass's files by name, its own over its template's, without their bytes."""
        template_files = await self.session.execute(
            select(TemplateFileRow.name, TemplateFileRow.digest, ContentFileRow.sha1)
            .join(ContentFileRow, _stored(TemplateFileRow))
            .where(
                TemplateFileRow.project_id == self.project_id,
                TemplateFileRow.template_id == pass_row.template_id,
            )
        )
        files = {name: StoredFile(digest, sha1) for name, digest, sha1 in template_files}
        if pass_row.has_content:
            own_files = await self.session.execute(
                select(PassOwnFileRow.name, PassOwnFileRow.digest, ContentFileRow.sha1)
                .join(ContentFileRow, _stored(PassOwnFileRow))
                .where(
                    PassOwnFileRow.project_id == self.project_id,
                    PassOwnFileRow.pass_id == pass_row.id,
                )
            )
            files |= {name: StoredFile(digest, sha1) for name, digest, sha1 in own_files}
        return files

    async def list_passes(self, template_id: str, after: str, limit: int) -> Sequence[Pass]:
        await self._template_row(template_id)
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

    # Segments -------------------------------------------------------------
    async def create_segment(self, segment: Segment, now: datetime) -> Segment:
        if await self.session.get(SegmentRow, self._key(segment.id)) is not None:
            raise AlreadyExists("segment", segment.id)
        row = SegmentRow(
            project_id=self.project_id,
            id=segment.id,
            display_name=segment.display_name,
            criteria=segment.criteria,
            created_at=now,
        )
        self.session.add(row)
        await self.session.flush()
        return Segment(row.id, row.project_id, row.display_name, row.criteria, row.created_at)

    # Campaigns ------------------------------------------------------------
    async def create_campaign(self, campaign: Campaign, now: datetime) -> Campaign:
        if await self.session.get(CampaignRow, self._key(campaign.id)) is not None:
            raise AlreadyExists("campaign", campaign.id)
        self.session.add(
            CampaignRow(
                project_id=self.project_id,
                id=campaign.id,
                name=campaign.name,
                notification_limit=campaign.notification_limit,
                created_at=now,
            )
        )
        await self.session.flush()
        return await self.get_campaign(campaign.id)

    async def get_campaign(self, campaign_id: str) -> Campaign:
        row = await self.session.get(CampaignRow, self._key(campaign_id))
        if row is None:
            raise NotFound("campaign", campaign_id)
        members = await self.session.scalar(
            select(func.count()).where(
                CampaignMemberRow.project_id == self.project_id,
                CampaignMemberRow.campaign_id == campaign_id,
            )
        )
        return Campaign(
            row.id, row.project_id, row.name, row.notification_limit, members or 0, row.created_at
        )

    async def add_campaign_members(self, campaign_id: str, pass_ids: Sequence[str]) -> Campaign:
        await self.get_campaign(campaign_id)
        wanted = sorted(set(pass_ids))
        found = set(
            await self.session.scalars(
                select(PassRow.id).where(
                    PassRow.project_id == self.project_id,
                    one_of_values(PassRow.id, dialect_name(self.session), wanted),
                )
            )
        )
        missing = [p for p in wanted if p not in found]
        if missing:
            raise NotFound("pass", missing[0])
        if wanted:
            rows = [
                {"project_id": self.project_id, "campaign_id": campaign_id, "pass_id": p}
                for p in wanted
            ]
            await self.session.execute(self._insert_ignoring_duplicates(CampaignMemberRow), rows)
        return await self.get_campaign(campaign_id)

    def _insert_ignoring_duplicates(self, table: type[CampaignMemberRow]) -> Executable:
        if dialect_name(self.session) == "postgresql":
            return pg_insert(table).on_conflict_do_nothing()
        return sqlite_insert(table).on_conflict_do_nothing()

    # Devices --------------------------------------------------------------
    async def register_device(
        self, pass_id: str, device_library_identifier: str, push_token: str, now: datetime
    ) -> tuple[DeviceRegistration, bool]:
        """Registers (or re-registers) a device; returns it and whether it is new."""
        if await self.session.get(PassRow, self._key(pass_id)) is None:
            raise NotFound("pass", pass_id)
        row = await self.session.scalar(
            select(DeviceRegistrationRow).where(
                *self._registration(pass_id, device_library_identifier)
            )
        )
        created = row is None
        if row is None:
            row = DeviceRegistrationRow(
                project_id=self.project_id,
                pass_id=pass_id,
                device_library_identifier=device_library_identifier,
                created_at=now,
            )
            self.session.add(row)
        row.push_token = push_token
        row.active = True
        row.updated_at = now
        await self.session.flush()
        return DeviceRegistration(pass_id, device_library_identifier, row.updated_at), created

    async def unregister_device(self, pass_id: str, device_library_identifier: str) -> None:
        result = await self.session.execute(
            delete(DeviceRegistrationRow).where(
                *self._registration(pass_id, device_library_identifier)
            )
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise NotFound("device_registration", f"{pass_id}/{device_library_identifier}")

    def _registration(self, pass_id: str, device: str) -> tuple[ColumnElement[bool], ...]:
        return (
            DeviceRegistrationRow.project_id == self.project_id,
            DeviceRegistrationRow.pass_id == pass_id,
            DeviceRegistrationRow.device_library_identifier == device,
        )

    def _key(self, resource_id: str) -> tuple[str, str]:
        """The primary key of one of this project's rows."""
        return (self.project_id, resource_id)


def _stored(table: type[TemplateFileRow] | type[PassOwnFileRow]) -> ColumnElement[bool]:
    return (ContentFileRow.project_id == table.project_id) & (ContentFileRow.digest == table.digest)


def _template_of_pass() -> ColumnElement[bool]:
    return (TemplateRow.project_id == PassRow.project_id) & (TemplateRow.id == PassRow.template_id)


def _set_signing(row: TemplateRow, signing: AppleSigningPem | None) -> None:
    row.apple_certificate_pem = signing.certificate_pem if signing else None
    row.apple_private_key_pem = signing.private_key_pem if signing else None
    row.apple_wwdr_certificate_pem = signing.wwdr_certificate_pem if signing else None


def _signing(row: TemplateRow) -> AppleSigningPem | None:
    if not (row.apple_certificate_pem and row.apple_private_key_pem):
        return None
    return AppleSigningPem(
        row.apple_certificate_pem, row.apple_private_key_pem, row.apple_wwdr_certificate_pem or ""
    )


def _project(row: ProjectRow) -> Project:
    return Project(row.id, row.display_name, row.created_at)


def _template(row: TemplateRow) -> Template:
    return Template(
        id=row.id,
        project_id=row.project_id,
        platform=Platform(row.platform),
        external_id=row.external_id or "",
        display_name=row.display_name,
        pass_type_identifier=row.pass_type_identifier,
        google_class_id=row.google_class_id,
        google_object_type=row.google_object_type,
        entity_id=row.entity_id or "",
        create_time=row.created_at,
        apple_signing=(signing := _signing(row)),
        apple_signing_expire_time=(
            certificate_expire_time(signing.certificate_pem) if signing else None
        ),
    )


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
