"""One engine and one session factory per process, for SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, any_, bindparam, event, exc, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import PoolProxiedConnection, PoolResetState
from sqlalchemy.util import await_, greenlet_spawn

from passpush.store.sqlite_write_turns import WriteTurns

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/passpush.db"


def asyncpg_dsn(url: str) -> str:
    """A PostgreSQL SQLAlchemy URL as the plain DSN asyncpg.connect takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(engine: AsyncEngine) -> str | None:
    """The engine's SQLite database file; None for an in-memory database (only its own
    connection sees it) or any other database."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return None
    return database


# No JIT: it compiles big statements for hundreds of milliseconds, where an OLTP service
# wants its answer now. Custom plans: asyncpg prepares every statement, and a generic plan
# made while the tables were small (sequential scans) would stay while they grow; planning
# with the parameters costs microseconds.
POSTGRES_SETTINGS = {"jit": "off", "plan_cache_mode": "force_custom_plan"}


# How long a SQLite transaction waits for the write lock, and before it for its turn.
SQLITE_BUSY_TIMEOUT = 30.0


def make_engine(
    url: str = DEFAULT_DATABASE_URL,
    *,
    busy_timeout: float = SQLITE_BUSY_TIMEOUT,
    turn_timeout: float = SQLITE_BUSY_TIMEOUT,
    **kwargs: Any,
) -> AsyncEngine:
    """The engine; on SQLite, a transaction waits up to `turn_timeout` for its process's turn
    (store/sqlite_write_turns.py), then up to `busy_timeout` for the write lock."""
    # A database error's text would otherwise carry the statement's values (notification
    # bodies, push tokens) into the log.
    kwargs.setdefault("hide_parameters", True)
    if not is_sqlite(url):
        connect_args = {"server_settings": POSTGRES_SETTINGS}
        engine = create_async_engine(
            url, pool_size=10, max_overflow=10, connect_args=connect_args, **kwargs
        )
        _replace_connections_the_server_closed(engine)
        return engine
    database = make_url(url).database
    pool: dict[str, Any] = {}
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        # One connection, handed out in turn: the pool's queue serializes this process's
        # transactions, instead of SQLite's busy handler, which sleeps in growing steps (up
        # to 100 ms) while another connection of the same process holds the write lock.
        pool = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 60}
    engine = create_async_engine(
        url, connect_args={"timeout": busy_timeout}, pool_reset_on_return=None, **pool, **kwargs
    )
    _roll_back_only_open_transactions(engine)
    turns = None
    if database and database != ":memory:":
        turns = WriteTurns(database)
        weakref.finalize(engine.sync_engine, turns.close)  # its file closed with the engine
    _make_sqlite_transactions_immediate(engine, busy_timeout, turns, turn_timeout)
    _end_transactions_of_invalidated_connections(engine)
    return engine


# Per engine: connections opened until then are replaced when next checked out.
_STALE_UNTIL: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def _replace_connections_the_server_closed(engine: AsyncEngine) -> None:
    """A pooled connection that PostgreSQL ended (a restart, a failover, an administrator)
    is replaced when checked out, instead of failing the call that gets it next: one whose
    end has arrived, and every one opened before a connection was found lost
    (`replace_pooled_connections`).

    asyncpg notices a closed socket by itself, so asking costs no round trip (unlike
    SQLAlchemy's pool_pre_ping, which pings on every checkout).
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info["opened_at"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(_dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if proxy.driver_connection.is_closed():
            raise exc.DisconnectionError("the server closed the connection")
        if record.info.get("opened_at", 0.0) <= _STALE_UNTIL.get(engine.sync_engine, -1.0):
            # Ended at once: SQLAlchemy's own close would first wait up to 2 s for a polite
            # end that a connection the server ended without its end arriving never gets.
            proxy.driver_connection.terminate()
            raise exc.DisconnectionError("opened before a connection was found lost")


@contextlib.asynccontextmanager
async def pooled_connection(engine: AsyncEngine) -> AsyncIterator[PoolProxiedConnection]:
    """One of the engine's pooled connections, for the direct transactions
    (store/connectors/), checked out and back without the layers of `engine.connect()`,
    which cost 54-86 µs of CPU a checkout and return and returned the connection in a task
    of its own (26-43 µs this way, about half in each reading of 2026-12-03). Nothing
    begins on it through SQLAlchemy, so the pool's reset on return has no rollback to
    await, and no cancellation cuts the return short."""
    connection = await greenlet_spawn(engine.sync_engine.pool.connect)
    try:
        yield connection
    finally:
        await greenlet_spawn(connection.close)


def replace_pooled_connections(engine: AsyncEngine) -> None:
    """Every connection the engine's pool holds now is replaced when next checked out.

    For a connection found lost where SQLAlchemy did not see it (the direct transactions
    on asyncpg): the server that ended it most likely ended the others too, whose ends may
    not have arrived yet (each would fail one more caller). SQLAlchemy does the same for
    a disconnect it sees itself."""
    _STALE_UNTIL[engine.sync_engine] = time.monotonic()


def _roll_back_only_open_transactions(engine: AsyncEngine) -> None:
    """Replaces the pool's reset, a rollback on every return, by one only when a
    transaction is open. Each rollback is a round trip to aiosqlite's thread (about 170 µs
    of CPU), which the direct transactions paid for nothing: they check the write
    connection out only to keep the process's other writers away, and begin nothing on it.
    A transaction SQLAlchemy ended itself needs no reset either."""

    @event.listens_for(engine.sync_engine.pool, "reset")
    def _on_reset(dbapi_connection: Any, record: Any, state: PoolResetState) -> None:
        if state.transaction_was_reset or not state.asyncio_safe:
            return
        driver = record.driver_connection
        if driver is not None and driver.in_transaction:
            dbapi_connection.rollback()


def _end_transactions_of_invalidated_connections(engine: AsyncEngine) -> None:
    """A task cancelled while its statement ran gets its SQLite connection invalidated
    (closed). But a statement that the task's traceback still holds keeps a closed
    connection alive, mid-transaction: a writer's lock (or a reader's snapshot, which
    stops checkpoints) stays taken until that traceback is freed. The transaction is
    rolled back before the close."""

    @event.listens_for(engine.pool, "invalidate")
    def _on_invalidate(dbapi_connection: Any, _record: Any, _error: Any) -> None:
        if dbapi_connection is not None:
            with contextlib.suppress(Exception):  # outside a greenlet (garbage collection)
                dbapi_connection.rollback()


_SQLITE_REOPEN = {8, 10, 14}  # SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN


def _make_sqlite_transactions_immediate(
    engine: AsyncEngine, busy_timeout: float, turns: WriteTurns | None, turn_timeout: float
) -> None:
    """Takes SQLite's write lock at BEGIN, in the process's turn (store/sqlite_write_turns.py)
    when the database is a file, given back as the connection returns to the pool.

    With pysqlite's deferred transactions, a transaction that reads and then
    writes fails at once with "database is locked" when another writer got in
    between; BEGIN IMMEDIATE waits for the lock (busy timeout) instead. WAL lets
    readers go on while one writer works.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        configure_sqlite_connection(dbapi_connection, round(busy_timeout * 1000))

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        if turns is not None:
            _take_turn(turns, turn_timeout)
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    if turns is not None:

        @event.listens_for(engine.sync_engine.pool, "checkin")
        def _on_checkin(_dbapi_connection: Any, _record: Any) -> None:
            turns.give_back()  # the transaction has ended (the pool's reset rolls back)

    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: Any) -> None:
        # A connection opened while the file could not be written stays read-only for good:
        # counted as lost, it is replaced by a new one on the next checkout.
        code = getattr(context.original_exception, "sqlite_errorcode", 0) & 0xFF
        if code in _SQLITE_REOPEN:
            context.is_disconnect = True


def _take_turn(turns: WriteTurns, within: float) -> None:
    """The turn, waited for (up to `within` seconds) without holding up the event loop."""
    if not turns.take():
        await_(_wait_for_turn(turns, within))  # in SQLAlchemy's greenlet, as aiosqlite's calls


async def _wait_for_turn(turns: WriteTurns, within: float) -> bool:
    waiting = asyncio.ensure_future(asyncio.to_thread(turns.take, within=within))
    try:
        return await asyncio.shield(waiting)
    except asyncio.CancelledError:
        # The wait goes on in its thread: a turn it gets then comes too late for anyone.
        def give_back_late(done: asyncio.Future[bool]) -> None:
            if not done.cancelled() and done.exception() is None and done.result():
                turns.give_back()

        waiting.add_done_callback(give_back_late)
        raise


def configure_sqlite_connection(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    """A write connection's settings (store/connectors/sqlite.py opens one of its own too)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # No checkpoint inside a commit: it waits for the disk's sync while holding the write
    # connection. The server checkpoints beside the writes (store/checkpoints.py); a
    # process without one leaves it to the last connection's close.
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    # 32 MiB of pages (SQLite's default is 2 MiB): a large write (an import) otherwise reads
    # its indexes' pages back from the OS for every batch (200,000 passes imported: 9,900
    # passes/s with 2 MiB, 12,200 with 32 MiB, 2026-12-03).
    cursor.execute("PRAGMA cache_size=-32768")
    cursor.close()


def make_read_engine(engine: AsyncEngine) -> AsyncEngine | None:
    """An engine for reads that may run beside the writes; None: read through `engine`.

    SQLite: a second engine on the same file, read-only, with plain (deferred)
    transactions: under WAL they read a snapshot while the one writer works,
    instead of queueing behind it for the single write connection. PostgreSQL:
    none, its connections read beside the writes already.
    """
    if sqlite_file(engine) is None:
        return None
    readers = create_async_engine(
        engine.url, connect_args={"timeout": 30}, pool_size=2, max_overflow=2, hide_parameters=True
    )

    @event.listens_for(readers.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA query_only=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    _end_transactions_of_invalidated_connections(readers)
    return readers


def one_of(column: Any, dialect: str, name: str = "ids") -> ColumnElement[bool]:
    """`column` is one of the list bound as `name`.

    On PostgreSQL one array parameter, so that every list length shares one prepared
    statement; elsewhere an IN list expanded at execution.
    """
    if dialect == "postgresql":
        values = bindparam(name, type_=ARRAY(column.type))
        return column == any_(values)  # type: ignore[no-any-return]
    return column.in_(bindparam(name, expanding=True))  # type: ignore[no-any-return]


def one_of_values(column: Any, dialect: str, values: Iterable[str]) -> ColumnElement[bool]:
    """`column` is one of `values`, bound as one parameter whatever their number: the
    statement's text (and SQLite's expression tree) does not grow with the list, and no
    list meets the databases' caps on bound parameters. PostgreSQL: `= ANY(array)`;
    SQLite: `IN (SELECT value FROM json_each(json))`."""
    if dialect == "postgresql":
        listed_array = bindparam(None, list(values), type_=ARRAY(column.type))
        return column == any_(listed_array)  # type: ignore[no-any-return]
    listed = func.json_each(bindparam(None, json.dumps(list(values)))).table_valued("value")
    return column.in_(select(listed.c.value))  # type: ignore[no-any-return]


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def make_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
