"""Wake-ups between replicas on PostgreSQL: LISTEN and NOTIFY on a connection of their own.

Tickets and events changing (Topic.CHANGES) are announced by the transactions that change
them (store/events.py's NOTIFY, delivered at their commit); the other topics are told here,
after the commit that made the work, over this process's listening connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from passpush.store.db import asyncpg_dsn
from passpush.store.wakeups import Handler, Topic

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0
# Every wake-up waiting, in one statement: one round trip however many there are.
_NOTIFY = "SELECT pg_notify(t, p) FROM unnest($1::text[], $2::text[]) AS w(t, p)"


class NotifyWakeUps:
    """Listens on the subscribed topics' channels, from any replica, and tells the others.

    It holds one connection; when that connection is lost it reconnects, and calls each
    handler once more (with no payload), since wake-ups sent meanwhile were missed.
    Wake-ups told while it has no connection are dropped: the loops they would wake look
    at the database now and then anyway.
    """

    def __init__(self, database_url: str) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._handlers: dict[Topic, list[Handler]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self._connection: Any = None
        self._waiting: dict[tuple[str, str], None] = {}  # told, not yet sent, in order
        self._sending: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def subscribe(self, topic: Topic, handler: Handler) -> None:
        self._handlers[topic].append(handler)

    def tell(self, topic: Topic, payload: str = "") -> None:
        if topic is Topic.CHANGES or self._connection is None:
            return  # announced by the changing transactions themselves; or no connection
        self._waiting[(topic.value, payload)] = None
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send(), name="wake other replicas")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="listen for wake-ups")

    async def stop(self) -> None:
        for task in (self._sending, self._task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _send(self) -> None:
        """Sends what is waiting, and what comes meanwhile, one statement at a time."""
        while self._waiting and self._connection is not None:
            told = list(self._waiting)
            self._waiting.clear()
            try:
                await self._connection.execute(
                    _NOTIFY, [topic for topic, _ in told], [payload for _, payload in told]
                )
            except Exception as error:  # the listener notices a lost connection
                log.debug("waking other replicas failed: %s", error)
                self._waiting.clear()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("listening for wake-ups failed (%s); reconnecting", error)
            self._connection = None
            self.listening.clear()
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _listen(self) -> None:
        connection = await asyncpg.connect(self._dsn)
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        own = connection.get_server_pid()
        try:
            for topic in self._handlers:
                await connection.add_listener(
                    topic.value,
                    lambda _c, pid, channel, payload: self._dispatch(own, pid, channel, payload),
                )
            self._connection = connection
            self.listening.set()
            for topic in self._handlers:  # whatever was told while not listening
                self._call(Topic(topic), "")
            await lost.wait()
        finally:
            self._connection = None
            await connection.close(timeout=2)

    def _dispatch(self, own: int, pid: int, channel: str, payload: str) -> None:
        # Our own wake-ups come back to us; the changes, from our other connections, do too
        # (and are wanted: they say the same as the local call, which costs nothing more).
        if pid == own:
            return
        self._call(Topic(channel), payload)

    def _call(self, topic: Topic, payload: str) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                handler(payload)
            except Exception:
                log.exception("a %s wake-up's handler failed", topic.name)
