"""Steps run through SQLAlchemy: inside a larger unit of work, or for an in-memory database."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from passpush.store.connectors.connector import Drive, Mode, Row, Statement, Steps

T = TypeVar("T")


async def run_on_session(session: AsyncSession, steps: Steps[T]) -> T:
    """Runs the steps in the session's transaction."""
    drive = Drive(steps, session.get_bind().dialect.name)
    for step in drive:
        drive.rows = await _execute(session, step)
    return drive.result


async def _execute(session: AsyncSession, step: Statement) -> list[Row]:
    statement, query = step.statement, step.query
    if query.mode is Mode.ROWS:
        return list(await session.execute(statement, query.params))
    if query.mode in (Mode.WRITE, Mode.MANY):
        await session.execute(statement, query.params)
        return []
    rows: list[Row] = []
    for params in query.params:  # EACH
        result = await session.execute(statement, params)  # type: ignore[arg-type]
        rows.append(tuple(result.one()))
    return rows


class SessionConnector:
    """Through SQLAlchemy, for a database no other connection can see (in memory)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.dialect = engine.dialect.name

    async def run(
        self, make: Callable[[], Steps[T]], *, brief: bool = False, one_write: bool = False
    ) -> T:
        async with AsyncSession(self._engine) as session, session.begin():
            return await run_on_session(session, make())

    def close(self) -> None:
        pass
