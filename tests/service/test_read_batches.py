"""Reads asked at the same time go together: none waits for company, the ones asked
meanwhile share the next read, each gets its own answer or its batch's error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest
from sqlalchemy import bindparam, select

from passpush.service.read_batches import ReadBatches
from passpush.store.connectors import connect_standalone
from passpush.store.connectors.connector import Connector, Query, Steps
from passpush.store.db import make_engine

_ECHO = select(bindparam("questions"))


class Echoes:
    """Reads that answer each question with itself doubled, through a real database; the
    batches they were asked in."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def each(self, questions: Sequence[int]) -> Steps[list[int]]:
        self.batches.append(list(questions))
        if any(q < 0 for q in questions):
            raise ValueError("a negative question")
        rows = yield Query(_ECHO, {"questions": json.dumps(list(questions))})
        return [2 * q for q in json.loads(rows[0][0])]


@pytest.fixture
async def reads(database_url: str) -> Connector:
    engine = make_engine(database_url)
    connector = connect_standalone(engine)
    yield connector  # type: ignore[misc]
    connector.close()
    await engine.dispose()


async def test_the_first_goes_at_once_and_those_asked_meanwhile_together(
    reads: Connector,
) -> None:
    echoes = Echoes()
    batches = ReadBatches(reads, echoes.each, in_flight=1)

    answers = await asyncio.gather(*(batches.read(q) for q in range(1, 11)))

    assert answers == [2 * q for q in range(1, 11)]
    assert echoes.batches == [[1], list(range(2, 11))]


async def test_a_batch_holds_at_most_its_maximum(reads: Connector) -> None:
    echoes = Echoes()
    batches = ReadBatches(reads, echoes.each, in_flight=2, max_questions=3)

    answers = await asyncio.gather(*(batches.read(q) for q in range(1, 9)))

    assert answers == [2 * q for q in range(1, 9)]
    assert echoes.batches == [[1], [2], [3, 4, 5], [6, 7, 8]]


async def test_a_failed_read_fails_its_own_batch_only(reads: Connector) -> None:
    echoes = Echoes()
    batches = ReadBatches(reads, echoes.each, in_flight=1)

    first, *failing = [asyncio.ensure_future(batches.read(q)) for q in (1, 2, -3)]
    results = await asyncio.gather(first, *failing, return_exceptions=True)
    after = await batches.read(5)

    assert echoes.batches[:2] == [[1], [2, -3]]
    assert [r if isinstance(r, int) else type(r) for r in results] == [2, ValueError, ValueError]
    assert after == 10


async def test_a_question_whose_asker_left_does_not_hold_up_the_others(
    reads: Connector,
) -> None:
    echoes = Echoes()
    batches = ReadBatches(reads, echoes.each, in_flight=1)

    first = asyncio.ensure_future(batches.read(1))
    gone = asyncio.ensure_future(batches.read(2))
    kept = asyncio.ensure_future(batches.read(3))
    await asyncio.sleep(0)
    gone.cancel()

    assert (await first, await kept) == (2, 6)
    assert gone.cancelled()
