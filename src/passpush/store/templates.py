"""Templates: a pass design and its platform, with the Apple signing of its passes."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select

from passpush.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from passpush.domain.model import Platform, Template
from passpush.domain.signing import AppleSigningPem, certificate_expire_time
from passpush.store.models import EntityRow, TemplateRow
from passpush.store.project_scope import ProjectScoped


class TemplateStore(ProjectScoped):
    """One project's templates."""

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
        row = await self.row(template_id)
        if row.platform != Platform.APPLE:
            raise FailedPrecondition(
                f"template {template_id!r} is not an Apple template", reason="NOT_AN_APPLE_TEMPLATE"
            )
        _set_signing(row, signing)
        await self.session.flush()
        return _template(row)

    async def get_template(self, template_id: str) -> Template:
        return _template(await self.row(template_id))

    async def row(self, template_id: str) -> TemplateRow:
        """The template's row, for the project's other repositories; NotFound if none."""
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


def _set_signing(row: TemplateRow, signing: AppleSigningPem | None) -> None:
    row.apple_certificate_pem = signing.certificate_pem if signing else None
    row.apple_private_key_pem = signing.private_key_pem if signing else None
    row.apple_wwdr_certificate_pem = signing.wwdr_certificate_pem if signing else None
    new_package_version(row)


def new_package_version(row: TemplateRow) -> None:
    """What the template gives its passes' packages changed: processes that kept the old
    parts (store/passkit.py) read them again. Random, so that no other template, nor this
    one made again, can have had it."""
    row.package_version = secrets.token_hex(16)


def _signing(row: TemplateRow) -> AppleSigningPem | None:
    if not (row.apple_certificate_pem and row.apple_private_key_pem):
        return None
    return AppleSigningPem(
        row.apple_certificate_pem, row.apple_private_key_pem, row.apple_wwdr_certificate_pem or ""
    )


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
