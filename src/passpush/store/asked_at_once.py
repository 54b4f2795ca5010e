"""Many devices' questions answered in one statement (PostgreSQL): each question a row of
bound arrays, each answer a `LATERAL` subquery over it, each row of the answers numbered
with its question's number."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVarTuple

from sqlalchemy import Select, bindparam, column, func, select, true
from sqlalchemy.dialects.postgresql import ARRAY

Ts = TypeVarTuple("Ts")


def unnested(**arrays: Any) -> Any:
    """PostgreSQL: many devices' questions as rows, each array bound (by its name) a column
    of them, numbered from 1 as `question`."""
    return (
        func.unnest(*(bindparam(name, type_=ARRAY(kind)) for name, kind in arrays.items()))
        .table_valued(
            *(column(name, kind) for name, kind in arrays.items()), with_ordinality="question"
        )
        .render_derived(name="asked")
    )


def each_asked(asked: Any, answer: Select[*Ts]) -> Select[Any]:
    """PostgreSQL: `answer` (written over `asked`'s columns) for each question, in one
    statement: each row the question's number, then the answer's columns.

    An HTTP process's device requests asked at the same time are read together this way
    (service/read_batches.py): alone, a read's round trip, its pool checkout and its
    statement's fixed cost were most of what it cost. 5,000 serials queries, 8 at a time
    (asyncpg, 2026-12-04): 0.11-0.16 ms of Python and 0.06-0.07 ms of PostgreSQL each
    alone; in twos 0.06 and 0.05 ms, in fours 0.03 and 0.025 ms."""
    found = answer.lateral("found")
    return select(asked.c.question, found).select_from(asked).join(found, true())


def answers_of(questions: int, rows: Sequence[Sequence[Any]]) -> list[list[Sequence[Any]]]:
    """Each question's rows, in the order asked (a row's question number dropped)."""
    answers: list[list[Sequence[Any]]] = [[] for _ in range(questions)]
    for row in rows:
        answers[row[0] - 1].append(row[1:])
    return answers
