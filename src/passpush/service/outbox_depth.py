"""The outbox's depth (due, leased, retrying deliveries) read into a gauge every few seconds,
beside the work: never on the push path, and never at scrape time (the scrape is a thread
with no database)."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.domain.clock import Clock, utcnow
from passpush.metrics import OUTBOX, OUTBOX_EVERY_SECONDS
from passpush.outbox.depth import outbox_depth
from passpush.store.connectors.session import run_on_session
from passpush.store.faults import error_code

log = logging.getLogger(__name__)

# The read goes over every pending delivery (about 0.35 s of a reader thread per million on
# SQLite): it waits at least this many times its own duration, so that it costs at most a
# fiftieth of a core during a large broadcast.
_QUIET_FACTOR = 50


class OutboxDepth:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utcnow,
        every: float = OUTBOX_EVERY_SECONDS,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._every = every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox depth")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def refresh(self) -> None:
        async with self._sessions() as session:
            counts = await run_on_session(session, outbox_depth(self._clock()))
        for (platform, state), count in counts.items():
            OUTBOX.labels(platform, state).set(count)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.refresh()
            except Exception as error:
                log.warning("reading the outbox's depth failed (%s)", error_code(error))
            await asyncio.sleep(max(self._every, _QUIET_FACTOR * (loop.time() - started)))
