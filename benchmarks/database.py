"""Throwaway databases for the benchmarks, migrated and seeded fast, behind passpush's back.

SQLite: a file in the benchmark's temporary directory. PostgreSQL: a database
`passpush_bench_<random>` on PASSPUSH_BENCH_POSTGRES_URL's server, dropped afterwards.
Passes and registrations go straight into the tables of `passpush.store.models`: SQLAlchemy
Core executemany on SQLite, COPY (asyncpg `copy_records_to_table`) on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import Column, Table, insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from benchmarks.harness import TOPIC, VENV_BIN, log, run_command
from passpush.domain.model import PassStatus, Platform
from passpush.store import migrate
from passpush.store.db import asyncpg_dsn
from passpush.store.models import (
    DeviceRegistrationRow,
    PassRow,
    ProjectRow,
    TemplateRow,
    table_of,
)

POSTGRES_ADMIN_URL = os.environ.get(
    "PASSPUSH_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ("sqlite", "postgresql")
PROJECT = "bench"
TEMPLATE = "bench-template"
SQLITE_CHUNK = 20_000


def device_token(index: int) -> str:
    """A distinct 64-hex-digit push token per device."""
    return f"{index:064x}"


def pass_id(index: int) -> str:
    return f"pass-{index:08d}"


@dataclass(frozen=True)
class BenchDatabase:
    backend: str
    url: str  # SQLAlchemy URL, as PASSPUSH_DATABASE_URL

    def env(self) -> dict[str, str]:
        return {**os.environ, "PASSPUSH_DATABASE_URL": self.url}

    async def migrate(self) -> None:
        """`passpush migrate`, in a thread of this process (alembic runs its own event loop)."""
        await asyncio.to_thread(migrate.upgrade, self.url)

    async def create_key(self) -> str:
        """An API key with every scope for project `bench` (the CLI creates the project)."""
        command = [str(VENV_BIN / "passpush"), "keys", "create", "--project", PROJECT]
        output = await run_command([*command, "--scopes", "all"], env=self.env())
        return output.strip().splitlines()[-1]

    async def seed(self, passes: int, *, template: str = TEMPLATE) -> None:
        """An Apple template of `passes` ACTIVE passes with one registered device each."""
        started = time.perf_counter()
        engine = create_async_engine(self.url)
        now = datetime.datetime.now(datetime.UTC)
        try:
            async with engine.begin() as connection:
                if self.backend == "sqlite":
                    await connection.exec_driver_sql("PRAGMA synchronous=OFF")
                await _ensure_project(connection, now)
                await connection.execute(
                    insert(table_of(TemplateRow)),
                    [
                        {
                            "project_id": PROJECT,
                            "id": template,
                            "platform": Platform.APPLE.value,
                            "display_name": "benchmark",
                            "pass_type_identifier": TOPIC,
                            "created_at": now,
                        }
                    ],
                )
                if self.backend == "postgresql":
                    await _copy_passes(connection, template, passes, now)
                else:
                    await _insert_passes(connection, template, passes, now)
            if self.backend == "postgresql":
                # Fresh statistics, as autovacuum would give a database that lived a while.
                async with engine.connect() as connection:
                    autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                    await autocommit.exec_driver_sql("ANALYZE")
        finally:
            await engine.dispose()
        log(
            f"seeded {passes:,} passes + devices on {self.backend} "
            f"in {time.perf_counter() - started:.1f} s"
        )


async def _ensure_project(connection: AsyncConnection, now: datetime.datetime) -> None:
    table = table_of(ProjectRow)
    exists = (await connection.execute(table.select().where(table.c.id == PROJECT))).first()
    if exists is None:
        await connection.execute(insert(table), [{"id": PROJECT, "created_at": now}])


def _pass_values(template: str, index: int, now: datetime.datetime) -> dict[str, Any]:
    return {
        "project_id": PROJECT,
        "id": pass_id(index),
        "template_id": template,
        "external_id": f"member-{index}",
        "serial_number": f"serial-{index}",
        "status": PassStatus.ACTIVE.value,
        "authentication_token": "bench-authentication-token-0123456789",
        "update_tag": 0,
        "created_at": now,
        "updated_at": now,
    }


def _registration_values(index: int, now: datetime.datetime) -> dict[str, Any]:
    return {
        "project_id": PROJECT,
        "pass_id": pass_id(index),
        "device_library_identifier": f"device-{index}",
        "push_token": device_token(index),
        "active": True,
        "created_at": now,
        "updated_at": now,
    }


async def _insert_passes(
    connection: AsyncConnection, template: str, passes: int, now: datetime.datetime
) -> None:
    for indexes in chunks(passes, SQLITE_CHUNK):
        await connection.execute(
            insert(table_of(PassRow)), [_pass_values(template, i, now) for i in indexes]
        )
        await connection.execute(
            insert(table_of(DeviceRegistrationRow)),
            [_registration_values(i, now) for i in indexes],
        )


async def _copy_passes(
    connection: AsyncConnection, template: str, passes: int, now: datetime.datetime
) -> None:
    raw = await connection.get_raw_connection()
    driver: Any = raw.driver_connection  # an asyncpg.Connection
    if await driver.fetchval("SELECT current_setting('is_superuser') = 'on'"):
        # Seeding only: skip the per-row foreign key triggers (the rows are consistent).
        await driver.execute("SET LOCAL session_replication_role = replica")
    naive = now.astimezone(datetime.UTC).replace(tzinfo=None)  # the schema stores naive UTC
    tables: list[tuple[Table, Callable[[int], dict[str, Any]]]] = [
        (table_of(PassRow), partial(_pass_values, template, now=naive)),
        (table_of(DeviceRegistrationRow), partial(_registration_values, now=naive)),
    ]
    for table, values in tables:
        columns = _copy_columns(table)
        records = _records(columns, values, passes)
        await driver.copy_records_to_table(
            table.name, records=records, columns=[c.name for c in columns]
        )


def _copy_columns(table: Table) -> list[Column[Any]]:
    """Every column but a server-generated key (the registration's id)."""
    return [c for c in table.columns if not (c.primary_key and c.autoincrement is True)]


def _records(
    columns: list[Column[Any]], values: Callable[[int], dict[str, Any]], count: int
) -> Iterator[tuple[Any, ...]]:
    """Rows for COPY: the given values, else the model's scalar default, else NULL.

    What is the same in every row is worked out once, from the first two rows.
    """
    first, second = values(0), values(1)
    base = [first[c.name] if c.name in first else _default(c) for c in columns]
    varying = [
        (position, c.name)
        for position, c in enumerate(columns)
        if c.name in first and second[c.name] != first[c.name]
    ]
    for index in range(count):
        row = values(index)
        for position, name in varying:
            base[position] = row[name]
        yield tuple(base)


def _default(column: Column[Any]) -> Any:
    default = column.default
    if default is not None and getattr(default, "is_scalar", False):
        return getattr(default, "arg", None)
    return None


@contextlib.asynccontextmanager
async def bench_database(backend: str, workdir: Path) -> AsyncIterator[BenchDatabase]:
    """A fresh, migrated database of `backend`, gone on the way out."""
    if backend == "sqlite":
        path = workdir / f"bench-{secrets.token_hex(4)}.db"
        database = BenchDatabase(backend, f"sqlite+aiosqlite:///{path}")
        try:
            await database.migrate()
            yield database
        finally:
            _remove_sqlite_files(path)
        return
    if backend != "postgresql":
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    name = f"passpush_bench_{secrets.token_hex(6)}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        database = BenchDatabase(backend, url)
        await database.migrate()
        yield database
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(POSTGRES_ADMIN_URL))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def postgres_version() -> str:
    with contextlib.suppress(Exception):
        connection = await asyncpg.connect(asyncpg_dsn(POSTGRES_ADMIN_URL), timeout=5)
        try:
            return str(await connection.fetchval("SHOW server_version"))
        finally:
            await connection.close()
    return "unavailable"


def chunks(total: int, size: int) -> Iterator[range]:
    for start in range(0, total, size):
        yield range(start, min(total, start + size))
