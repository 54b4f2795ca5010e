"""Device reads asked at the same time, read in one statement.

After a broadcast an HTTP process serves many devices at once, each asking the same kind
of question (which of my passes changed? is this my pass?). On PostgreSQL, alone, each
read paid a round trip, a pool checkout and its statement's fixed cost, most of what it
cost; read together they pay them once (store/passkit.py, `_each_asked`, has the figures).

No read waits for company: a question goes out at once while fewer than `in_flight` reads
are out. Only the questions that arrive meanwhile wait, and then go together, up to
MAX_QUESTIONS in one statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from passpush.store.connectors.connector import Connector, Steps

Q = TypeVar("Q")
A = TypeVar("A")

MAX_QUESTIONS = 64


class ReadBatches(Generic[Q, A]):
    """Answers questions with `read_each` (the answers to many questions, in their order,
    in one read), at most `in_flight` reads at a time."""

    def __init__(
        self,
        reads: Connector,
        read_each: Callable[[Sequence[Q]], Steps[list[A]]],
        *,
        in_flight: int,
        max_questions: int = MAX_QUESTIONS,
    ) -> None:
        self._reads = reads
        self._read_each = read_each
        self._in_flight = in_flight
        self._max = max_questions
        self._waiting: list[tuple[Q, asyncio.Future[A]]] = []
        self._out: set[asyncio.Task[None]] = set()

    async def read(self, question: Q) -> A:
        answer: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._waiting.append((question, answer))
        if len(self._out) < self._in_flight:
            self._send()
        return await answer

    def _send(self) -> None:
        batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
        task = asyncio.create_task(self._answer(batch))
        self._out.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._out.discard(task)
        if self._waiting and len(self._out) < self._in_flight:
            self._send()

    async def _answer(self, batch: list[tuple[Q, asyncio.Future[A]]]) -> None:
        questions = [question for question, _ in batch]
        try:
            answers = await self._reads.run(lambda: self._read_each(questions))
        except asyncio.CancelledError:  # the server stopping
            for _, answer in batch:
                answer.cancel()
            raise
        except Exception as error:
            for _, answer in batch:
                if not answer.done():  # its request may have gone (the device hung up)
                    answer.set_exception(error)
            return
        for (_, answer), found in zip(batch, answers, strict=True):
            if not answer.done():
                answer.set_result(found)
