"""API keys: create (shown once), list, revoke, and authenticate a presented key."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.domain.auth import (
    ApiKey,
    Caller,
    new_key_material,
    parse_scopes,
    secret_matches,
    split_key,
)
from passpush.domain.clock import Clock, utcnow
from passpush.domain.errors import Unauthenticated
from passpush.domain.paging import Page, decode_token, page_of, page_size
from passpush.domain.validation import (
    SCOPES_MAX,
    check_display_name,
    check_id,
    check_list_length,
    raise_if_any,
)
from passpush.store.keys import ApiKeyStore
from passpush.store.projects import ProjectStore

DEFAULT_CACHE_SECONDS = 5.0
_MOST_CACHED = 10_000


@dataclass(frozen=True)
class _LiveKey:
    """A key found live in the store, remembered so that calls need not read it each time."""

    caller: Caller
    salt: str
    secret_hash: str
    expires: float  # time.monotonic()


class KeyCore:
    """API keys. Live keys are remembered for `cache_seconds` after a read: a key revoked
    through this process stops at once, one revoked elsewhere (the CLI, another replica)
    within `cache_seconds`. The secret is checked against its hash on every call."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utcnow,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._live: dict[str, _LiveKey] = {}

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
        scopes = list(scopes)
        raise_if_any(
            [
                *check_id("project_id", project_id),
                *check_display_name("api_key.display_name", name),
                *check_list_length("scopes", scopes, SCOPES_MAX, "scopes"),
            ]
        )
        parsed = parse_scopes(scopes)
        material = new_key_material()
        async with self._sessions.begin() as session:
            if create_project:
                await ProjectStore(session, project_id).ensure_project(self._clock())
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
            key = await ApiKeyStore(session).revoke(project_id, key_id, self._clock())
        self._live.pop(key_id, None)
        return key

    async def revoke_key_as_operator(self, key_id: str) -> ApiKey:
        """For the CLI, which works on the database directly: any project's key."""
        raise_if_any(check_id("id", key_id))
        async with self._sessions.begin() as session:
            key = await ApiKeyStore(session).revoke(None, key_id, self._clock())
        self._live.pop(key_id, None)
        return key

    async def authenticate(self, presented: str) -> Caller:
        """The caller a key stands for; Unauthenticated when it is not a live key."""
        parts = split_key(presented)
        if parts is None:
            raise Unauthenticated("the API key is malformed", reason="INVALID_API_KEY")
        key_id, secret = parts
        live = self._live.get(key_id)
        if live is None or live.expires < time.monotonic():
            live = await self._read_live_key(key_id, secret)
        if not secret_matches(live.salt, secret, live.secret_hash):
            raise Unauthenticated("the API key is not valid", reason="INVALID_API_KEY")
        return live.caller

    async def _read_live_key(self, key_id: str, secret: str) -> _LiveKey:
        async with self._sessions() as session:
            row = await ApiKeyStore(session).find(key_id)
        if row is None or not secret_matches(row.salt, secret, row.secret_hash):
            raise Unauthenticated("the API key is not valid", reason="INVALID_API_KEY")
        if row.revoked_at is not None:
            self._live.pop(key_id, None)
            raise Unauthenticated("the API key was revoked", reason="API_KEY_REVOKED")
        caller = Caller(row.project_id, row.id, parse_scopes(row.scopes))
        live = _LiveKey(caller, row.salt, row.secret_hash, time.monotonic() + self._cache_seconds)
        if self._cache_seconds > 0:
            if len(self._live) >= _MOST_CACHED:
                self._live.clear()  # bounded memory; live keys are simply read again
            self._live[key_id] = live
        return live
