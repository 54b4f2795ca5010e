"""Statements compiled for the drivers: what they bind, and the SQLAlchemy they rely on.

store/connectors/statements.py reads SQLAlchemy's compiler (the positional order of the
bound names, the expansion of IN lists) rather than its public API; pyproject.toml pins
SQLAlchemy exactly for it. These tests fail when the pin and the installed version part, or
when what it reads moves.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy
from sqlalchemy import bindparam, literal, select
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.dialects.sqlite import aiosqlite
from sqlalchemy.sql.compiler import ExpandedState, SQLCompiler

from passpush.store.connectors.connector import Query, Statement
from passpush.store.connectors.statements import CompiledStatements
from passpush.store.db import one_of
from passpush.store.models import DeliveryRow

PYPROJECT = Path(__file__).parents[3] / "pyproject.toml"


def test_sqlalchemy_is_the_version_pinned() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if d.startswith("sqlalchemy")]
    assert pin == f"sqlalchemy[asyncio]=={sqlalchemy.__version__}"


def test_the_compiler_internals_read_are_there() -> None:
    statement = select(DeliveryRow.id).where(one_of(DeliveryRow.id, "sqlite"))
    compiled = statement.compile(dialect=aiosqlite.dialect())
    assert isinstance(compiled, SQLCompiler)
    (bind,) = compiled.binds.values()
    assert (bind.key, bind.expanding, bind.required) == ("ids", True, True)
    state = compiled.construct_expanded_state({"ids": [1, 2]})
    assert isinstance(state, ExpandedState)
    assert state.positiontup == ["ids_1", "ids_2"]
    assert state.parameter_expansion == {"ids": ["ids_1", "ids_2"]}
    assert isinstance(state.processors, dict) and isinstance(state.parameters, dict)
    assert "IN (?, ?)" in state.statement


def _bound(dialect: sqlalchemy.engine.Dialect, query: Query) -> tuple[str, tuple[object, ...]]:
    step = Statement(query.statement, query)  # type: ignore[arg-type]
    return CompiledStatements(dialect).get(step).bind(query.params)  # type: ignore[arg-type]


def test_an_in_list_binds_one_value_a_position_on_sqlite() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    statement = select(DeliveryRow.id, literal("fixed")).where(
        one_of(DeliveryRow.id, "sqlite"),
        DeliveryRow.next_attempt_at <= bindparam("now", type_=DeliveryRow.next_attempt_at.type),
    )
    sql, values = _bound(aiosqlite.dialect(), Query(statement, {"ids": [7, 8, 9], "now": now}))
    assert sql.count("?") == 5
    # The literal first (it is selected), the list's items in order, the time as SQLite's
    # text in naive UTC (the column type's bind processor and the dialect's).
    assert values == ("fixed", 7, 8, 9, "2026-01-02 03:04:05.000000")


def test_a_list_binds_as_one_array_on_postgresql() -> None:
    statement = select(DeliveryRow.id).where(
        one_of(DeliveryRow.id, "postgresql"), DeliveryRow.lease_owner == bindparam("owner")
    )
    sql, values = _bound(asyncpg.dialect(), Query(statement, {"owner": "w", "ids": [7, 8]}))
    assert "$1" in sql and "$2" in sql and "$3" not in sql
    assert sorted(map(str, values)) == ["[7, 8]", "w"]
