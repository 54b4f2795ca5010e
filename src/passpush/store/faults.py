"""Which database failures are passing trouble of the database, not of the request.

A lost connection, a server shutting down or out of resources, a full disk, a file that
cannot be written now: the same call may well succeed in a moment, or on another
replica. The transports answer these as Unavailable (gRPC UNAVAILABLE, HTTP 503), and a
group transaction that fails this way is not split up to find a culprit: there is none.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import exc, text

from passpush.domain.errors import Unavailable
from passpush.store.connectors.connector import Query, Steps

# SQLite's primary result codes (the low byte of an extended code) for a database that is
# busy or locked past the busy timeout, read-only, failing I/O, full, cannot be opened, or
# lost a race on its WAL index (PROTOCOL).
_SQLITE_UNAVAILABLE = {5, 6, 8, 10, 13, 14, 15}

# PostgreSQL SQLSTATEs: 08 connection exceptions, 40 serialization failures and deadlocks,
# 53 insufficient resources (disk full, out of memory, too many connections), 55P03 a lock
# not available, 57P operator intervention (admin or crash shutdown, cannot connect now),
# 25006 a read-only transaction (a standby, during a failover).
_POSTGRES_UNAVAILABLE = ("08", "40", "53", "55P03", "57P", "25006")


# What a call to the database may raise, of which unavailable_from tells passing trouble
# (for handlers chosen by the class of the error).
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    exc.SQLAlchemyError,
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    ConnectionError,
)

# A row every migrated database has, rewritten to itself: a real write that changes nothing.
_REWRITE_MIGRATION_STAMP = text("UPDATE alembic_version SET version_num = version_num")


def write_check() -> Steps[None]:
    """A transaction that must write to the database, and changes nothing."""
    yield Query.write(_REWRITE_MIGRATION_STAMP, {})


def unavailable_from(error: BaseException) -> Unavailable | None:
    """Unavailable if `error` is the database being out of reach or unable to write for
    now; None for anything else. The message names no driver: it goes on the wire."""
    return database_unavailable() if is_passing_trouble(error) else None


def database_unavailable() -> Unavailable:
    """What a caller is told when the database cannot take its call for now."""
    return Unavailable(
        "the database cannot take this call now; retry later", reason="DATABASE_UNAVAILABLE"
    )


def is_passing_trouble(error: BaseException) -> bool:
    """Whether the database failed for a reason that may pass (the same call may succeed
    in a moment), rather than refusing the statement itself."""
    return any(_is_passing_trouble(cause) for cause in _causes(error))


def error_code(error: BaseException) -> str:
    """The database's own name for an error (SQLITE_FULL, SQLSTATE 53100), else its type's:
    enough to say why without the statement or its parameters."""
    driver_error = error.orig if isinstance(error, exc.DBAPIError) and error.orig else error
    if name := getattr(driver_error, "sqlite_errorname", None):
        return str(name)
    if sqlstate := getattr(driver_error, "sqlstate", None):
        return f"SQLSTATE {sqlstate}"
    return type(driver_error).__name__


def _is_passing_trouble(error: BaseException) -> bool:
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(error, ConnectionError):  # refused, reset, broken pipe
        return True
    if isinstance(error, sqlite3.Error):
        return (getattr(error, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_UNAVAILABLE
    sqlstate = getattr(error, "sqlstate", None)  # asyncpg's errors, and SQLAlchemy's copies
    if isinstance(sqlstate, str):
        return sqlstate.startswith(_POSTGRES_UNAVAILABLE)
    # asyncpg's InterfaceError for a call on a connection the server closed (SQLAlchemy
    # tells a disconnect by the same words).
    return type(error).__module__.startswith("asyncpg") and "connection is closed" in str(error)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error, the driver's error SQLAlchemy wrapped, and what each was raised from."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        cause = pending.pop()
        if cause is None or id(cause) in seen:
            continue
        seen.add(id(cause))
        yield cause
        orig = getattr(cause, "orig", None)
        pending += [cause.__cause__, orig if isinstance(orig, BaseException) else None]
