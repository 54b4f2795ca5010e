"""One engine and one session factory per process, for SQLite or PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, any_, bindparam, event, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/passpush.db"


def asyncpg_dsn(url: str) -> str:
    """A PostgreSQL SQLAlchemy URL as the plain DSN asyncpg.connect takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str = DEFAULT_DATABASE_URL, **kwargs: Any) -> AsyncEngine:
    if not is_sqlite(url):
        # No JIT: it compiles big statements for hundreds of milliseconds, where an
        # OLTP service wants its answer now. Custom plans: asyncpg prepares every statement,
        # and a generic plan made while the tables were small (sequential scans) would stay
        # while they grow; planning with the parameters costs microseconds.
        settings = {"jit": "off", "plan_cache_mode": "force_custom_plan"}
        connect_args = {"server_settings": settings}
        return create_async_engine(
            url, pool_size=10, max_overflow=10, connect_args=connect_args, **kwargs
        )
    database = make_url(url).database
    pool: dict[str, Any] = {}
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        # One connection, handed out in turn: the pool's queue serializes this process's
        # transactions, instead of SQLite's busy handler, which sleeps in growing steps (up
        # to 100 ms) while another connection of the same process holds the write lock.
        pool = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 60}
    engine = create_async_engine(url, connect_args={"timeout": 30}, **pool, **kwargs)
    _make_sqlite_transactions_immediate(engine)
    return engine


def _make_sqlite_transactions_immediate(engine: AsyncEngine) -> None:
    """Takes SQLite's write lock at BEGIN.

    With pysqlite's deferred transactions, a transaction that reads and then
    writes fails at once with "database is locked" when another writer got in
    between; BEGIN IMMEDIATE waits for the lock (busy timeout) instead. WAL lets
    readers go on while one writer works.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        configure_sqlite_connection(dbapi_connection)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def configure_sqlite_connection(dbapi_connection: Any) -> None:
    """A write connection's settings (store/direct.py opens one of its own too)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_read_sessions(
    sessions: async_sessionmaker[AsyncSession],
) -> tuple[async_sessionmaker[AsyncSession], AsyncEngine | None]:
    """Sessions for reads that may run beside the writes, and their own engine if any.

    SQLite: a second engine on the same file, read-only, with plain (deferred)
    transactions: under WAL they read a snapshot while the one writer works,
    instead of queueing behind it for the single write connection. PostgreSQL:
    the same sessions.
    """
    engine = sessions.kw["bind"]
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return sessions, None
    readers = create_async_engine(
        engine.url, connect_args={"timeout": 30}, pool_size=2, max_overflow=2
    )

    @event.listens_for(readers.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA query_only=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return make_sessions(readers), readers


def one_of(column: Any, dialect: str, name: str = "ids") -> ColumnElement[bool]:
    """`column` is one of the list bound as `name`.

    On PostgreSQL one array parameter, so that every list length shares one prepared
    statement; elsewhere an IN list expanded at execution.
    """
    if dialect == "postgresql":
        values = bindparam(name, type_=ARRAY(column.type))
        return column == any_(values)  # type: ignore[no-any-return]
    return column.in_(bindparam(name, expanding=True))  # type: ignore[no-any-return]


# SQLite's primary result codes for a database that may work again shortly: BUSY, LOCKED,
# IOERR, FULL (disk full), CANTOPEN, PROTOCOL.
_SQLITE_TRANSIENT = frozenset({5, 6, 10, 13, 14, 15})
# PostgreSQL's SQLSTATE classes and codes of the same kind: connection exceptions,
# serialization failures and deadlocks, insufficient resources (disk full, out of memory,
# too many connections), operator intervention (shutdown), lock not available.
_POSTGRES_TRANSIENT_CLASSES = ("08", "40", "53", "57")
_POSTGRES_TRANSIENT_CODES = frozenset({"55P03"})


def is_transient(error: BaseException) -> bool:
    """Whether the database failed for a reason that may pass (trying again may succeed),
    rather than refusing the statement itself."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    driver_error = _driver_error(error)
    if isinstance(driver_error, OSError):  # connection refused, reset, timed out
        return True
    sqlite_code = getattr(driver_error, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        return sqlite_code & 0xFF in _SQLITE_TRANSIENT
    sqlstate = getattr(driver_error, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _POSTGRES_TRANSIENT_CLASSES or sqlstate in _POSTGRES_TRANSIENT_CODES
    return False


def error_code(error: BaseException) -> str:
    """The database's own name for an error (SQLITE_FULL, SQLSTATE 53100), else its type's:
    enough to say why without the statement or its parameters."""
    driver_error = _driver_error(error)
    if name := getattr(driver_error, "sqlite_errorname", None):
        return str(name)
    if sqlstate := getattr(driver_error, "sqlstate", None):
        return f"SQLSTATE {sqlstate}"
    return type(driver_error).__name__


def _driver_error(error: BaseException) -> BaseException:
    if isinstance(error, DBAPIError) and error.orig is not None:
        return error.orig
    return error


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
