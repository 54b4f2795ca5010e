"""Apple pass content stored once per distinct file: content_files, keyed by the SHA-256
of the bytes, referenced by name from template_files and pass_own_files.

Shared files (a template's images, fetched for each of its passes) are read from the
database once per process: `CONTENT_CACHE` keeps recently read files, bounded in bytes.
A digest names the same bytes forever, so a cached file is never stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import delete, exists, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.lru import BytesBoundedLru
from passpush.domain.passkit import StoredFile, stored_file
from passpush.store.db import dialect_name
from passpush.store.models import ContentFileRow, PassOwnFileRow, TemplateFileRow

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024


class ContentCache(BytesBoundedLru[str, bytes]):
    """Files by digest, least recently used dropped first once over `max_bytes`. Used from
    the event loop only (no lock); the bytes are immutable and may be shared freely."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        super().__init__(max_bytes, len)


CONTENT_CACHE = ContentCache()


class ContentStore:
    """One project's stored files; one per session."""

    def __init__(
        self, session: AsyncSession, project_id: str, cache: ContentCache = CONTENT_CACHE
    ) -> None:
        self.session = session
        self.project_id = project_id
        self.cache = cache

    async def put(self, files: Mapping[str, bytes]) -> dict[str, StoredFile]:
        """Stores the files not stored yet; returns how each is known, by name."""
        known = {name: stored_file(data) for name, data in files.items()}
        by_digest = {k.digest: (k, files[name]) for name, k in known.items()}
        present = set(
            await self.session.scalars(
                select(ContentFileRow.digest).where(
                    ContentFileRow.project_id == self.project_id,
                    ContentFileRow.digest.in_(sorted(by_digest)),
                )
            )
        )
        missing = [
            {"project_id": self.project_id, "digest": d, "sha1": k.sha1, "data": data}
            for d, (k, data) in sorted(by_digest.items())
            if d not in present
        ]
        if missing:
            insert = pg_insert if dialect_name(self.session) == "postgresql" else sqlite_insert
            # Another transaction may be storing the same file: the first one's row stays.
            await self.session.execute(insert(ContentFileRow).on_conflict_do_nothing(), missing)
        return known

    async def read(self, digests: Iterable[str]) -> dict[str, bytes]:
        """The files' bytes by digest: from the cache, the rest in one query."""
        found: dict[str, bytes] = {}
        wanted = []
        for digest in set(digests):
            data = self.cache.get(digest)
            if data is None:
                wanted.append(digest)
            else:
                found[digest] = data
        if wanted:
            rows = await self.session.execute(
                select(ContentFileRow.digest, ContentFileRow.data).where(
                    ContentFileRow.project_id == self.project_id,
                    ContentFileRow.digest.in_(sorted(wanted)),
                )
            )
            for digest, data in rows:
                data = bytes(data)  # asyncpg and aiosqlite may hand out memoryviews
                self.cache.put(digest, data)
                found[digest] = data
        return found

    async def drop_unreferenced(self, digests: Iterable[str]) -> None:
        """Removes those of the files that no template or pass uses any more (once content
        is replaced). A file another transaction starts using meanwhile stays: its
        reference's foreign key makes the removal fail, and it is given up."""
        candidates = sorted(set(digests))
        if not candidates:
            return
        unused = delete(ContentFileRow).where(
            ContentFileRow.project_id == self.project_id,
            ContentFileRow.digest.in_(candidates),
            ~exists().where(
                TemplateFileRow.project_id == ContentFileRow.project_id,
                TemplateFileRow.digest == ContentFileRow.digest,
            ),
            ~exists().where(
                PassOwnFileRow.project_id == ContentFileRow.project_id,
                PassOwnFileRow.digest == ContentFileRow.digest,
            ),
        )
        try:
            async with self.session.begin_nested():
                await self.session.execute(unused)
        except IntegrityError:
            pass  # kept: in use again
