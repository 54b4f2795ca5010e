"""Device registrations from the PassKit web service, written in groups.

After a pass goes out, its holders' devices register within seconds of each other. One
transaction each took SQLite's write lock once a registration, and with several HTTP
processes on one file the waits for it (SQLite's busy handler sleeps) made the
registrations crawl. So registrations that arrive while a transaction is being written
wait for the next one, which writes them all (a group commit, as Send has).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Generic, TypeVar

from passpush.domain.clock import Clock
from passpush.store.connectors.connector import Connector, Steps
from passpush.store.faults import is_passing_trouble

log = logging.getLogger(__name__)

GROUP_MAX = 500  # registrations a transaction writes at most
BRIEF_MAX = 32  # registrations written on the event loop's thread at most (SQLite: ~0.3 ms)

R = TypeVar("R")  # a registration
A = TypeVar("A")  # what it gets (whether it is new; which pass)


class RegistrationGroups(Generic[R, A]):
    """Registrations written a group at a time by `write` (store/registration_writes.py:
    each registration's answer, in order, from one statement)."""

    def __init__(
        self,
        connector: Connector,
        write: Callable[[Sequence[R], datetime], Steps[list[A]]],
        *,
        clock: Clock,
    ) -> None:
        self._connector = connector
        self._write_group = write
        self._clock = clock
        self._waiting: list[tuple[R, asyncio.Future[A]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def register(self, registration: R) -> A:
        """Writes the registration with whatever else is waiting."""
        return await self.submit(registration)

    def submit(self, registration: R) -> asyncio.Future[A]:
        """The registration's answer to come, with no task of its own: an HTTP process's
        registrations arrive by the thousand a second."""
        answer: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._waiting.append((registration, answer))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        return answer

    async def _write_waiting(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting[:GROUP_MAX], self._waiting[GROUP_MAX:]
            await self._write(group)

    async def _write(self, group: Sequence[tuple[R, asyncio.Future[A]]]) -> None:
        registrations = [registration for registration, _ in group]
        try:
            answers = await self._connector.run(
                lambda: self._write_group(registrations, self._clock()),
                brief=len(group) <= BRIEF_MAX,
                one_write=True,
            )
        except Exception as error:
            if len(group) > 1 and not is_passing_trouble(error):
                # One registration the database refuses (its pass deleted meanwhile) must
                # not fail the others: each is written alone.
                for one in group:
                    await self._write([one])
                return
            for _, answer in group:
                if not answer.done():
                    answer.set_exception(error)
            return
        for (_, answer), found in zip(group, answers, strict=True):
            if not answer.done():
                answer.set_result(found)
