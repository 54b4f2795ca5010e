"""Device registrations: the Apple devices that asked for pushes about a pass."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, delete, select

from passpush.domain.errors import NotFound
from passpush.domain.model import DeviceRegistration
from passpush.store.models import DeviceRegistrationRow, PassRow
from passpush.store.project_scope import ProjectScoped


class DeviceRegistrationStore(ProjectScoped):
    """One project's device registrations."""

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
