"""SQLAlchemy Core statements compiled once per database, bound as the driver takes them.

The statements stay SQLAlchemy expressions, compiled once per connector; their bound values
go through the dialect's own bind processors, and the rows read through its result
processors, as SQLAlchemy's own execution would.

This is the one place that reads SQLAlchemy's compiler rather than its public API: the
positional order of the bound names (`ExpandedState.positiontup`) and the expansion of IN
lists (`SQLCompiler.construct_expanded_state`). pyproject.toml pins SQLAlchemy exactly for
it, and tests/store/connectors/test_statements.py fails if either moves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

from passpush.store.connectors.connector import Row, Statement


class CompiledStatements:
    """The statements a connector ran, compiled for its database, by statement and the
    keys bound."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._compiled: dict[tuple[int, tuple[str, ...]], tuple[Executable, Compiled]] = {}

    def get(self, step: Statement) -> Compiled:
        params = step.query.params
        first = params if isinstance(params, Mapping) else params[0]
        keys = tuple(first)
        cache_key = (id(step.statement), keys)
        found = self._compiled.get(cache_key)
        # The statement is kept with its compilation, so that its id is not reused.
        if found is None:
            found = (step.statement, Compiled(step.statement, self._dialect, keys))
            self._compiled[cache_key] = found
        return found[1]


class Compiled:
    """A statement compiled for one dialect, and how its values are bound."""

    def __init__(self, statement: Executable, dialect: Dialect, keys: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
        assert isinstance(compiled, SQLCompiler)
        self._compiled = compiled
        # What each value goes through before the driver, by bound name (JSON to text,
        # datetimes to SQLite's text, ...), as SQLAlchemy's execution would.
        self._processors = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect))
        }
        # And what each column read goes through (SQLite's text back to datetimes, ...).
        columns = getattr(statement, "exported_columns", ())
        self._results = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        ]
        if not any(self._results):
            self._results = []
        # IN lists given with each call; one written in the statement (`in_([...])`) is fixed.
        self._expanding = [
            name for name, bind in compiled.binds.items() if bind.expanding and bind.required
        ]
        self._plans: dict[tuple[int, ...], _Plan] = {}

    def rows(self, rows: Sequence[Row]) -> list[Row]:
        """Rows read, their values as SQLAlchemy would give them."""
        if not self._results:
            return list(rows)
        return [
            tuple(p(v) if p else v for p, v in zip(self._results, row, strict=True)) for row in rows
        ]

    def bind(self, params: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        """The SQL (IN lists expanded to their lengths) and its positional values."""
        return self._plan(params).bind(params)

    def bind_many(self, params: Sequence[Mapping[str, Any]]) -> tuple[str, list[tuple[Any, ...]]]:
        """One SQL for every parameter set (no IN lists here), and their values."""
        plan = self._plan(params[0])
        return plan.sql, plan.bind_rows(params)

    def _plan(self, params: Mapping[str, Any]) -> _Plan:
        """How parameters of this shape (the lengths of the IN lists) bind, worked out by
        SQLAlchemy once per shape: asking it on every call cost more than the query."""
        shape = tuple(len(params[name]) for name in self._expanding)
        plan = self._plans.get(shape)
        if plan is None:
            state = self._compiled.construct_expanded_state(dict(params))
            assert state.positiontup is not None
            source: dict[str, tuple[str, int | None]] = {n: (n, None) for n in state.positiontup}
            for name, expanded in state.parameter_expansion.items():
                if name in params:
                    source |= {element: (name, i) for i, element in enumerate(expanded)}
            processors = {**self._processors, **state.processors}
            slots: list[_Slot] = [(*source[n], processors.get(n)) for n in state.positiontup]
            # Values that are part of the statement (literals bound as parameters).
            fixed = {n: v for n, v in state.parameters.items() if n not in params}
            plan = self._plans[shape] = _Plan(state.statement, slots, fixed)
        return plan


# A positional value: the parameter it comes from, its index in that parameter's list (an
# expanded IN list) or None, and its bind processor.
_Slot = tuple[str, int | None, Callable[[Any], Any] | None]


@dataclass(frozen=True)
class _Plan:
    sql: str
    slots: list[_Slot]
    fixed: dict[str, Any]

    def bind(self, params: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        values = []
        for name, index, processor in self.slots:
            value = params[name] if name in params else self.fixed[name]
            if index is not None:
                value = value[index]
            values.append(processor(value) if processor is not None else value)
        return self.sql, tuple(values)

    def bind_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """Each row's values. A value that is the very object the row before had is not
        processed again: a batch's rows share their time, whose conversion (to naive UTC,
        then to SQLite's text) was a tenth of an import's CPU."""
        last: list[tuple[Any, Any]] = [(_UNSEEN, None)] * len(self.slots)
        bound = []
        for params in rows:
            values = []
            for slot, (name, index, processor) in enumerate(self.slots):
                value = params[name] if name in params else self.fixed[name]
                if index is not None:
                    value = value[index]
                if processor is not None:
                    seen, processed = last[slot]
                    if value is not seen:
                        processed = processor(value)
                        last[slot] = (value, processed)
                    value = processed
                values.append(value)
            bound.append(tuple(values))
        return bound


_UNSEEN = object()
