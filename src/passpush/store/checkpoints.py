"""SQLite's checkpoints, run beside the writes instead of inside them.

Under WAL a commit only appends to the -wal file (no sync, with synchronous=NORMAL). By
default the commit that takes the WAL past 1,000 pages then runs a checkpoint itself:
copies the pages into the database file and syncs both. A sync waits for the disk, and
a virtual disk under load was measured taking 28 s for one fdatasync of a 4 MB WAL
(device-pull's storm, 2026-12-02). The commit, and the server's one write connection,
waited that long: single-pass Sends took 15 to 30 s.

So the write connections never checkpoint (`wal_autocheckpoint=0`, store/db.py), and the
server runs them here, on a thread and a connection of their own. A PASSIVE checkpoint
never waits for a writer or a reader; writes go on appending while it syncs, and the
first write after a complete checkpoint starts the WAL again from its beginning, so the
file stays about as large as between two checkpoints.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.store.db import sqlite_file

log = logging.getLogger(__name__)


class WalCheckpoints:
    """Checkpoints the database's WAL every EVERY seconds while started."""

    EVERY = 0.5  # seconds; SQLite's own trigger is 1,000 pages (4 MB) of WAL
    # Less room than this on the database's disk counts as full (for readiness): a small
    # write may still fit in the WAL's frames reused after a checkpoint, a Send's not.
    MIN_FREE = 4 * 1024 * 1024

    def __init__(self, database: str) -> None:
        self._database = database
        self._connection: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="wal-checkpoints")
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._stopped = False
        self._checkpointed = asyncio.Event()  # set when the started loop's next one is done

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="WAL checkpoints")

    async def stop(self) -> None:
        """Once: the server stops this more than once (its callers may, too)."""
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # A checkpoint in progress finishes on its thread, which then closes its connection.
        self._thread.submit(self._close)
        self._thread.shutdown(wait=False)

    def check_room(self) -> None:
        """Raises ENOSPC when the database's disk has less than MIN_FREE bytes free."""
        disk = os.statvfs(os.path.dirname(os.path.abspath(self._database)))
        if disk.f_bavail * disk.f_frsize < self.MIN_FREE:
            raise OSError(errno.ENOSPC, "less than 4 MiB free on the database's disk")

    async def next_checkpoint(self) -> None:
        """Returns once the started loop has run its next checkpoint to the end."""
        await self._checkpointed.wait()

    async def checkpoint(self) -> tuple[int, int]:
        """One PASSIVE checkpoint now: the WAL's frames, and how many are in the database."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._checkpoint)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.EVERY)
            try:
                await self.checkpoint()
            except sqlite3.Error as error:
                # A full disk or a read-only file: the writes fail too, and say so.
                if not self._failing:
                    log.warning("WAL checkpoint failed (%s); trying again", error.sqlite_errorname)
                self._failing = True
                self._close()
            else:
                self._failing = False
                self._checkpointed.set()
                self._checkpointed = asyncio.Event()

    def _checkpoint(self) -> tuple[int, int]:
        if self._connection is None:
            self._connection = sqlite3.connect(
                self._database, isolation_level=None, check_same_thread=False
            )
        _busy, frames, copied = self._connection.execute(
            "PRAGMA wal_checkpoint(PASSIVE)"
        ).fetchone()
        return frames, copied

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def wal_checkpoints(engine: AsyncEngine) -> WalCheckpoints | None:
    """The checkpoints for a SQLite database file; None for any other database."""
    database = sqlite_file(engine)
    return WalCheckpoints(database) if database else None
