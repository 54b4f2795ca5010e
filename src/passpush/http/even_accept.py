"""The HTTP processes take their connections in turn, from one listening socket.

Left to the kernel, connections are not spread by the work they bring: on one shared
socket the first process to wake took every connection waiting, and hashed over a socket
each (SO_REUSEPORT), a few long-lived connections (a load balancer's, a load client's 16)
split unevenly: 11 to 5 in one device-pull run, where the process holding 11 set the pace
and the other core idled through the last third. So each process counts its open
connections in memory they all share, and takes a waiting connection only while it holds
no more than any other; the others leave it, and look again shortly. A process that is
busy, stuck or gone strands nothing: a connection left waiting for MAX_WAIT is taken by
whichever process looks next.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import select
import socket
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

RECHECK = 0.002  # seconds before a process that left a connection looks again
MAX_WAIT = 0.25  # seconds a connection is left for a process with fewer, at most
_PAUSE_WHEN_OUT_OF_FILES = 1.0  # seconds, as asyncio's own servers pause
_VACANT = 2**62  # the count of a slot whose process is gone: nobody waits for it
_SLOT = 8  # bytes: a signed 64-bit count


class ConnectionCounts:
    """Each HTTP process's open connections, a slot each, in a memory file (memfd) that
    the parent makes and hands down to every child by its descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._memory = mmap.mmap(fd, os.fstat(fd).st_size)
        self._counts = memoryview(self._memory).cast("q")

    @classmethod
    def create(cls, slots: int) -> ConnectionCounts:
        fd = os.memfd_create("passpush-http-connections")
        os.ftruncate(fd, slots * _SLOT)  # zeros: no process holds any yet
        return cls(fd)

    def set(self, slot: int, count: int) -> None:
        self._counts[slot] = count

    def vacate(self, slot: int) -> None:
        """Its process is gone: the others stop leaving connections to it."""
        self._counts[slot] = _VACANT

    def fewest(self, slot: int) -> bool:
        """Whether `slot` holds no more connections than any other."""
        return self._counts[slot] <= min(self._counts)

    def close(self) -> None:
        self._counts.release()
        self._memory.close()
        os.close(self.fd)


class EvenAcceptor:
    """Accepts connections on `listener` (shared with the other HTTP processes) while this
    process, `slot` in `counts`, holds no more than any other, and hands each to `serve`.

    `held()` is how many connections this process has open (being served)."""

    def __init__(
        self,
        listener: socket.socket,
        counts: ConnectionCounts,
        slot: int,
        held: Callable[[], int],
        serve: Callable[[socket.socket], Awaitable[object]],
    ) -> None:
        self._listener = listener
        self._fd = listener.fileno()
        self._counts = counts
        self._slot = slot
        self._held = held
        self._serve = serve
        self._starting: set[asyncio.Task[None]] = set()  # accepted, not yet held (TLS)
        self._left_since: float | None = None  # a connection left for the others since
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def start(self) -> None:
        self._listener.setblocking(False)
        self._counts.set(self._slot, self._holding())
        self._loop.add_reader(self._fd, self._take_one)

    def close(self) -> None:
        """Stops accepting; the connections being set up are dropped."""
        self._loop.remove_reader(self._fd)
        if self._timer is not None:
            self._timer.cancel()
        for task in self._starting:
            task.cancel()

    def _holding(self) -> int:
        return self._held() + len(self._starting)

    def _take_one(self) -> None:
        holding = self._holding()
        self._counts.set(self._slot, holding)
        if not self._counts.fewest(self._slot) and not self._left_too_long():
            self._pause(RECHECK)
            return
        self._left_since = None
        try:
            connection, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return  # another process took it
        except OSError as error:  # out of descriptors or memory: as asyncio's servers do
            log.error("the HTTP server cannot accept a connection: %s", error)
            self._pause(_PAUSE_WHEN_OUT_OF_FILES)
            return
        self._counts.set(self._slot, holding + 1)
        task = self._loop.create_task(self._start_serving(connection))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    def _left_too_long(self) -> bool:
        now = time.monotonic()
        if self._left_since is None:
            self._left_since = now
        return now - self._left_since >= MAX_WAIT

    def _pause(self, seconds: float) -> None:
        self._loop.remove_reader(self._fd)
        self._timer = self._loop.call_later(seconds, self._look_again)

    def _look_again(self) -> None:
        self._timer = None
        if not _waiting(self._fd):
            self._left_since = None  # another process took what was left
        self._loop.add_reader(self._fd, self._take_one)

    async def _start_serving(self, connection: socket.socket) -> None:
        connection.setblocking(False)
        try:
            await self._serve(connection)
        except (OSError, asyncio.CancelledError):  # the TLS handshake failed, or stopping
            connection.close()


def _waiting(fd: int) -> bool:
    """Whether a connection waits on the listening socket `fd`."""
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)
