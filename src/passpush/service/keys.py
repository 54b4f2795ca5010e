"""API keys: create (shown once), list, revoke, and authenticate a presented key."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.domain.auth import (
    ApiKey,
    Caller,
    new_key_material,
    parse_scopes,
    secret_matches,
    split_key,
)
from passpush.domain.errors import Unauthenticated
from passpush.domain.paging import Page, decode_token, page_of, page_size
from passpush.domain.validation import check_id, raise_if_any
from passpush.service.clock import Clock, utcnow
from passpush.store.keys import ApiKeyStore
from passpush.store.passes import PassStore


class KeyCore:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, clock: Clock = utcnow
    ) -> None:
        self._sessions = sessions
        self._clock = clock

    async def create_key(
        self,
        project_id: str,
        name: str,
        scopes: Iterable[str],
        *,
        create_project: bool = False,
    ) -> tuple[ApiKey, str]:
        """A new key and its plaintext, which is never stored and cannot be shown again.

        `create_project` is for the operator's CLI, which provisions projects.
        """
        raise_if_any(check_id("project_id", project_id))
        parsed = parse_scopes(scopes)
        material = new_key_material()
        async with self._sessions.begin() as session:
            passes = PassStore(session, project_id)
            if create_project:
                await passes.ensure_project(self._clock())
            key = await ApiKeyStore(session).create(
                project_id, name, parsed, material, self._clock()
            )
        return key, material.plaintext

    async def any_keys(self) -> bool:
        async with self._sessions() as session:
            return await ApiKeyStore(session).any_exist()

    async def list_keys(self, project_id: str, size: int, token: str) -> Page[ApiKey]:
        limit, after = page_size(size), decode_token(token)
        async with self._sessions() as session:
            keys = await ApiKeyStore(session).list(project_id, after, limit + 1)
        return page_of(keys, limit, lambda k: k.id)

    async def revoke_key(self, project_id: str, key_id: str) -> ApiKey:
        raise_if_any(check_id("id", key_id))
        async with self._sessions.begin() as session:
            return await ApiKeyStore(session).revoke(project_id, key_id, self._clock())

    async def revoke_key_as_operator(self, key_id: str) -> ApiKey:
        """For the CLI, which works on the database directly: any project's key."""
        raise_if_any(check_id("id", key_id))
        async with self._sessions.begin() as session:
            return await ApiKeyStore(session).revoke(None, key_id, self._clock())

    async def authenticate(self, presented: str) -> Caller:
        """The caller a key stands for; Unauthenticated when it is not a live key."""
        parts = split_key(presented)
        if parts is None:
            raise Unauthenticated("the API key is malformed", reason="INVALID_API_KEY")
        key_id, secret = parts
        async with self._sessions() as session:
            row = await ApiKeyStore(session).find(key_id)
        if row is None or not secret_matches(row.salt, secret, row.secret_hash):
            raise Unauthenticated("the API key is not valid", reason="INVALID_API_KEY")
        if row.revoked_at is not None:
            raise Unauthenticated("the API key was revoked", reason="API_KEY_REVOKED")
        return Caller(row.project_id, row.id, parse_scopes(row.scopes))
