"""PostgreSQL's read connections: a device's read is one round trip."""

from __future__ import annotations

import uuid

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import text

from passpush.store.connectors import connect_standalone
from passpush.store.connectors.connector import Query, Steps
from passpush.store.db import asyncpg_dsn, make_engine


async def test_a_read_connection_goes_back_to_the_pool_without_another_statement(
    postgres_url: str,
) -> None:
    """asyncpg resets a connection a pool takes back (advisory locks, cursors, LISTEN,
    settings) with a statement of its own: a second round trip after every read, on
    connections whose reads change none of it."""
    marker = f"read {uuid.uuid4().hex}"

    def read() -> Steps[object]:
        rows = yield Query(text(f"SELECT '{marker}'"))
        return rows[0][0]

    engine = make_engine(postgres_url)
    reads = connect_standalone(engine)
    observer = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        assert await reads.run(read) == marker
        # Back in the pool: the read connection's last statement is still the read.
        last = await observer.fetch(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND query LIKE '%' || $1 || '%'",
            marker,
        )
        assert [row["query"] for row in last] == [f"SELECT '{marker}'"]
    finally:
        await observer.close()
        reads.close()
        await engine.dispose()
