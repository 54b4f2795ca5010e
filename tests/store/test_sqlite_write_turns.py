"""Processes take turns at SQLite's write lock: one waiting for another's transaction is
woken as it ends, rather than sleeping in SQLite's busy handler; and a process that holds
its turn and hangs costs the others their busy timeout, as before, not a wait for ever."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.store.connectors.connector import Query, Steps
from passpush.store.connectors.sqlite import SqliteConnector
from passpush.store.db import make_engine
from passpush.store.sqlite_write_turns import WriteTurns, turns_file

from support import sqlite_engine_with

# Another process: takes the turn and SQLite's write lock, says "holding", and lets both
# go when it reads a line.
_HOLDER = """
import fcntl, os, sqlite3, sys
from passpush.store.sqlite_write_turns import turns_file
database = sys.argv[1]
turns = os.open(turns_file(database), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(turns, fcntl.LOCK_EX)
connection = sqlite3.connect(database, isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
connection.execute("INSERT INTO t (n) VALUES (1)")
print("holding", flush=True)
sys.stdin.readline()
connection.execute("COMMIT")
fcntl.flock(turns, fcntl.LOCK_UN)
print("released", flush=True)
"""


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with sqlite_engine_with(tmp_path / "turns.db", "CREATE TABLE t (n INTEGER)") as engine:
        yield engine


class _Holder:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    async def release(self) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(b"go\n")
        await self._process.stdin.drain()
        assert await self._process.stdout.readline() == b"released\n"


@pytest.fixture
async def holder(engine: AsyncEngine) -> AsyncIterator[_Holder]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLDER,
        str(engine.url.database),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert await process.stdout.readline() == b"holding\n"
        yield _Holder(process)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def _insert(n: int) -> Steps[None]:
    yield Query.write(text("INSERT INTO t (n) VALUES (:n)"), {"n": n})


def _rows(engine: AsyncEngine) -> list[int]:
    with sqlite3.connect(str(engine.url.database)) as connection:
        return [n for (n,) in connection.execute("SELECT n FROM t ORDER BY n")]


async def test_it_waits_for_another_process_in_turn_not_in_the_busy_handler(
    engine: AsyncEngine, holder: _Holder
) -> None:
    """SQLite's busy handler gives up after its timeout: 0.2 s here, while the other process
    holds the lock for a second. Waiting for the turn (up to 30 s), the transaction is woken
    as the other lets go; it would otherwise have failed ("database is locked")."""
    transactions = SqliteConnector(
        engine, str(engine.url.database), busy_timeout=0.2, turn_timeout=30.0
    )
    try:
        waiting = asyncio.create_task(transactions.run(lambda: _insert(2)))
        await asyncio.sleep(1.0)  # the other holds the lock for five busy timeouts
        await holder.release()
        async with asyncio.timeout(10):
            await waiting
    finally:
        transactions.close()
    assert _rows(engine) == [1, 2]


async def test_the_engines_own_transactions_take_turns_too(
    engine: AsyncEngine, holder: _Holder
) -> None:
    """The process's SQLAlchemy transactions (the scheduler's, a broadcast's chunks) wait for
    their turn as the direct ones do."""
    sessions = make_engine(str(engine.url), busy_timeout=0.2, turn_timeout=30.0)
    try:

        async def insert() -> None:
            async with sessions.begin() as connection:
                await connection.execute(text("INSERT INTO t (n) VALUES (2)"))

        waiting = asyncio.create_task(insert())
        await asyncio.sleep(1.0)  # the other holds the lock for five busy timeouts
        await holder.release()
        async with asyncio.timeout(10):
            await waiting
    finally:
        await sessions.dispose()
    assert _rows(engine) == [1, 2]


async def test_a_process_that_hangs_in_its_turn_costs_the_busy_timeout(
    engine: AsyncEngine, holder: _Holder
) -> None:
    """The other process never lets go (it hangs): the transaction fails as it did before
    turns, once it has waited for the turn and then for the lock (0.2 s each here)."""
    transactions = SqliteConnector(
        engine, str(engine.url.database), busy_timeout=0.2, turn_timeout=0.2
    )
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            async with asyncio.timeout(10):
                await transactions.run(lambda: _insert(2))
    finally:
        transactions.close()
    await holder.release()
    assert _rows(engine) == [1]


async def test_a_turn_that_comes_too_late_is_let_go(engine: AsyncEngine, holder: _Holder) -> None:
    """A wait given up goes on in its thread: when the turn comes, that thread lets it go
    for the next process, rather than keeping it for a transaction that went on without."""
    database = str(engine.url.database)
    late, other = WriteTurns(database), WriteTurns(database)  # two open files: two "processes"
    try:
        assert not await asyncio.to_thread(late.take, within=0.1)
        await holder.release()
        assert await asyncio.to_thread(other.take, within=10.0)
    finally:
        late.close()
        other.close()


async def test_without_its_file_it_writes_without_turns(tmp_path: Path) -> None:
    """A turns' file that cannot be opened (here a directory stands in its way; elsewhere,
    one another user made) leaves SQLite's lock alone to decide, as before turns."""
    database = tmp_path / "alone.db"
    await asyncio.to_thread(Path(turns_file(str(database))).mkdir)
    async with sqlite_engine_with(database, "CREATE TABLE t (n INTEGER)") as engine:
        transactions = SqliteConnector(engine, str(database))
        try:
            await transactions.run(lambda: _insert(1))
        finally:
            transactions.close()
        assert _rows(engine) == [1]
