"""What a connector runs: a transaction written as steps, and the one loop that drives them.

SQLAlchemy's async layer costs a few hundred microseconds a statement (its execution
context, a greenlet switch, and on SQLite a hop to aiosqlite's thread and back), so a
transaction of seven small statements took 3-5 ms however little it did. The hot path
(accepting a Send, claiming and recording deliveries) is written instead as a generator of
steps: it yields a `Query` and receives its rows. A connector (one per driver, beside this
file) runs them on the driver's own connection.

A statement that differs between the databases (PostgreSQL's arrays, SQLite's IN lists) is
a `ByDialect`: the connector knows its database and takes that one's, so that no step
function needs to be told which database it runs on.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Executable

T = TypeVar("T")
S = TypeVar("S", covariant=True)
U = TypeVar("U")
Row = Sequence[Any]


class Mode(enum.Enum):
    ROWS = "rows"  # execute once, every row back
    WRITE = "write"  # execute once, nothing back
    MANY = "many"  # execute once per parameter set (executemany), nothing back
    EACH = "each"  # execute once per parameter set, the first row of each back, in order


class ByDialect(Generic[S]):
    """A statement (or a step) written per database, built once for each on first use.

    `build(dialect)` gives the one for a dialect name ("postgresql", "sqlite"), or None
    when that database has no such step (a NOTIFY, an advisory lock): it is then skipped,
    with no rows.
    """

    def __init__(self, build: Callable[[str], S | None]) -> None:
        self._build = build
        self._built: dict[str, S | None] = {}

    def on(self, dialect: str) -> S | None:
        try:
            return self._built[dialect]
        except KeyError:
            built = self._built[dialect] = self._build(dialect)
            return built

    def then(self, pick: Callable[[S], U]) -> ByDialect[U]:
        """A part of what this builds (one statement of a set built together), per database."""
        return ByDialect(lambda dialect: None if (s := self.on(dialect)) is None else pick(s))


def on_postgresql(statement: Executable) -> ByDialect[Executable]:
    """A statement only PostgreSQL runs (SQLite skips the step)."""
    return ByDialect(lambda dialect: statement if dialect == "postgresql" else None)


@dataclass(frozen=True)
class Query:
    """One step: a statement built once (module level), with its parameters."""

    statement: Executable | ByDialect[Executable]
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]] = field(default_factory=dict)
    mode: Mode = Mode.ROWS

    @staticmethod
    def write(statement: Executable | ByDialect[Executable], params: Mapping[str, Any]) -> Query:
        return Query(statement, params, Mode.WRITE)

    @staticmethod
    def many(
        statement: Executable | ByDialect[Executable], params: Sequence[Mapping[str, Any]]
    ) -> Query:
        return Query(statement, params, Mode.MANY)

    @staticmethod
    def each(
        statement: Executable | ByDialect[Executable], params: Sequence[Mapping[str, Any]]
    ) -> Query:
        return Query(statement, params, Mode.EACH)


# A transaction's steps: yields queries (or a query per database), receives each one's rows,
# returns its answer.
Steps = Generator["Query | ByDialect[Query]", list[Row], T]


@dataclass(frozen=True)
class Statement:
    """A query's statement for the connector's database, with the query's parameters."""

    statement: Executable
    query: Query


class Drive(Generic[T]):
    """The one drive loop: feeds each step its rows until the steps return.

    A connector iterates it for the statements to run and hands each one's rows back, with
    or without `await` (SQLite runs a whole transaction on a thread, asyncpg awaits each
    statement):

        drive = Drive(steps, dialect)
        for step in drive:
            drive.rows = execute(step)
        return drive.result

    A step this database has no statement for, and a MANY or EACH with no parameter set,
    run nothing and get no rows.
    """

    def __init__(self, steps: Steps[T], dialect: str) -> None:
        self._steps = steps
        self._dialect = dialect
        self.rows: list[Row] = []
        self.result: T

    def __iter__(self) -> Iterator[Statement]:
        steps, dialect = self._steps, self._dialect
        try:
            step = next(steps)
            while True:
                statement: Executable | None = None
                query = step.on(dialect) if isinstance(step, ByDialect) else step
                if query is not None and (query.params or query.mode in (Mode.ROWS, Mode.WRITE)):
                    given = query.statement
                    statement = given.on(dialect) if isinstance(given, ByDialect) else given
                rows: list[Row] = []
                if statement is not None:
                    assert query is not None
                    self.rows = []
                    yield Statement(statement, query)
                    rows = self.rows
                step = steps.send(rows)
        except StopIteration as done:
            self.result = done.value


class Connector(Protocol):
    """Runs a transaction's steps in one transaction of its own, committed on return (or,
    for a read connector, each statement on its own outside any transaction block).

    `make` builds the steps afresh for each try. A unique violation is raised as
    SQLAlchemy's IntegrityError, and a lost connection as its OperationalError, whatever
    the driver.

    `one_write`: the steps read, then write with one statement (a MANY or EACH is one: all
    or nothing) and end. Each of them may run on its own, outside a transaction block:
    the reads need no common snapshot, the write commits alone. A connector that would
    wrap them in BEGIN and COMMIT (asyncpg's: two more round trips) need not.

    `brief`: a few small statements, which a connector whose transactions otherwise go to
    a thread (SQLite's) may run on the calling thread: the hop costs more than they do.
    """

    dialect: str

    async def run(
        self, make: Callable[[], Steps[T]], *, brief: bool = False, one_write: bool = False
    ) -> T: ...

    def close(self) -> None: ...
