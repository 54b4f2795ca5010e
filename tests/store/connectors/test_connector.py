"""Connectors run steps on each database: one drive loop, the database's own statements."""

from __future__ import annotations

from sqlalchemy import text

from passpush.store.connectors import connect, connect_reads
from passpush.store.connectors.connector import ByDialect, Query, Steps, on_postgresql
from passpush.store.db import make_engine

_SELECT_ONE = text("SELECT 1")
_DATABASE_NAME = ByDialect(
    lambda dialect: text("SELECT 'pg'") if dialect == "postgresql" else text("SELECT 'lite'")
)


def _steps() -> Steps[list[object]]:
    seen: list[object] = []
    seen.append((yield Query(on_postgresql(_SELECT_ONE))))  # skipped on SQLite: no rows
    seen.append((yield Query(_DATABASE_NAME)))
    seen.append((yield Query.many(_SELECT_ONE, [])))  # no parameter set: nothing runs
    # A whole step chosen per database, with parameters of its own shape.
    seen.append(
        (
            yield ByDialect(
                lambda dialect: Query(text("SELECT CAST(:n AS integer)"), {"n": len(dialect)})
            )
        )
    )
    return seen


async def test_each_connector_runs_its_databases_statements(database_url: str) -> None:
    engine = make_engine(database_url)
    transactions, reads = connect(engine), connect_reads(engine)
    try:
        postgresql = engine.dialect.name == "postgresql"
        assert transactions.dialect == reads.dialect == engine.dialect.name
        expected = [
            [(1,)] if postgresql else [],
            [("pg",)] if postgresql else [("lite",)],
            [],
            [(len(engine.dialect.name),)],
        ]
        assert [list(map(tuple, rows)) for rows in await transactions.run(_steps)] == expected
        assert [list(map(tuple, rows)) for rows in await reads.run(_steps)] == expected
    finally:
        transactions.close()
        reads.close()
        await engine.dispose()
