"""Campaigns: a named set of passes with a cap on its notifications (WalletWerk's)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.expression import Executable

from passpush.domain.errors import AlreadyExists, NotFound
from passpush.domain.model import Campaign
from passpush.store.db import dialect_name, one_of_values
from passpush.store.models import CampaignMemberRow, CampaignRow, PassRow
from passpush.store.project_scope import ProjectScoped


class CampaignStore(ProjectScoped):
    """One project's campaigns and their members."""

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
