"""Direct execution: a transaction's steps run on the driver's own connection.

connector.py says what a connector runs (queries as steps, the one drive loop);
statements.py compiles SQLAlchemy Core statements to the driver's SQL; one file per driver
runs them: sqlite.py (the stdlib's sqlite3), postgresql.py (asyncpg), session.py (through
SQLAlchemy, inside a larger unit of work or for an in-memory database).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.store.connectors.connector import Connector
from passpush.store.db import sqlite_file


def connect(engine: AsyncEngine) -> Connector:
    """The connector that runs transactions of its own on the engine's database."""
    if engine.dialect.name == "postgresql":
        from passpush.store.connectors.postgresql import AsyncpgConnector

        return AsyncpgConnector(engine)
    if database := sqlite_file(engine):
        from passpush.store.connectors.sqlite import SqliteConnector

        return SqliteConnector(engine, database)
    from passpush.store.connectors.session import SessionConnector

    return SessionConnector(engine)  # an in-memory database: only its own connection sees it


def connect_reads(engine: AsyncEngine) -> Connector:
    """The connector that runs read-only steps outside any transaction: each statement reads
    its own snapshot. For the PassKit web service, whose every request is a read or two by
    primary key or index: through SQLAlchemy's session each one cost more than the HTTP
    request around it."""
    if engine.dialect.name == "postgresql":
        from passpush.store.connectors.postgresql import AsyncpgReadConnector

        return AsyncpgReadConnector(engine)
    if database := sqlite_file(engine):
        from passpush.store.connectors.sqlite import SqliteReadConnector

        return SqliteReadConnector(engine, database)
    from passpush.store.connectors.session import SessionConnector

    return SessionConnector(engine)
