"""Carries broadcasts' fan-outs on after their Send answered, a chunk per transaction.

A Send to a broadcast commits its ticket with its first chunk of passes and answers; this
loop writes the rest, each chunk in a short transaction of its own, so that other callers'
Sends commit between chunks (on SQLite every write of the process waits for the one writer,
and a whole million-pass fan-out in one transaction held it for seconds).

It lives beside the delivery worker, started and stopped with it by the server, rather than
in a Send's call: the fan-out outlives the call that started it, a server that stops leaves
it where its cursor is, and any replica's loop picks it up again (at start, and once it has
not advanced for a while).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.domain.clock import Clock, utcnow
from passpush.outbox.fanout_chunks import FANOUT_CHUNK, continue_fan_out
from passpush.store.tickets import TicketStore

log = logging.getLogger(__name__)

# How often fan-outs left by a stopped server (or another replica) are looked for, and how
# long one must not have advanced to be taken over.
SWEEP_SECONDS = 5.0
STALLED_AFTER = timedelta(seconds=10)


class FanOut:
    """The fan-outs this process carries on, one chunk of each in turn."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utcnow,
        chunk: int = FANOUT_CHUNK,
        on_chunk: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self.chunk = chunk
        # Wakes the delivery workers and the ticket streams: a chunk's deliveries are in.
        self._on_chunk = on_chunk
        self._started: set[int] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def started(self, ticket_id: int) -> None:
        """A Send committed a broadcast whose fan-out is incomplete: carry it on."""
        self._started.add(ticket_id)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fan-out")

    async def stop(self) -> None:
        """Stops between chunks or in one (whose transaction then rolls back)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        stalled_since: timedelta | None = None  # at start: every incomplete fan-out
        while True:
            self._wake.clear()
            try:
                await self.continue_all(stalled_since)
                stalled_since = STALLED_AFTER
            except Exception:
                log.exception("fanning broadcasts out failed; trying again shortly")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SWEEP_SECONDS):
                    await self._wake.wait()

    async def continue_all(self, stalled_for: timedelta | None = None) -> None:
        """Carries on the fan-outs started here and those found incomplete (not advanced for
        `stalled_for`, if given) until all are complete, a chunk of each in turn."""
        async with self._sessions() as session:
            before = self._clock() - stalled_for if stalled_for is not None else None
            found = await TicketStore(session).fanning_out(changed_before=before)
        todo = set(found)
        failed: set[int] = set()  # tried again at the next sweep, not in this round
        while todo := (todo | self._started) - failed:
            for ticket_id in sorted(todo):
                try:
                    async with self._sessions.begin() as session:
                        done = await continue_fan_out(session, ticket_id, self._clock(), self.chunk)
                except Exception:
                    # One fan-out that fails does not hold the others up.
                    log.exception("fanning ticket %d out failed; trying again shortly", ticket_id)
                    failed.add(ticket_id)
                    todo.discard(ticket_id)
                    continue
                self._on_chunk()
                if done:
                    todo.discard(ticket_id)
                    self._started.discard(ticket_id)
                # Lets the transactions queued meanwhile take the connection before the next
                # chunk asks for it again (on SQLite this process has one).
                await asyncio.sleep(0)
