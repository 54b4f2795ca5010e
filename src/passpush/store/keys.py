"""API keys: stored by id with a salted hash of their secret."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.auth import ApiKey, KeyMaterial, Scope
from passpush.domain.errors import NotFound
from passpush.store.models import ApiKeyRow


class ApiKeyStore:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(
        self,
        project_id: str,
        name: str,
        scopes: frozenset[Scope],
        material: KeyMaterial,
        now: datetime,
    ) -> ApiKey:
        row = ApiKeyRow(
            id=material.key_id,
            project_id=project_id,
            name=name,
            scopes=sorted(scopes),
            salt=material.salt,
            secret_hash=material.secret_hash,
            created_at=now,
        )
        self.session.add(row)
        await self.session.flush()
        return _api_key(row)

    async def find(self, key_id: str) -> ApiKeyRow | None:
        return await self.session.get(ApiKeyRow, key_id)

    async def any_exist(self) -> bool:
        return await self.session.scalar(select(ApiKeyRow.id).limit(1)) is not None

    async def list(self, project_id: str, after: str, limit: int) -> Sequence[ApiKey]:
        rows = await self.session.scalars(
            select(ApiKeyRow)
            .where(ApiKeyRow.project_id == project_id, ApiKeyRow.id > after)
            .order_by(ApiKeyRow.id)
            .limit(limit)
        )
        return [_api_key(r) for r in rows]

    async def revoke(self, project_id: str | None, key_id: str, now: datetime) -> ApiKey:
        """Revokes a key of `project_id` (of any project for the operator: None)."""
        row = await self.session.get(ApiKeyRow, key_id)
        if row is None or project_id not in (None, row.project_id):
            raise NotFound("api_key", key_id)
        row.revoked_at = row.revoked_at or now
        await self.session.flush()
        return _api_key(row)


def _api_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        scopes=frozenset(Scope(s) for s in row.scopes),
        create_time=row.created_at,
        revoke_time=row.revoked_at,
    )
