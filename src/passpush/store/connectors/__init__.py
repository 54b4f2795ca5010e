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


def connect_standalone(engine: AsyncEngine) -> Connector:
    """The connector that runs statements each on its own, outside any transaction block:
    a read sees its own snapshot, a write commits alone (PostgreSQL; on SQLite it only
    reads). For the PassKit web service, whose every request is a statement or two by key:
    through SQLAlchemy's session each one cost more than the HTTP request around it."""
    if engine.dialect.name == "postgresql":
        from passpush.store.connectors.postgresql import AsyncpgStandaloneConnector

        return AsyncpgStandaloneConnector(engine)
    if database := sqlite_file(engine):
        from passpush.store.connectors.sqlite import SqliteReadConnector

        return SqliteReadConnector(engine, database)
    from passpush.store.connectors.session import SessionConnector

    return SessionConnector(engine)
