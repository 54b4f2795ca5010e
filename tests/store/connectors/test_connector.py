"""Connectors run steps on each database: one drive loop, the database's own statements."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import TextClause, text

from passpush.store.connectors import connect, connect_standalone
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
    transactions, reads = connect(engine), connect_standalone(engine)
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


async def test_one_write_commits_alone_and_a_statement_after_it_is_refused(
    postgres_url: str,
) -> None:
    """asyncpg runs steps of reads and one write without BEGIN and COMMIT around them (two
    round trips more), on the engine's connections and on standalone ones: the write
    commits on its own. A statement after the write is refused."""
    engine = make_engine(postgres_url)
    transactions, standalone = connect(engine), connect_standalone(engine)
    table = f"one_write_{uuid.uuid4().hex[:8]}"
    create, insert = (
        text(f"CREATE TABLE {table} (n integer)"),
        text(f"INSERT INTO {table} VALUES (1)"),
    )

    def read_write_read() -> Steps[None]:
        yield Query(text(f"SELECT count(*) FROM {table}"))
        yield Query.write(insert, {})
        yield Query(text(f"SELECT count(*) FROM {table}"))

    def one(statement: TextClause) -> Callable[[], Steps[None]]:
        def steps() -> Steps[None]:
            yield Query.write(statement, {})

        return steps

    try:
        await transactions.run(one(create), one_write=True)
        await transactions.run(one(insert), one_write=True)
        for connector in (transactions, standalone):
            with pytest.raises(AssertionError, match="ran a statement after it"):
                await connector.run(read_write_read, one_write=True)
        async with engine.connect() as connection:
            rows = (await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar()
            await connection.execute(text(f"DROP TABLE {table}"))
            await connection.commit()
    finally:
        transactions.close()
        standalone.close()
        await engine.dispose()

    # The one insert, and each refused steps' write, each committed as it ran.
    assert rows == 3
