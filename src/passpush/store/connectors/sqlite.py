"""SQLite: the stdlib's sqlite3 on connections of this connector's own.

A transaction runs whole in one call, while this process's one SQLAlchemy write connection
is held, so that no other writer of the process is in between (~0.2 ms for a Send), and in
its process's turn (store/sqlite_write_turns.py), so that other processes' writers wait for it
without sleeping: on a thread, or, for a brief one whose write lock is free at once, on the
calling thread. Reads run on a read-only connection on the calling thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.store.connectors.connector import Drive, Mode, Row, Statement, Steps
from passpush.store.connectors.statements import CompiledStatements
from passpush.store.db import (
    SQLITE_BUSY_TIMEOUT,
    configure_sqlite_connection,
    pooled_connection,
)
from passpush.store.sqlite_write_turns import WriteTurns

T = TypeVar("T")

_UNIQUE_VIOLATIONS = {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
_SQLITE_BUSY = 5


class SqliteConnector:
    """Transactions on a sqlite3 connection of its own, each whole in one call."""

    dialect = "sqlite"

    def __init__(
        self,
        engine: AsyncEngine,
        database: str,
        *,
        busy_timeout: float = SQLITE_BUSY_TIMEOUT,
        turn_timeout: float = SQLITE_BUSY_TIMEOUT,
    ) -> None:
        """A transaction on the thread waits up to `turn_timeout` for its process's turn
        (store/sqlite_write_turns.py), then up to `busy_timeout` for the write lock."""
        self._engine = engine
        self._database = database
        self._turn_timeout = turn_timeout
        self._busy_timeout_ms = round(busy_timeout * 1000)
        self._statements = CompiledStatements(engine.dialect)
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._turns = WriteTurns(database)

    async def run(
        self, make: Callable[[], Steps[T]], *, brief: bool = False, one_write: bool = False
    ) -> T:
        # Holding the engine's one connection (pool of one) keeps the process's other
        # writers out: they would otherwise wait on SQLite's busy handler, which sleeps.
        async with pooled_connection(self._engine):
            if brief and self._lock.acquire(blocking=False):
                # On this thread: the hop to an executor thread and back took about 0.6 ms
                # of a 1 ms registration group, waiting for the GIL. Only if no other
                # process holds the write lock, for the loop must never wait for it.
                try:
                    return self._transaction(make, wait=False)
                except _WriteLockTaken:
                    pass
                finally:
                    self._lock.release()
            return await asyncio.get_running_loop().run_in_executor(None, self._on_thread, make)

    def _on_thread(self, make: Callable[[], Steps[T]]) -> T:
        with self._lock:
            return self._transaction(make, wait=True)

    def _transaction(self, make: Callable[[], Steps[T]], *, wait: bool) -> T:
        """The whole transaction, under the lock; `wait=False` raises _WriteLockTaken at
        once if another process writes."""
        # After its timeout's worth of waiting for the turn, on without it: SQLite's lock
        # decides, as before (the process holding the turn may hang).
        turn = self._turns.take(within=self._turn_timeout if wait else 0.0)
        if not (turn or wait):
            raise _WriteLockTaken
        try:
            connection = self._connect()
            if wait:
                connection.execute("BEGIN IMMEDIATE")
            elif not _begun_at_once(connection, self._busy_timeout_ms):
                raise _WriteLockTaken
            drive = Drive(make(), self.dialect)
            for step in drive:
                drive.rows = self._execute(connection, step)
            connection.execute("COMMIT")
        except _WriteLockTaken:
            raise
        except exc.IntegrityError:  # a request id raced another: the connection is fine
            if connection.in_transaction:  # SQLite ends some failed ones itself
                connection.execute("ROLLBACK")
            raise
        except BaseException:
            # Whatever else failed, the next transaction gets a new connection: one
            # opened while the file could not be written stays read-only for good.
            self._close()
            raise
        finally:
            if turn:
                self._turns.give_back()
        return drive.result

    def _execute(self, connection: sqlite3.Connection, step: Statement) -> list[Row]:
        query = step.query
        compiled = self._statements.get(step)
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
            if error.sqlite_errorname in _UNIQUE_VIOLATIONS:
                raise exc.IntegrityError(str(step.statement), None, error) from error
            raise

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            # Used by one thread at a time (the lock), whichever of the executor's it is.
            connection = sqlite3.connect(
                self._database,
                isolation_level=None,
                check_same_thread=False,
                timeout=self._busy_timeout_ms / 1000,
            )
            try:
                configure_sqlite_connection(connection, self._busy_timeout_ms)
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
        self._turns.close()


class _WriteLockTaken(Exception):
    """Another process holds SQLite's write lock: the transaction goes to a thread."""


def _begun_at_once(connection: sqlite3.Connection, busy_timeout_ms: int) -> bool:
    """BEGIN IMMEDIATE without waiting: False if another process holds the write lock."""
    connection.execute("PRAGMA busy_timeout = 0")
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode & 0xFF == _SQLITE_BUSY:
            return False
        raise
    finally:
        connection.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    return True


class SqliteReadConnector:
    """Reads on a read-only sqlite3 connection of their own, on the calling thread: an
    indexed read takes tens of microseconds, less than a hop to another thread and back
    (which under a busy GIL took milliseconds). Under WAL it never waits for the writer."""

    dialect = "sqlite"

    def __init__(self, engine: AsyncEngine, database: str) -> None:
        self._database = database
        self._statements = CompiledStatements(engine.dialect)
        self._connection: sqlite3.Connection | None = None

    async def run(
        self, make: Callable[[], Steps[T]], *, brief: bool = False, one_write: bool = False
    ) -> T:
        connection = self._connect()
        try:
            drive = Drive(make(), self.dialect)
            for step in drive:
                compiled = self._statements.get(step)
                sql, values = compiled.bind(step.query.params)  # type: ignore[arg-type]
                drive.rows = compiled.rows(connection.execute(sql, values).fetchall())
        except sqlite3.Error:
            self.close()  # the next read opens the file again
            raise
        return drive.result

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
