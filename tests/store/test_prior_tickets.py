"""A Send's retry is looked for by its (project, request id) pair, one probe of the unique
index each, whatever PostgreSQL's statistics say: in a fresh database the tickets grow
from nothing, and its statistics lag behind them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.store.connectors.connector import Query, Statement
from passpush.store.connectors.statements import CompiledStatements
from passpush.store.db import make_engine
from passpush.store.tickets import _BY_REQUEST_ID

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

TICKETS = 5_000


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url)
    async with engine.begin() as connection:
        # Statistics of an empty table, then the tickets, autovacuum kept out of it.
        await connection.execute(text("ALTER TABLE tickets SET (autovacuum_enabled = false)"))
        await connection.execute(text("ANALYZE tickets"))
        await connection.execute(
            text("INSERT INTO projects VALUES ('acme', 'Acme', now()) ON CONFLICT DO NOTHING")
        )
        await connection.execute(
            text(
                "INSERT INTO tickets (project_id, operation, target, content_header,"
                " content_body, state, total, pending, delivered, failed, skipped,"
                " request_id, request_fingerprint, created_at, updated_at)"
                " SELECT 'acme', 'send', '{}', '', 'Hi', 'pending', 1, 1, 0, 0, 0,"
                " 'r-' || n, 'f', now(), now() FROM generate_series(1, :n) AS n"
            ),
            {"n": TICKETS},
        )
    yield engine
    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE tickets RESET (autovacuum_enabled)"))
    await engine.dispose()


async def test_a_retry_is_looked_for_in_the_unique_index_whatever_the_statistics(
    engine: AsyncEngine,
) -> None:
    pairs = [("acme", f"r-{n}") for n in range(1, 65)]
    params = {"projects": [p for p, _ in pairs], "request_ids": [r for _, r in pairs]}
    statement = _BY_REQUEST_ID.on("postgresql")
    assert statement is not None
    compiled = CompiledStatements(engine.dialect).get(
        Statement(statement, Query(_BY_REQUEST_ID, params))
    )
    sql, values = compiled.bind(params)
    async with engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        plan = "\n".join(row[0] for row in await driver.fetch(f"EXPLAIN {sql}", *values))
        found = await driver.fetch(sql, *values)

    assert "uq_tickets_project_id" in plan, plan
    assert "Seq Scan on tickets" not in plan, plan
    assert sorted(row[2] for row in found) == sorted(r for _, r in pairs)
