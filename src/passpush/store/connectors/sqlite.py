"""SQLite: the stdlib's sqlite3 on connections of this connector's own.

A transaction runs whole in one call on a thread, while this process's one SQLAlchemy write
connection is held, so that no other writer of the process is in between (~0.2 ms for a
Send). Reads run on a read-only connection on the calling thread.
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
from passpush.store.db import configure_sqlite_connection

T = TypeVar("T")

_UNIQUE_VIOLATIONS = {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}


class SqliteConnector:
    """Transactions on a sqlite3 connection of its own, each whole on an executor thread."""

    dialect = "sqlite"

    def __init__(self, engine: AsyncEngine, database: str) -> None:
        self._engine = engine
        self._database = database
        self._statements = CompiledStatements(engine.dialect)
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
                drive = Drive(make(), self.dialect)
                for step in drive:
                    drive.rows = self._execute(connection, step)
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
                self._database, isolation_level=None, check_same_thread=False, timeout=30
            )
            try:
                configure_sqlite_connection(connection)
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


class SqliteReadConnector:
    """Reads on a read-only sqlite3 connection of their own, on the calling thread: an
    indexed read takes tens of microseconds, less than a hop to another thread and back
    (which under a busy GIL took milliseconds). Under WAL it never waits for the writer."""

    dialect = "sqlite"

    def __init__(self, engine: AsyncEngine, database: str) -> None:
        self._database = database
        self._statements = CompiledStatements(engine.dialect)
        self._connection: sqlite3.Connection | None = None

    async def run(self, make: Callable[[], Steps[T]]) -> T:
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
