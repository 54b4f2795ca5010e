"""Entities: the businesses a project's templates belong to (PassEntry's wallet messaging)."""

from __future__ import annotations

from datetime import datetime

from passpush.domain.errors import AlreadyExists
from passpush.domain.model import Entity
from passpush.store.models import EntityRow
from passpush.store.project_scope import ProjectScoped


class EntityStore(ProjectScoped):
    """One project's entities."""

    async def create_entity(self, entity: Entity, now: datetime) -> Entity:
        if await self.session.get(EntityRow, self._key(entity.id)) is not None:
            raise AlreadyExists("entity", entity.id)
        row = EntityRow(project_id=self.project_id, id=entity.id, name=entity.name, created_at=now)
        self.session.add(row)
        await self.session.flush()
        return Entity(row.id, row.project_id, row.name, row.created_at)
