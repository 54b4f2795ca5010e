"""PostgreSQL: asyncpg directly, with its prepared statements (one round trip a statement,
~1 ms for a Send).

Transactions run on the pooled connection SQLAlchemy made (its codecs and settings); reads
and writes of one statement on a small asyncpg pool of their own, outside any transaction
block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.store.connectors.connector import Drive, Mode, Row, Statement, Steps
from passpush.store.connectors.statements import CompiledStatements
from passpush.store.db import (
    POSTGRES_SETTINGS,
    asyncpg_dsn,
    pooled_connection,
    replace_pooled_connections,
)

T = TypeVar("T")


class AsyncpgConnector:
    """Transactions on the asyncpg connection of a connection from SQLAlchemy's pool."""

    dialect = "postgresql"

    def __init__(self, engine: AsyncEngine) -> None:
        import asyncpg  # type: ignore[import-untyped]

        self._engine = engine
        self._unique_violation = asyncpg.UniqueViolationError
        self._statements = CompiledStatements(engine.dialect)

    async def run(
        self, make: Callable[[], Steps[T]], *, brief: bool = False, one_write: bool = False
    ) -> T:
        async with pooled_connection(self._engine) as pooled:
            # The connection SQLAlchemy made (its codecs and settings), used directly;
            # SQLAlchemy began nothing on it, so its reset on return costs nothing.
            connection = pooled.driver_connection
            assert connection is not None
            try:
                if one_write:
                    return await self._one_write(connection, make)
                async with connection.transaction():
                    drive = Drive(make(), self.dialect)
                    for step in drive:
                        drive.rows = await self._execute(connection, step)
                    return drive.result
            except self._unique_violation as error:
                raise exc.IntegrityError("", None, error) from error
            except BaseException as error:
                if not _lost(connection, error):
                    raise
                # SQLAlchemy did not run these statements, so it cannot know that the server
                # went away: the pool would hand the dead connection out again and again,
                # and the others it ended with it once each.
                pooled.invalidate()
                replace_pooled_connections(self._engine)
                if not isinstance(error, Exception):
                    raise
                # Whatever asyncpg raised, the connection was lost: said as SQLAlchemy says it.
                raise exc.OperationalError("", None, error, connection_invalidated=True) from error

    async def _one_write(self, connection: Any, make: Callable[[], Steps[T]]) -> T:
        """The steps' reads, each alone, then their one write, which commits alone (a
        pipelined MANY or EACH is all or nothing): no transaction block, whose BEGIN and
        COMMIT are two round trips more."""
        drive = Drive(make(), self.dialect)
        wrote = False
        for step in drive:
            wrote = _writing(step, wrote)
            drive.rows = await self._execute(connection, step)
        return drive.result

    async def _execute(self, connection: Any, step: Statement) -> list[Row]:
        return await _execute(self._statements, connection, step)

    def close(self) -> None:
        pass


class AsyncpgStandaloneConnector:
    """Statements on asyncpg connections of their own, outside any transaction block (one
    round trip a statement): reads, each of its own snapshot, and writes of one statement,
    each committed alone (a registration group, a group of one-pass Sends), after which
    nothing runs. A read that finds its connection lost runs again on a new one; a write
    does not, for it may have committed. Checking a connection out of SQLAlchemy's pool and
    back, through its greenlets, cost more than the indexed read itself. Their
    plans are kept (`plan_cache_mode = force_generic_plan`, where the server's other
    connections plan each execution): these are a device's lookups by key, planned anew
    each time they ran at 2,600 serials queries/s, kept 4,500/s (device-pull --quick,
    2026-12-03). Forced, not left to `auto`: with arrays of unknown length, the generic
    plan of a read of many devices' questions at once (store/passkit.py, `_each_asked`) is
    estimated dearer, so `auto` planned it anew each time, which cost PostgreSQL 0.22 ms a
    question in twos against 0.05 ms kept (2026-12-04). The statistics the server keeps
    fresh replan them as the tables grow."""

    dialect = "postgresql"
    # Each connection is a PostgreSQL process that works for the devices at the same
    # priority as the Sends' own (the HTTP processes are in the idle class; these cannot
    # be). With ten a process, a fetch storm kept up to twenty of them busy and a one-pass
    # Send's round trips each waited behind them: its p99 went 6 to 12 times its idle figure
    # (device-pull, 2026-12-04). Two a process cut that to 1.9-3.6 times and fetched as fast:
    # a device's reads are brief, and one process's reads share its one core anyway.
    MAX_CONNECTIONS = 2

    def __init__(self, engine: AsyncEngine) -> None:
        import asyncpg

        self._unique_violation = asyncpg.UniqueViolationError
        self._url = engine.url.render_as_string(hide_password=False)
        self._statements = CompiledStatements(engine.dialect)
        self._pool: Any = None
        self._opening: asyncio.Lock | None = None

    async def run(
        self, make: Callable[[], Steps[T]], *, brief: bool = False, one_write: bool = False
    ) -> T:
        pool = self._pool or await self._open()
        try:
            return await self._run(pool, make)
        except _LostConnection as lost:
            # The server ended this connection, most likely every other one too (a restart,
            # a failover): they are all replaced, and reads are safe to run again. A write
            # may have committed: the caller is told, not a repeat.
            await pool.expire_connections()
            if lost.after_write:
                raise _unavailable(lost) from lost.__cause__
        try:
            return await self._run(pool, make)
        except _LostConnection as lost:
            raise _unavailable(lost) from lost.__cause__

    async def _run(self, pool: Any, make: Callable[[], Steps[T]]) -> T:
        drive = Drive(make(), self.dialect)
        steps = iter(drive)
        step = next(steps, None)
        if step is None:  # all it needed was kept (a download's files): no connection
            return drive.result
        wrote = False
        async with pool.acquire() as connection:
            try:
                while step is not None:
                    wrote = _writing(step, wrote)
                    drive.rows = await _execute(self._statements, connection, step)
                    step = next(steps, None)
                return drive.result
            except self._unique_violation as error:
                raise exc.IntegrityError("", None, error) from error
            except Exception as error:
                if not _lost(connection, error):
                    raise
                import asyncpg

                with contextlib.suppress(asyncpg.InterfaceError):  # detached: gone already
                    connection.terminate()  # not back into the pool
                raise _LostConnection(wrote) from error

    async def _open(self) -> Any:
        import asyncpg

        self._opening = self._opening or asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    asyncpg_dsn(self._url),
                    min_size=1,
                    max_size=self.MAX_CONNECTIONS,
                    server_settings={**POSTGRES_SETTINGS, "plan_cache_mode": "force_generic_plan"},
                    init=_json_codecs,
                    reset=_nothing_to_reset,
                )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None


async def _execute(statements: CompiledStatements, connection: Any, step: Statement) -> list[Row]:
    compiled = statements.get(step)
    query = step.query
    if query.mode in (Mode.ROWS, Mode.WRITE):
        sql, values = compiled.bind(query.params)  # type: ignore[arg-type]
        return compiled.rows(await connection.fetch(sql, *values))
    sql, rows = compiled.bind_many(query.params)  # type: ignore[arg-type]
    if query.mode is Mode.MANY:
        await connection.executemany(sql, rows)
        return []
    # Pipelined like executemany; a row for each parameter set, in order.
    return compiled.rows(await connection.fetchmany(sql, rows))


def _writing(step: Statement, wrote: bool) -> bool:
    """Whether steps run with no transaction block have written once `step` runs. A
    statement after their one write is refused: it would commit apart from it."""
    if wrote:
        raise AssertionError("steps run with one write ran a statement after it")
    return step.query.mode is not Mode.ROWS or bool(getattr(step.statement, "is_dml", False))


async def _nothing_to_reset(connection: Any) -> None:
    """A read connection goes back to the pool as it came: its reads set nothing, lock
    nothing and listen to nothing. asyncpg's own reset (advisory locks, cursors, LISTEN,
    settings) was a second round trip after every read."""


async def _json_codecs(connection: Any) -> None:
    """JSON read as Python values, as SQLAlchemy's asyncpg dialect sets its connections up
    (the statements' result processors expect that)."""
    for kind in ("json", "jsonb"):
        await connection.set_type_codec(
            kind, encoder=str, decoder=json.loads, schema="pg_catalog", format="text"
        )


class _LostConnection(Exception):
    def __init__(self, after_write: bool) -> None:
        super().__init__()
        self.after_write = after_write


def _unavailable(lost: _LostConnection) -> exc.OperationalError:
    """A lost connection as SQLAlchemy says it."""
    error = lost.__cause__ or lost
    return exc.OperationalError("", None, error, connection_invalidated=True)


def _lost(connection: Any, error: BaseException) -> bool:
    """Whether an asyncpg connection that raised `error` is lost: closed, or still waiting
    out an error the server sent unasked. PostgreSQL's FATAL for a connection it ends comes
    before the end itself; a call in between is refused with InternalClientError
    ("another operation is in progress"), and so would every call after it.

    A pool's connection whose end has arrived is detached from its proxy by asyncpg, which
    then refuses every call, is_closed() too: that is lost as well (on a loaded machine the
    end arrives before the error is handled often enough to fail a test)."""
    import asyncpg

    if isinstance(error, asyncpg.InternalClientError):
        return True
    try:
        return bool(connection.is_closed())
    except asyncpg.InterfaceError:
        return True
