"""Turns at SQLite's write lock for passpush's processes on one file.

SQLite lets one connection write at a time. One that finds the write lock taken by another
process waits in SQLite's busy handler, which sleeps in growing steps (1, 2, 5, ... up to
100 ms) and looks again, so it goes on sleeping after the lock is free. With the api and
the worker in two processes on one file at 500 Sends/s, 4.5% of the api's transactions
waited over 1 ms that way, and the worker's waited 54 ms at p99 (2026-12-04). So a
transaction first takes its process's turn, an exclusive `flock` on a file beside the
database: the kernel wakes the next waiter the moment the holder lets go, and lets go for a
process that ends, however it ends.

A turn only spares the sleeps: SQLite's lock still decides who writes. A writer that takes
no turn (another program) still meets the busy handler, and so does a transaction that
waited for its turn as long as its busy timeout allows (a process holding the turn that
hangs), which then goes on without it and fails, as before, if the lock stays taken.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading

log = logging.getLogger(__name__)


def turns_file(database: str) -> str:
    """The file whose lock is the turn at `database`'s write lock."""
    return os.path.abspath(database) + "-write-turns"


class WriteTurns:
    """This process's turns at one SQLite file's write lock; used by one thread at a time."""

    def __init__(self, database: str) -> None:
        self._path = turns_file(database)
        self._fd: int | None = None
        self._held = False
        self._unusable = False  # the file cannot be opened: no turns, SQLite's lock alone

    def take(self, *, within: float = 0.0) -> bool:
        """Takes the turn, waiting up to `within` seconds for it; False if another process
        still has it. True without a turn if the turns' file cannot be opened."""
        if self._fd is None:
            if self._unusable:
                return True
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as error:
                self._unusable = True
                log.warning("SQLite writes without turns: cannot open %s: %s", self._path, error)
                return True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._held = within > 0 and _Wait(self._fd).taken(within)
            return self._held
        self._held = True
        return True

    def give_back(self) -> None:
        """Gives the turn back, if this process has it (else nothing: no system call)."""
        if self._held and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._held = False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # gives the turn back with it
            self._fd = None
        self._held = False


class _Wait:
    """A wait for the turn that can be given up: a blocking `flock` has no timeout, so a
    thread of its own waits, and lets the turn go again if it comes too late (should this
    process's next transaction hold it by then, on the same open file, that one goes on as
    if it had no turn: SQLite's lock decides)."""

    def __init__(self, fd: int) -> None:
        # Its own descriptor of the same open file: the lock is the file's, and the turns'
        # own may be closed meanwhile.
        self._fd = os.dup(fd)
        self._lock = threading.Lock()
        self._given_up = False
        self._done = threading.Event()
        threading.Thread(target=self._wait, name="sqlite-write-turn", daemon=True).start()

    def taken(self, within: float) -> bool:
        self._done.wait(within)
        with self._lock:
            self._given_up = not self._done.is_set()
            return not self._given_up

    def _wait(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            with self._lock:
                if self._given_up:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._done.set()
        finally:
            os.close(self._fd)
