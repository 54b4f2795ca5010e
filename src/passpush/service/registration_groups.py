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
from collections.abc import Sequence

from passpush.domain.clock import Clock
from passpush.store.connectors.connector import Connector
from passpush.store.faults import is_passing_trouble
from passpush.store.registration_writes import NewRegistration, register_devices

log = logging.getLogger(__name__)

GROUP_MAX = 500  # registrations a transaction writes at most
BRIEF_MAX = 32  # registrations written on the event loop's thread at most (SQLite: ~0.3 ms)


class RegistrationGroups:
    def __init__(self, transactions: Connector, *, clock: Clock) -> None:
        self._transactions = transactions
        self._clock = clock
        self._waiting: list[tuple[NewRegistration, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def register(self, registration: NewRegistration) -> bool:
        """Writes the registration with whatever else is waiting; True when it is new."""
        return await self.submit(registration)

    def submit(self, registration: NewRegistration) -> asyncio.Future[bool]:
        """The registration's answer to come (True when it is new), with no task of its own:
        an HTTP process's registrations arrive by the thousand a second."""
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((registration, answer))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        return answer

    async def _write_waiting(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting[:GROUP_MAX], self._waiting[GROUP_MAX:]
            await self._write(group)

    async def _write(self, group: Sequence[tuple[NewRegistration, asyncio.Future[bool]]]) -> None:
        registrations = [registration for registration, _ in group]
        try:
            created = await self._transactions.run(
                lambda: register_devices(registrations, self._clock()),
                brief=len(group) <= BRIEF_MAX,
                one_statement=True,
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
        seen: set[tuple[str, str, str]] = set()
        for (registration, answer), new in zip(group, created, strict=True):
            key = (
                registration.project_id,
                registration.pass_id,
                registration.device_library_identifier,
            )
            # The same device twice in one group: the first is the new one.
            if not answer.done():
                answer.set_result(new and key not in seen)
            seen.add(key)
