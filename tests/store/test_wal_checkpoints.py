"""SQLite's WAL is checkpointed beside the writes, never by a commit: a checkpoint syncs
the disk, and a commit that waited for a slow sync held the server's one write connection
(single-pass Sends took 15 to 30 s in device-pull's storm)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.store.checkpoints import WalCheckpoints, wal_checkpoints
from passpush.store.connectors import connect
from passpush.store.connectors.connector import Query, Steps
from passpush.store.db import make_engine

from support import sqlite_engine_with

MIB = 1024 * 1024


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with sqlite_engine_with(tmp_path / "wal.db", "CREATE TABLE filler (data BLOB)") as engine:
        yield engine


def _wal(engine: AsyncEngine) -> int:
    return os.path.getsize(f"{engine.url.database}-wal")


async def _write_mib(engine: AsyncEngine, times: int) -> None:
    """`times` transactions of 1 MiB each, through the engine's write connection."""
    for _ in range(times):
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO filler VALUES (randomblob(:n))"), {"n": MIB})


async def test_commits_never_checkpoint(engine: AsyncEngine) -> None:
    """SQLite's own trigger would checkpoint after 4 MiB and start the WAL again: it stays
    near 5 MiB. Without it the WAL holds all 12 MiB until a checkpoint runs."""
    await _write_mib(engine, 12)
    assert _wal(engine) > 11 * MIB


async def test_the_direct_transactions_connection_never_checkpoints(engine: AsyncEngine) -> None:
    """The single-pass Sends' connection of its own is set up the same way."""

    def fill() -> Steps[None]:
        yield Query.write(text("INSERT INTO filler VALUES (randomblob(:n))"), {"n": MIB})

    transactions = connect(engine)
    try:
        for _ in range(12):
            await transactions.run(fill)
    finally:
        transactions.close()
    assert _wal(engine) > 11 * MIB


async def test_a_checkpoint_copies_every_frame_and_the_wal_starts_again(
    engine: AsyncEngine,
) -> None:
    checkpoints = wal_checkpoints(engine)
    assert isinstance(checkpoints, WalCheckpoints)
    try:
        await _write_mib(engine, 6)
        frames, copied = await checkpoints.checkpoint()
        assert frames > 6 * MIB // 4096 and copied == frames
        await _write_mib(engine, 6)  # over the copied frames, from the WAL's beginning
        assert _wal(engine) < 8 * MIB
    finally:
        await checkpoints.stop()


async def test_started_checkpoints_keep_the_wal_small(engine: AsyncEngine) -> None:
    """12 MiB written, a MiB at a time, each followed by one of the started loop's own
    checkpoints: the WAL stays at a few MiB instead of growing to 12, as it does with no
    checkpoint (test_commits_never_checkpoint). (Waiting for the
    loop's checkpoint, not for a time: under load the loop's turn can come seconds late,
    and a test that timed it failed on a loaded machine.)"""
    checkpoints = wal_checkpoints(engine)
    assert checkpoints is not None
    checkpoints.start()
    try:
        for _ in range(12):
            await _write_mib(engine, 1)
            async with asyncio.timeout(60):
                await checkpoints.next_checkpoint()
    finally:
        await checkpoints.stop()
    assert _wal(engine) < 4 * MIB


def test_only_a_sqlite_file_is_checkpointed() -> None:
    assert wal_checkpoints(make_engine("postgresql+asyncpg://nobody@127.0.0.1/none")) is None
    assert wal_checkpoints(make_engine("sqlite+aiosqlite:///:memory:")) is None
