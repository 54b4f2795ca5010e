"""LISTEN on PostgreSQL for what other replicas announce (store/events.py's NOTIFY)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg  # type: ignore[import-untyped]

from passpush.store.db import asyncpg_dsn
from passpush.store.events import CHANGES_CHANNEL

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0


class ChangeListener:
    """Calls `on_change` for every announcement on the changes channel, from any replica.

    It holds one connection of its own; when that connection is lost it
    reconnects, and calls `on_change` once more, since announcements made
    meanwhile were missed.
    """

    def __init__(self, database_url: str, on_change: Callable[[], None]) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="listen for changes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("listening for changes failed (%s); reconnecting", error)
            self.listening.clear()
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _listen(self) -> None:
        connection = await asyncpg.connect(self._dsn)
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        try:
            await connection.add_listener(CHANGES_CHANNEL, lambda *_: self._on_change())
            self.listening.set()
            self._on_change()  # whatever was announced while not listening
            await lost.wait()
        finally:
            await connection.close(timeout=2)
