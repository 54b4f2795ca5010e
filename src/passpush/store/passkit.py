"""Queries of the PassKit web service: a device names passes by pass type identifier and
serial number, with no project, so these look across projects (and return only what the
service needs to authenticate the device and answer it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.model import Platform
from passpush.store.db import dialect_name
from passpush.store.models import DeviceRegistrationRow, PassRow, TemplateRow

# A device holds a handful of passes of one type; more is not a device.
MAX_DEVICE_PASSES = 1000
_TEMPLATE_OF_PASS = and_(
    TemplateRow.project_id == PassRow.project_id,
    TemplateRow.id == PassRow.template_id,
    TemplateRow.platform == Platform.APPLE.value,
)


@dataclass(frozen=True)
class NamedPass:
    """An Apple pass a device named, with the token that proves the device holds it."""

    project_id: str
    pass_id: str
    authentication_token: str


@dataclass(frozen=True)
class DeviceSerial:
    """A pass a device holds, as its serials query names it."""

    serial_number: str
    update_tag: int
    project_id: str
    pass_id: str


class PassKitStore:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def passes_named(self, pass_type_identifier: str, serial_number: str) -> list[NamedPass]:
        """The Apple passes with that pass type and serial number: one, unless projects
        share a pass type (each pass's own token then tells them apart)."""
        rows = await self.session.execute(
            select(PassRow.project_id, PassRow.id, PassRow.authentication_token)
            .join(TemplateRow, _TEMPLATE_OF_PASS)
            .where(
                PassRow.serial_number == serial_number,
                TemplateRow.pass_type_identifier == pass_type_identifier,
            )
            .order_by(PassRow.project_id, PassRow.id)
            .limit(10)
        )
        return [NamedPass(project_id, pass_id, token) for project_id, pass_id, token in rows]

    async def device_serials(
        self, device_library_identifier: str, pass_type_identifier: str, since: int | None
    ) -> list[DeviceSerial]:
        """The serial numbers and update tags of the passes with content of that type the device
        is registered for, changed after the tag `since` (all of them without one)."""
        query = (
            select(PassRow.serial_number, PassRow.update_tag, PassRow.project_id, PassRow.id)
            .select_from(DeviceRegistrationRow)
            .join(
                PassRow,
                and_(
                    PassRow.project_id == DeviceRegistrationRow.project_id,
                    PassRow.id == DeviceRegistrationRow.pass_id,
                ),
            )
            .join(TemplateRow, _TEMPLATE_OF_PASS)
            .where(
                DeviceRegistrationRow.device_library_identifier == device_library_identifier,
                TemplateRow.pass_type_identifier == pass_type_identifier,
                PassRow.has_content,
            )
            .limit(MAX_DEVICE_PASSES)
        )
        if since is not None:
            query = query.where(PassRow.update_tag > since)
        return [DeviceSerial(*row) for row in await self.session.execute(query)]

    async def oldest_open_write(self) -> datetime | None:
        """When the oldest transaction now writing to the database (this one aside) began.

        A change stamps its update tag near the start of its transaction, and on PostgreSQL
        transactions commit in any order: one still open may commit a tag lower than tags
        already read. None on SQLite, whose one writer commits its tags in order.
        """
        if dialect_name(self.session) != "postgresql":
            return None
        oldest: datetime | None = await self.session.scalar(_OLDEST_OPEN_WRITE)
        return oldest


# A transaction has an xid once it wrote: the outbox's idle polls do not count.
_OLDEST_OPEN_WRITE = text(
    "SELECT min(xact_start) FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
)
