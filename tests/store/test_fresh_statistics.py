"""PostgreSQL's planner statistics are refreshed as soon as a table changed by a tenth
since its last ANALYZE, not after autovacuum's nap: a Send right after loading passes
through the API ran at 0.36x the raw APNs loop on the plans chosen for empty tables."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.app import Application
from passpush.store.db import make_engine
from passpush.store.statistics import FreshStatistics, fresh_statistics
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from support import World, token

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url)
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE IF EXISTS scratch"))
        # Autovacuum kept out of it: whether it came first would be luck.
        await connection.execute(
            text("CREATE TABLE scratch (n integer) WITH (autovacuum_enabled = false)")
        )
    yield engine
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE scratch"))
    await engine.dispose()


async def _insert(engine: AsyncEngine, rows: int) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO scratch SELECT generate_series(1, :rows)"), {"rows": rows}
        )
    await engine.dispose()  # a backend's counters reach pg_stat when it ends, at the latest


async def _rows_planned(engine: AsyncEngine, table: str = "scratch") -> float:
    async with engine.connect() as connection:
        rows = await connection.scalar(
            text("SELECT reltuples FROM pg_class WHERE relname = :table"), {"table": table}
        )
    return float(rows)


async def test_a_table_changed_by_a_tenth_is_analyzed_and_then_left_alone(
    engine: AsyncEngine,
) -> None:
    statistics = fresh_statistics(engine)
    assert isinstance(statistics, FreshStatistics)
    await _insert(engine, 5_000)
    assert await _rows_planned(engine) <= 0  # never analyzed

    assert "scratch" in await statistics.analyze_stale()
    assert await _rows_planned(engine) == 5_000

    await _insert(engine, 1_000)  # 1,000 more rows: under 1,000 + a tenth of 5,000
    assert "scratch" not in await statistics.analyze_stale()
    await _insert(engine, 600)
    assert "scratch" in await statistics.analyze_stale()
    assert await _rows_planned(engine) == 6_600


async def test_the_server_keeps_statistics_fresh_on_postgresql_only(
    server: Application, engine: AsyncEngine
) -> None:
    assert isinstance(server.statistics, FreshStatistics)
    assert fresh_statistics(make_engine("sqlite+aiosqlite:///:memory:")) is None


async def test_an_import_has_its_tables_analyzed_before_it_answers(
    server: Application, engine: AsyncEngine, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    assert server.statistics is not None
    await server.statistics.stop()  # its sweep would come a second later: only the import's
    await World(passes).apple_template("loyalty")
    count = 2_000

    async def stream() -> AsyncIterator[ppb.ImportPassesRequest]:
        for start in range(0, count, 1_000):
            yield ppb.ImportPassesRequest(
                entries=[
                    ppb.ImportEntry(
                        **{"pass": ppb.Pass(id=f"p{n}", template_id="loyalty")},  # type: ignore[arg-type]
                        devices=[
                            ppb.ImportedDevice(
                                device_library_identifier=f"d{n}", push_token=token(n)
                            )
                        ],
                    )
                    for n in range(start, start + 1_000)
                ]
            )

    summary = await passes.ImportPasses(stream())

    assert summary.created == count
    assert await _rows_planned(engine, "passes") == count
    assert await _rows_planned(engine, "device_registrations") == count
