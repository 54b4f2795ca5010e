"""What every repository of one project's rows has: its session and its project.

Every query of such a repository is confined to `project_id`: another project's rows are
never read, and to the repository they do not exist.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession


def new_id() -> str:
    """The id of a new resource whose caller named none."""
    return str(uuid.uuid4())


class ProjectScoped:
    """A repository of one project's rows; one per session (unit of work)."""

    def __init__(self, session: AsyncSession, project_id: str) -> None:
        self.session = session
        self.project_id = project_id

    def _key(self, resource_id: str) -> tuple[str, str]:
        """The primary key of one of this project's rows."""
        return (self.project_id, resource_id)
