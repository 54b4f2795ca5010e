"""Segments: a project's passes chosen by criteria on their tags (Airship's segments)."""

from __future__ import annotations

from datetime import datetime

from passpush.domain.errors import AlreadyExists
from passpush.domain.model import Segment
from passpush.store.models import SegmentRow
from passpush.store.project_scope import ProjectScoped


class SegmentStore(ProjectScoped):
    """One project's segments."""

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
