"""Processes take turns at SQLite's write lock: one waiting for another's transaction is
woken as it ends, rather than sleeping in SQLite's busy handler."""

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

from support import sqlite_engine_with


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with sqlite_engine_with(tmp_path / "turns.db", "CREATE TABLE t (n INTEGER)") as engine:
        yield engine


def _insert(n: int) -> Steps[None]:
    yield Query.write(text("INSERT INTO t (n) VALUES (:n)"), {"n": n})


_HOLDER = """
import fcntl, os, sqlite3, sys
from passpush.store.connectors.sqlite_write_turns import turns_file
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


async def test_it_waits_for_another_process_in_turn_not_in_the_busy_handler(
    engine: AsyncEngine,
) -> None:
    """Another passpush process writing: the transaction waits for its turn, woken when the
    other's ends, rather than in SQLite's busy handler, which sleeps in growing steps (up to
    100 ms at a time) and gives up after its timeout: 0.2 s here, while the other process
    holds the lock for a second."""
    database = str(engine.url.database)
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLDER,
        database,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    transactions = SqliteConnector(engine, database, busy_timeout=0.2)
    try:
        assert await holder.stdout.readline() == b"holding\n"
        waiting = asyncio.create_task(transactions.run(lambda: _insert(2)))
        await asyncio.sleep(1.0)  # the other holds the lock for five busy timeouts
        holder.stdin.write(b"go\n")
        await holder.stdin.drain()
        async with asyncio.timeout(10):
            await waiting  # in the busy handler it would have failed: "database is locked"
        assert await holder.stdout.readline() == b"released\n"
    finally:
        transactions.close()
        if holder.returncode is None:
            holder.kill()
        await holder.wait()
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,)]
