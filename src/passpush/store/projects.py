"""Projects: every other row belongs to one."""

from __future__ import annotations

from datetime import datetime

from passpush.domain.errors import AlreadyExists
from passpush.domain.model import Project
from passpush.store.models import ProjectRow
from passpush.store.project_scope import ProjectScoped


class ProjectStore(ProjectScoped):
    """The project itself."""

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


def _project(row: ProjectRow) -> Project:
    return Project(row.id, row.display_name, row.created_at)
