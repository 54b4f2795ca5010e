"""SQLite's brief transactions: on the event loop's thread when the write lock is free
(the hop to a thread and back cost more than a registration group's statements), and on
a thread, never blocking the loop, when another process holds the lock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.store.connectors import connect
from passpush.store.connectors.connector import Query, Steps

from support import sqlite_engine_with

_INSERT = text("INSERT INTO t (n) VALUES (:n)")


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    table = "CREATE TABLE t (n INTEGER PRIMARY KEY)"
    async with sqlite_engine_with(tmp_path / "brief.db", table) as engine:
        yield engine


def _insert(n: int, threads: list[threading.Thread]) -> Steps[None]:
    threads.append(threading.current_thread())
    yield Query.write(_INSERT, {"n": n})


def _rows(engine: AsyncEngine) -> list[int]:
    with sqlite3.connect(str(engine.url.database)) as connection:
        return [n for (n,) in connection.execute("SELECT n FROM t ORDER BY n")]


async def test_a_brief_transaction_runs_on_the_calling_thread(engine: AsyncEngine) -> None:
    transactions = connect(engine)
    threads: list[threading.Thread] = []
    try:
        await transactions.run(lambda: _insert(1, threads), brief=True)
        await transactions.run(lambda: _insert(2, threads))
    finally:
        transactions.close()
    assert threads[0] is threading.current_thread()
    assert threads[1] is not threading.current_thread()
    assert _rows(engine) == [1, 2]


async def test_while_another_process_writes_it_waits_on_a_thread(engine: AsyncEngine) -> None:
    other = sqlite3.connect(str(engine.url.database), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock, as another process would hold it
    transactions = connect(engine)
    threads: list[threading.Thread] = []
    try:
        brief = asyncio.create_task(transactions.run(lambda: _insert(1, threads), brief=True))
        # The loop goes on meanwhile: ticks 20 ms apart come about on time (a transaction
        # that waited on the loop's thread would stop them for SQLite's busy timeout, 30 s).
        loop = asyncio.get_running_loop()
        late = 0.0
        for _ in range(50):
            due = loop.time() + 0.02
            await asyncio.sleep(0.02)
            late = max(late, loop.time() - due)
        assert late < 5.0
        other.execute("COMMIT")
        async with asyncio.timeout(10):
            await brief
    finally:
        other.close()
        transactions.close()
    # It ran on a thread, where the wait for the lock belongs.
    assert threads[-1] is not threading.current_thread()
    assert _rows(engine) == [1]


async def test_a_brief_transaction_that_fails_changes_nothing(engine: AsyncEngine) -> None:
    transactions = connect(engine)

    def twice() -> Steps[None]:
        yield Query.write(_INSERT, {"n": 7})
        yield Query.write(_INSERT, {"n": 7})

    try:
        with pytest.raises(exc.IntegrityError):
            await transactions.run(twice, brief=True)
        # The connection is usable, and the write lock free, for the next one.
        await transactions.run(lambda: _insert(8, []), brief=True)
    finally:
        transactions.close()
    assert _rows(engine) == [8]


@pytest.mark.parametrize("brief", [True, False], ids=["brief", "on a thread"])
async def test_a_transaction_holds_the_engines_one_connection(
    engine: AsyncEngine, brief: bool
) -> None:
    """The process's other writers (SQLAlchemy sessions) share the engine's one pooled
    connection: a direct transaction holds it throughout, so that they wait for it in the
    pool, woken as it returns, rather than in SQLite's busy handler, which sleeps."""
    pool = engine.sync_engine.pool
    transactions = connect(engine)
    held: list[int] = []

    def observed(n: int) -> Steps[None]:
        held.append(pool.checkedout())  # type: ignore[attr-defined]
        yield Query.write(_INSERT, {"n": n})

    try:
        await transactions.run(lambda: observed(1), brief=brief)
    finally:
        transactions.close()
    assert held == [1]
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    assert _rows(engine) == [1]
