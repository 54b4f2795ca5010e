"""The database readiness probe: it stops when told, whatever its write is doing at that
moment, and its write goes the ways a Send commits."""

from __future__ import annotations

import asyncio

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.service.notifications import NotificationCore
from passpush.service.readiness import DatabaseReadiness
from passpush.store.db import asyncpg_dsn, make_sessions


async def test_stop_ends_the_probe_when_it_lands_just_as_a_write_finishes() -> None:
    # The moment asyncio.wait_for of Python 3.11 swallows a cancellation in: the awaited
    # write has finished and the probe has not resumed yet. The probe then slept and wrote
    # on forever, and the server's stop() with it (CI runs where a teardown hung for 300 s).
    stopping: list[asyncio.Task[None]] = []
    stop_called = asyncio.Event()
    gave_up = False

    async def write() -> None:
        if gave_up:  # so that a failure does not leave the probe running
            raise GaveUp
        if not stopping:
            stopping.append(asyncio.get_running_loop().create_task(readiness.stop()))
            stop_called.set()

    async def on_change(writable: bool) -> None:
        pass

    readiness = DatabaseReadiness(write, on_change, every=0.01)
    readiness.start()
    await stop_called.wait()
    # A bound for a hang, not a timing: stop() takes one turn of the loop.
    done, _ = await asyncio.wait(stopping, timeout=10)
    gave_up = True
    assert done, "stop() did not end: the probe went on writing"


class GaveUp(BaseException):
    """Not an Exception: the probe counts those as failed writes and goes on."""


async def test_the_write_check_fails_when_the_connections_sends_commit_on_cannot_write(
    engine: AsyncEngine, database_url: str
) -> None:
    """On PostgreSQL one-pass Sends commit on connections of their own (outbox/accepting.py):
    the readiness probe's write goes through them too. Connections opened after a failover
    to a read-only server cannot write, though the ones opened before still could."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's Sends commit on the engine's own connection")
    core = NotificationCore(engine, make_sessions(engine))
    database = engine.url.database
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await core.check_writable()  # the engine's connection, opened while writable
        await admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        core.close()
        core = NotificationCore(engine, make_sessions(engine))  # its own pool: opened now
        with pytest.raises((DBAPIError, asyncpg.PostgresError), match="read-only"):
            await core.check_writable()
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        await admin.close()
        core.close()
