"""The ledger of Google messages: what Google's 3-notifying-messages-per-24-h rule is counted on.

A delivery takes its place before it sends: it counts the pass's notifying messages of the
last 24 hours and, if there are fewer than 3, records its own as notifying, in one
transaction. On PostgreSQL that transaction holds an advisory lock on the pass, so that two
replicas sending to one pass cannot both take its third place; SQLite has one writer.
"""

from __future__ import annotations

import zlib
from datetime import datetime

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from passpush.domain.model import GOOGLE_NOTIFYING_MESSAGES_PER_WINDOW, GOOGLE_NOTIFYING_WINDOW
from passpush.store.db import dialect_name
from passpush.store.models import GoogleMessageRow, table_of

_messages = table_of(GoogleMessageRow)
# The first key of pg_advisory_xact_lock(int, int): two-key locks never meet the one-key
# lock of events.py, and this constant keeps them apart from anyone else's two-key locks.
_PASS_LOCK_SPACE = 0x67776D73


class GoogleMessageLog:
    """One per session (unit of work)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def take_place(
        self, delivery_id: int, project_id: str, pass_id: str, now: datetime
    ) -> bool:
        """Whether the delivery's message may notify (TEXT_AND_NOTIFY) or goes as TEXT.

        Decided once per delivery: a retry gets its first attempt's answer.
        """
        m = GoogleMessageRow
        decided = await self.session.scalar(select(m.notifying).where(m.delivery_id == delivery_id))
        if decided is not None:
            return decided
        if dialect_name(self.session) == "postgresql":
            await self.session.execute(
                text("SELECT pg_advisory_xact_lock(:space, :key)"),
                {"space": _PASS_LOCK_SPACE, "key": _pass_key(project_id, pass_id)},
            )
        notified = await self.session.scalar(
            select(func.count()).where(
                m.project_id == project_id,
                m.pass_id == pass_id,
                m.notifying,
                m.sent_at > now - GOOGLE_NOTIFYING_WINDOW,
            )
        )
        notifying = (notified or 0) < GOOGLE_NOTIFYING_MESSAGES_PER_WINDOW
        await self.session.execute(
            insert(_messages).values(
                delivery_id=delivery_id,
                project_id=project_id,
                pass_id=pass_id,
                notifying=notifying,
                sent_at=now,
            )
        )
        return notifying

    async def without_alert(self, delivery_id: int) -> None:
        """Google refused the delivery's notifying message: it went as TEXT after all."""
        await self.session.execute(
            update(_messages).where(_messages.c.delivery_id == delivery_id).values(notifying=False)
        )

    async def give_back(self, delivery_id: int) -> None:
        """The delivery failed: its message was never added, so it takes no place."""
        await self.session.execute(delete(_messages).where(_messages.c.delivery_id == delivery_id))

    async def purge(self, now: datetime) -> int:
        """Forgets the messages older than the window, which no count reads any more."""
        result = await self.session.execute(
            delete(_messages).where(_messages.c.sent_at <= now - GOOGLE_NOTIFYING_WINDOW)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def _pass_key(project_id: str, pass_id: str) -> int:
    """A pass as a signed 32-bit lock key (two passes may share one: they then wait in turn)."""
    key = zlib.crc32(f"{project_id}\x00{pass_id}".encode())
    return key - (1 << 32) if key >= 1 << 31 else key
