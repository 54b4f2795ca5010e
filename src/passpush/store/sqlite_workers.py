"""Which processes run a delivery worker (and a scheduler) on one SQLite file.

A worker that died left its leases and its scheduler's claims behind; they expire (a lease
after a minute), or, when no other worker runs on the file, a worker starting may hand them
back at once, as the previous run was surely the one that took them. Whether any other runs
is told by a lock file beside the database: each worker holds a shared lock on it while it
runs (the system drops it when the process ends, however it ends), and a worker starting
that gets the lock alone, exclusively, knows it is the only one.
"""

from __future__ import annotations

import asyncio
import fcntl
import os


class SqliteWorkers:
    """This process's place among the workers on one SQLite file."""

    def __init__(self, database: str) -> None:
        self._path = os.path.abspath(database) + "-workers"
        self._fd: int | None = None

    async def join(self) -> bool:
        """Takes this process's place; True when no other worker runs on the file."""
        self._fd = fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Another worker: its place is shared (waiting, if one is starting, for its look).
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_SH)
            return False
        return True

    def share(self) -> None:
        """After the hand-back: the place becomes one other workers may share."""
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def leave(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
