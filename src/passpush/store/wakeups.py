"""Wake-ups between the processes that share one database.

A process that serves the API commits work that another process carries out: a Send's
deliveries (the delivery workers push them), a broadcast's fan-out, a schedule (the
scheduler sends it); and the workers record outcomes that the API's status streams show.
Each could be found by polling the database, at the cost of a poll's interval of latency
or of queries all the time. A wake-up says it at once instead: best effort, never waited
for, and never the only way, since each loop still looks at the database now and then.

Two carriers, one per kind of database: PostgreSQL's LISTEN/NOTIFY (store/listen.py), which
reaches replicas on other machines, and for a SQLite file, which only processes on its own
machine share, a datagram to each process's Unix socket (store/wake_sockets.py).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol

from passpush.store.events import CHANGES_CHANNEL

Handler = Callable[[str], None]  # takes the wake-up's payload ("" for none)


class Topic(enum.StrEnum):
    """What a wake-up says; each value is its PostgreSQL channel."""

    DELIVERIES = "passpush_deliveries"  # deliveries are due: the delivery workers claim them
    FAN_OUT = "passpush_fan_out"  # payload: a broadcast's ticket id whose fan-out goes on
    SCHEDULES = "passpush_schedules"  # a schedule was made or changed: the scheduler looks
    CHANGES = CHANGES_CHANNEL  # tickets or events changed: the status streams read again


class WakeUps(Protocol):
    def subscribe(self, topic: Topic, handler: Handler) -> None:
        """Calls `handler` on every wake-up of `topic` from another process (before start)."""

    def tell(self, topic: Topic, payload: str = "") -> None:
        """Wakes the other processes subscribed to `topic`; never waits, never raises."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class NoWakeUps:
    """For a database no other process sees (SQLite in memory)."""

    def subscribe(self, topic: Topic, handler: Handler) -> None:
        pass

    def tell(self, topic: Topic, payload: str = "") -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
