"""The SQLite engine's one write connection, handed back to its pool.

The pool's default reset rolls the connection back on every return, through aiosqlite's
thread: about 170 µs of CPU, paid by every direct transaction (the connector checks the
connection out only to keep the process's other writers away, and begins nothing on it).
The engine rolls back only a connection that is in a transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from support import sqlite_engine_with


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with sqlite_engine_with(tmp_path / "pool.db", "CREATE TABLE t (n INTEGER)") as engine:
        yield engine


@pytest.fixture
def rollbacks(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """Every rollback aiosqlite is asked for (each a round trip to its thread)."""
    calls: list[None] = []
    rollback = aiosqlite.Connection.rollback

    async def counted(self: aiosqlite.Connection) -> None:
        calls.append(None)
        await rollback(self)

    monkeypatch.setattr(aiosqlite.Connection, "rollback", counted)
    return calls


async def test_a_connection_that_began_nothing_is_not_rolled_back(
    engine: AsyncEngine, rollbacks: list[None]
) -> None:
    for _ in range(3):
        async with engine.connect():
            pass
    assert rollbacks == []


async def test_a_connection_left_in_a_transaction_is_rolled_back(
    engine: AsyncEngine, rollbacks: list[None]
) -> None:
    """A transaction begun on the driver's connection, behind SQLAlchemy's back, would keep
    the write lock: it ends when the connection goes back to the pool."""
    async with engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.execute("BEGIN IMMEDIATE")
        await driver.execute("INSERT INTO t VALUES (1)")
    assert len(rollbacks) == 1

    # The lock is free: another connection writes at once, and the insert is gone.
    other = sqlite3.connect(str(engine.url.database), timeout=0)
    try:
        other.execute("INSERT INTO t VALUES (2)")
        other.commit()
        assert other.execute("SELECT n FROM t").fetchall() == [(2,)]
    finally:
        other.close()


async def test_sessions_and_transactions_still_end_their_own(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("INSERT INTO t VALUES (3)"))  # never committed
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO t VALUES (4)"))
    async with engine.connect() as connection:
        assert (await connection.execute(text("SELECT n FROM t"))).all() == [(4,)]
