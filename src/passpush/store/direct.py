"""Transactions written as steps, run on the driver's own connection.

SQLAlchemy's async layer costs a few hundred microseconds a statement (its execution
context, a greenlet switch, and on SQLite a hop to aiosqlite's thread and back), so a
transaction of seven small statements took 3-5 ms however little it did. The hot path
(accepting a Send) is written instead as a generator of steps: it yields a `Query` and
receives its rows. The same steps then run three ways:

- `run_on_session`: through an AsyncSession, inside a larger unit of work;
- SQLite: the whole transaction in one call on a thread, on a sqlite3 connection of its
  own, while this process's one SQLAlchemy write connection is held, so that no other
  writer of the process is in between (~0.2 ms for a Send);
- PostgreSQL: on the pooled connection's asyncpg connection directly, with its prepared
  statements (one round trip a statement, ~1 ms for a Send).

The statements stay SQLAlchemy Core expressions, compiled once per dialect; their bound
values go through the dialect's own bind processors, as SQLAlchemy would send them.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy import Executable, exc, text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler

from passpush.store.db import sqlite_file

T = TypeVar("T")
Row = Sequence[Any]


class Mode(enum.Enum):
    ROWS = "rows"  # execute once, every row back
    WRITE = "write"  # execute once, nothing back
    MANY = "many"  # execute once per parameter set (executemany), nothing back
    EACH = "each"  # execute once per parameter set, the first row of each back, in order


@dataclass(frozen=True)
class Query:
    """One step: a statement built once (module level), with its parameters."""

    statement: Executable
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]] = field(default_factory=dict)
    mode: Mode = Mode.ROWS

    @staticmethod
    def write(statement: Executable, params: Mapping[str, Any]) -> Query:
        return Query(statement, params, Mode.WRITE)

    @staticmethod
    def many(statement: Executable, params: Sequence[Mapping[str, Any]]) -> Query:
        return Query(statement, params, Mode.MANY)

    @staticmethod
    def each(statement: Executable, params: Sequence[Mapping[str, Any]]) -> Query:
        return Query(statement, params, Mode.EACH)


# A transaction's steps: yields queries, receives each one's rows, returns its answer.
Steps = Generator[Query, list[Row], T]

# The server's PostgreSQL connections plan every execution anew (db.py: a generic plan once
# chose a scan of every pending delivery), and that includes the foreign-key checks run for
# each inserted row. A transaction that inserts many rows of one shape keeps its plans.
_REUSE_PLANS = text("SET LOCAL plan_cache_mode = auto")


def reusing_plans(dialect: str) -> Steps[None]:
    """The first step of a transaction that keeps its plans (PostgreSQL): an import's batch
    ran at 12,900 passes/s planning each foreign-key check and 21,300 with them kept (the
    same statements from asyncpg alone). The statistics the server keeps fresh replan them
    as the tables grow."""
    if dialect == "postgresql":
        yield Query.write(_REUSE_PLANS, {})


async def run_on_session(session: AsyncSession, steps: Steps[T]) -> T:
    """Runs the steps in the session's transaction."""

    async def execute(query: Query) -> list[Row]:
        rows: list[Row] = []
        if query.mode is Mode.ROWS:
            rows = list(await session.execute(query.statement, query.params))
        elif query.mode is Mode.WRITE:
            await session.execute(query.statement, query.params)
        elif query.mode is Mode.MANY:
            if query.params:
                await session.execute(query.statement, query.params)
        else:
            for params in query.params:  # type: ignore[union-attr]
                result = await session.execute(query.statement, params)  # type: ignore[arg-type]
                rows.append(tuple(result.one()))
        return rows

    return await _drive(steps, execute)


async def _drive(steps: Steps[T], execute: Callable[[Query], Awaitable[list[Row]]]) -> T:
    """Feeds each step its rows until the steps return (SQLite's sync twin: _SqliteDirect)."""
    try:
        query = next(steps)
        while True:
            query = steps.send(await execute(query))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class DirectTransactions(Protocol):
    """Runs a transaction's steps in one transaction of its own, committed on return.

    `make` builds the steps afresh for each try. A unique violation is raised as
    SQLAlchemy's IntegrityError, whatever the driver.
    """

    async def run(self, make: Callable[[], Steps[T]]) -> T: ...

    def close(self) -> None: ...


def direct_transactions(engine: AsyncEngine) -> DirectTransactions:
    if engine.dialect.name == "postgresql":
        return _PostgresDirect(engine)
    if database := sqlite_file(engine):
        return _SqliteDirect(engine, database)
    return _SessionDirect(engine)  # an in-memory database: only its own connection sees it


class DirectReads(Protocol):
    """Runs read-only steps outside any transaction: each statement reads its own snapshot.

    For the PassKit web service, whose every request is a read or two by primary key or
    index: through SQLAlchemy's session each one cost more than the HTTP request around it.
    """

    async def run(self, make: Callable[[], Steps[T]]) -> T: ...

    def close(self) -> None: ...


def direct_reads(engine: AsyncEngine) -> DirectReads:
    if engine.dialect.name == "postgresql":
        return _PostgresReads(engine)
    if database := sqlite_file(engine):
        return _SqliteReads(engine, database)
    return _SessionDirect(engine)


class _Compiled:
    """A statement compiled for one dialect, and how its values are bound."""

    def __init__(self, statement: Executable, dialect: Dialect, keys: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
        assert isinstance(compiled, SQLCompiler)
        self._compiled = compiled
        # What each value goes through before the driver, by bound name (JSON to text,
        # datetimes to SQLite's text, ...), as SQLAlchemy's execution would.
        self._processors = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect))
        }
        # And what each column read goes through (SQLite's text back to datetimes, ...).
        columns = getattr(statement, "exported_columns", ())
        self._results = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        ]
        if not any(self._results):
            self._results = []
        # IN lists given with each call; one written in the statement (`in_([...])`) is fixed.
        self._expanding = [
            name for name, bind in compiled.binds.items() if bind.expanding and bind.required
        ]
        self._plans: dict[tuple[int, ...], _Plan] = {}

    def rows(self, rows: Sequence[Row]) -> list[Row]:
        """Rows read, their values as SQLAlchemy would give them."""
        if not self._results:
            return list(rows)
        return [
            tuple(p(v) if p else v for p, v in zip(self._results, row, strict=True)) for row in rows
        ]

    def bind(self, params: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        """The SQL (IN lists expanded to their lengths) and its positional values."""
        return self._plan(params).bind(params)

    def bind_many(self, params: Sequence[Mapping[str, Any]]) -> tuple[str, list[tuple[Any, ...]]]:
        """One SQL for every parameter set (no IN lists here), and their values."""
        plan = self._plan(params[0])
        return plan.sql, plan.bind_rows(params)

    def _plan(self, params: Mapping[str, Any]) -> _Plan:
        """How parameters of this shape (the lengths of the IN lists) bind, worked out by
        SQLAlchemy once per shape: asking it on every call cost more than the query."""
        shape = tuple(len(params[name]) for name in self._expanding)
        plan = self._plans.get(shape)
        if plan is None:
            state = self._compiled.construct_expanded_state(dict(params))
            assert state.positiontup is not None
            source: dict[str, tuple[str, int | None]] = {n: (n, None) for n in state.positiontup}
            for name, expanded in state.parameter_expansion.items():
                if name in params:
                    source |= {element: (name, i) for i, element in enumerate(expanded)}
            processors = {**self._processors, **state.processors}
            slots: list[_Slot] = [(*source[n], processors.get(n)) for n in state.positiontup]
            # Values that are part of the statement (literals bound as parameters).
            fixed = {n: v for n, v in state.parameters.items() if n not in params}
            plan = self._plans[shape] = _Plan(state.statement, slots, fixed)
        return plan


# A positional value: the parameter it comes from, its index in that parameter's list (an
# expanded IN list) or None, and its bind processor.
_Slot = tuple[str, int | None, Callable[[Any], Any] | None]


@dataclass(frozen=True)
class _Plan:
    sql: str
    slots: list[_Slot]
    fixed: dict[str, Any]

    def bind(self, params: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        values = []
        for name, index, processor in self.slots:
            value = params[name] if name in params else self.fixed[name]
            if index is not None:
                value = value[index]
            values.append(processor(value) if processor is not None else value)
        return self.sql, tuple(values)

    def bind_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """Each row's values. A value that is the very object the row before had is not
        processed again: a batch's rows share their time, whose conversion (to naive UTC,
        then to SQLite's text) was a tenth of an import's CPU."""
        last: list[tuple[Any, Any]] = [(_UNSEEN, None)] * len(self.slots)
        bound = []
        for params in rows:
            values = []
            for slot, (name, index, processor) in enumerate(self.slots):
                value = params[name] if name in params else self.fixed[name]
                if index is not None:
                    value = value[index]
                if processor is not None:
                    seen, processed = last[slot]
                    if value is not seen:
                        processed = processor(value)
                        last[slot] = (value, processed)
                    value = processed
                values.append(value)
            bound.append(tuple(values))
        return bound


_UNSEEN = object()


class _Statements:
    """Compiled statements of one dialect, by statement and the keys bound."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._compiled: dict[tuple[int, tuple[str, ...]], tuple[Executable, _Compiled]] = {}

    def get(self, query: Query) -> _Compiled:
        first = query.params if isinstance(query.params, Mapping) else query.params[0]
        keys = tuple(first)
        cache_key = (id(query.statement), keys)
        found = self._compiled.get(cache_key)
        # The statement is kept with its compilation, so that its id is not reused.
        if found is None:
            found = (query.statement, _Compiled(query.statement, self._dialect, keys))
            self._compiled[cache_key] = found
        return found[1]


class _SessionDirect:
    """Through SQLAlchemy, for a database no other connection can see."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def run(self, make: Callable[[], Steps[T]]) -> T:
        async with AsyncSession(self._engine) as session, session.begin():
            return await run_on_session(session, make())

    def close(self) -> None:
        pass


_SQLITE_UNIQUE_VIOLATIONS = {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}


class _SqliteDirect:
    def __init__(self, engine: AsyncEngine, database: str) -> None:
        from passpush.store.db import configure_sqlite_connection

        self._engine = engine
        self._database = database
        self._configure = configure_sqlite_connection
        self._statements = _Statements(engine.dialect)
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def run(self, make: Callable[[], Steps[T]]) -> T:
        # Holding the engine's one connection (pool of one) keeps the process's other
        # writers out: they would otherwise wait on SQLite's busy handler, which sleeps.
        async with self._engine.connect():
            return await asyncio.get_running_loop().run_in_executor(None, self._transaction, make)

    def _transaction(self, make: Callable[[], Steps[T]]) -> T:
        with self._lock:
            try:
                connection = self._connect()
                connection.execute("BEGIN IMMEDIATE")
                result = self._drive(connection, make())
                connection.execute("COMMIT")
            except exc.IntegrityError:  # a request id raced another: the connection is fine
                if connection.in_transaction:  # SQLite ends some failed ones itself
                    connection.execute("ROLLBACK")
                raise
            except BaseException:
                # Whatever else failed, the next transaction gets a new connection: one
                # opened while the file could not be written stays read-only for good.
                self._close()
                raise
            return result

    def _drive(self, connection: sqlite3.Connection, steps: Steps[T]) -> T:
        try:
            query = next(steps)
            while True:
                query = steps.send(self._execute(connection, query))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _execute(self, connection: sqlite3.Connection, query: Query) -> list[Row]:
        if not query.params and query.mode in (Mode.MANY, Mode.EACH):
            return []
        compiled = self._statements.get(query)
        try:
            if query.mode in (Mode.ROWS, Mode.WRITE):
                sql, values = compiled.bind(query.params)  # type: ignore[arg-type]
                return compiled.rows(connection.execute(sql, values).fetchall())
            sql, rows = compiled.bind_many(query.params)  # type: ignore[arg-type]
            if query.mode is Mode.MANY:
                connection.executemany(sql, rows)
                return []
            return compiled.rows([connection.execute(sql, values).fetchone() for values in rows])
        except sqlite3.IntegrityError as error:
            if error.sqlite_errorname in _SQLITE_UNIQUE_VIOLATIONS:
                raise exc.IntegrityError(str(query.statement), None, error) from error
            raise

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            # Used by one thread at a time (the lock), whichever of the executor's it is.
            connection = sqlite3.connect(
                self._database, isolation_level=None, check_same_thread=False, timeout=30
            )
            try:
                self._configure(connection)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()  # rolls back what is still open
            self._connection = None


class _SqliteReads:
    """Reads on a read-only sqlite3 connection of their own, on the calling thread: an
    indexed read takes tens of microseconds, less than a hop to another thread and back
    (which under a busy GIL took milliseconds). Under WAL it never waits for the writer."""

    def __init__(self, engine: AsyncEngine, database: str) -> None:
        self._database = database
        self._statements = _Statements(engine.dialect)
        self._connection: sqlite3.Connection | None = None

    async def run(self, make: Callable[[], Steps[T]]) -> T:
        connection = self._connect()
        try:
            steps = make()
            query = next(steps)
            while True:
                compiled = self._statements.get(query)
                sql, values = compiled.bind(query.params)  # type: ignore[arg-type]
                query = steps.send(compiled.rows(connection.execute(sql, values).fetchall()))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        except sqlite3.Error:
            self.close()  # the next read opens the file again
            raise

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(self._database, isolation_level=None, timeout=5)
            connection.execute("PRAGMA query_only=ON")
            self._connection = connection
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _PostgresReads:
    """Reads on asyncpg connections of their own, outside any transaction block (one round
    trip a statement): checking a connection out of SQLAlchemy's pool and back, through its
    greenlets, cost more than the indexed read itself. Their plans are kept (`plan_cache_mode
    = auto`, where the server's other connections plan each execution): these are a device's
    lookups by key, planned anew each time they ran at 2,600 serials queries/s, kept 4,500/s
    (device-pull --quick, 2026-12-03). The statistics the server keeps fresh replan them as
    the tables grow."""

    MAX_CONNECTIONS = 10

    def __init__(self, engine: AsyncEngine) -> None:
        self._url = engine.url.render_as_string(hide_password=False)
        self._statements = _Statements(engine.dialect)
        self._pool: Any = None
        self._opening: asyncio.Lock | None = None

    async def run(self, make: Callable[[], Steps[T]]) -> T:
        pool = self._pool or await self._open()
        try:
            return await self._read(pool, make)
        except _LostConnection:
            # The server ended this connection, most likely every other one too (a restart,
            # a failover): they are all replaced, and a read is safe to do again.
            await pool.expire_connections()
        try:
            return await self._read(pool, make)
        except _LostConnection as lost:
            error = lost.__cause__ or lost
            raise exc.OperationalError("", None, error, connection_invalidated=True) from error

    async def _read(self, pool: Any, make: Callable[[], Steps[T]]) -> T:
        async with pool.acquire() as connection:
            try:
                return await _drive(make(), functools.partial(_fetch, self._statements, connection))
            except Exception as error:
                if not _lost(connection, error):
                    raise
                connection.terminate()  # not back into the pool
                raise _LostConnection from error

    async def _open(self) -> Any:
        import asyncpg  # type: ignore[import-untyped]

        from passpush.store.db import POSTGRES_SETTINGS, asyncpg_dsn

        self._opening = self._opening or asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    asyncpg_dsn(self._url),
                    min_size=1,
                    max_size=self.MAX_CONNECTIONS,
                    server_settings={**POSTGRES_SETTINGS, "plan_cache_mode": "auto"},
                    init=_json_codecs,
                )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None


async def _json_codecs(connection: Any) -> None:
    """JSON read as Python values, as SQLAlchemy's asyncpg dialect sets its connections up
    (the statements' result processors expect that)."""
    for kind in ("json", "jsonb"):
        await connection.set_type_codec(
            kind, encoder=str, decoder=json.loads, schema="pg_catalog", format="text"
        )


class _LostConnection(Exception):
    pass


def _lost(connection: Any, error: BaseException) -> bool:
    """Whether an asyncpg connection that raised `error` is lost: closed, or still waiting
    out an error the server sent unasked. PostgreSQL's FATAL for a connection it ends comes
    before the end itself; a call in between is refused with InternalClientError
    ("another operation is in progress"), and so would every call after it."""
    import asyncpg  # type: ignore[import-untyped]

    return connection.is_closed() or isinstance(error, asyncpg.InternalClientError)


async def _fetch(statements: _Statements, connection: Any, query: Query) -> list[Row]:
    compiled = statements.get(query)
    sql, values = compiled.bind(query.params)  # type: ignore[arg-type]
    return compiled.rows(await connection.fetch(sql, *values))


class _PostgresDirect:
    def __init__(self, engine: AsyncEngine) -> None:
        import asyncpg  # type: ignore[import-untyped]

        self._engine = engine
        self._unique_violation = asyncpg.UniqueViolationError
        self._statements = _Statements(engine.dialect)

    async def run(self, make: Callable[[], Steps[T]]) -> T:
        async with self._engine.connect() as pooled:
            # The connection SQLAlchemy made (its codecs and settings), used directly;
            # SQLAlchemy began nothing on it, so its reset on return costs nothing.
            connection = (await pooled.get_raw_connection()).driver_connection
            assert connection is not None
            try:
                async with connection.transaction():
                    return await _drive(make(), functools.partial(self._execute, connection))
            except self._unique_violation as error:
                raise exc.IntegrityError("", None, error) from error
            except BaseException as error:
                if not _lost(connection, error):
                    raise
                # SQLAlchemy did not run these statements, so it cannot know that the server
                # went away: the pool would hand the dead connection out again and again.
                await pooled.invalidate()
                if not isinstance(error, Exception):
                    raise
                # Whatever asyncpg raised, the connection was lost: said as SQLAlchemy says it.
                raise exc.OperationalError("", None, error, connection_invalidated=True) from error

    async def _execute(self, connection: Any, query: Query) -> list[Row]:
        if not query.params and query.mode in (Mode.MANY, Mode.EACH):
            return []
        if query.mode in (Mode.ROWS, Mode.WRITE):
            return await _fetch(self._statements, connection, query)
        compiled = self._statements.get(query)
        sql, rows = compiled.bind_many(query.params)  # type: ignore[arg-type]
        if query.mode is Mode.MANY:
            await connection.executemany(sql, rows)
            return []
        # Pipelined like executemany; a row for each parameter set, in order.
        return compiled.rows(await connection.fetchmany(sql, rows))

    def close(self) -> None:
        pass
