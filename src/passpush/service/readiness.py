"""Whether the server can take calls now: can the database be written?"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.store.connectors.session import run_on_session
from passpush.store.faults import write_check

log = logging.getLogger(__name__)


class DatabaseReadiness:
    """Tries a write that changes nothing every `every` seconds, and tells each change
    between writable and not to `on_change`.

    A probe rather than the outcomes of real calls: it costs the calls nothing (one tiny
    transaction a second, beside them), it sees trouble while no call comes, and it sees the
    trouble end with no call coming, as none does once a balancer has taken the server out.
    The write goes through the connection single-pass Sends use, so it meets what they meet
    (on SQLite, a connection that was opened read-only).
    """

    def __init__(
        self,
        write: Callable[[], Awaitable[None]],
        on_change: Callable[[bool], Awaitable[None]],
        *,
        every: float = 1.0,
        timeout: float = 10.0,
    ) -> None:
        self._write = write
        self._on_change = on_change
        self._every = every
        self._timeout = timeout  # a write this slow counts as one that failed
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="database readiness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        writable = True  # as the server starts
        while True:
            failure = await self._failed_write()
            if (failure is None) != writable:
                writable = failure is None
                if writable:
                    log.info("the database can be written again: serving")
                else:
                    log.error("the database cannot be written (%r): not serving", failure)
                await self._on_change(writable)
            await asyncio.sleep(self._every)

    async def _failed_write(self) -> Exception | None:
        """What a write met, or None if it went through."""
        failure: Exception | None = None
        # Twice: a connection the server ended fails once, and the one replacing it is fine.
        for _ in range(2):
            try:
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that lands
                # as the write finishes, and the probe, and stop() with it, went on forever.
                async with asyncio.timeout(self._timeout):
                    await self._write()
                return None
            except Exception as error:
                failure = error
        return failure


async def check_sessions_writable(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Writes to the database through SQLAlchemy's sessions, changing nothing: raises what
    a write would meet (the probe of a process without the API, whose writes go this way)."""
    async with sessions.begin() as session:
        await run_on_session(session, write_check())
