"""Fetch confirmations: which Apple devices fetched the pass version a notification made.

APNs says a push was accepted, not that the holder saw anything: the device shows the
notification only once it has fetched the pass's new version. The fetch names no device
(`GET /v1/passes/{type}/{serial}` carries only the pass's token), but the serials query
just before it does (`GET /v1/devices/{device}/registrations/{type}?passesUpdatedSince=`),
and a device asks and then downloads on one keep-alive connection, to the same process.
So the process that answers devices keeps a `FetchLedger` of what it told which device,
and matches each download of a pass version to the device told about that version most
recently that has not fetched it since. A download with no such query before it is not
counted.

Confirmations go to a `FetchBatcher`, which hands them to the `FetchRecorder` in batches
(every 100 ms, or 500 at once): one transaction per batch, whatever its size. The
database keeps each delivery fetched once, so two processes (or a retry) that confirm
the same fetch count it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from passpush.store.connectors.connector import Connector
from passpush.store.fetches import FetchConfirmation, RecordedFetch, record_fetches

log = logging.getLogger(__name__)

__all__ = [
    "FetchBatcher",
    "FetchConfirmation",
    "FetchLedger",
    "FetchRecorder",
    "FetchSink",
    "PassVersion",
]

# How long a device's answer is kept for its download to match, and how many answers at
# most: a device downloads within seconds of asking; 200,000 entries are about 60 MB.
LEDGER_MAX_AGE = timedelta(minutes=15)
LEDGER_MAX_ENTRIES = 200_000


@dataclass(frozen=True)
class PassVersion:
    """A pass as a serials query named it to a device: which pass, at which update tag."""

    project_id: str
    pass_id: str
    update_tag: int


class FetchSink(Protocol):
    """Where the PassKit core hands its confirmations: it must not wait."""

    def add(self, confirmation: FetchConfirmation) -> None: ...


_Version = tuple[str, str, int]  # project_id, pass_id, update_tag


class FetchLedger:
    """What this process told which device, kept for `max_age` and `max_entries` at most
    (the oldest go first), to match the downloads that name no device."""

    def __init__(
        self, *, max_age: timedelta = LEDGER_MAX_AGE, max_entries: int = LEDGER_MAX_ENTRIES
    ) -> None:
        self._max_age = max_age
        self._max_entries = max_entries
        # (version, device) -> when told, oldest first.
        self._told: OrderedDict[tuple[_Version, str], datetime] = OrderedDict()
        # version -> its devices not yet matched, the most recently told last.
        self._by_version: dict[_Version, OrderedDict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._told)

    def told(
        self, device_library_identifier: str, versions: Iterable[PassVersion], at: datetime
    ) -> None:
        """A serials query answered `device` these pass versions at `at`."""
        for v in versions:
            version = (v.project_id, v.pass_id, v.update_tag)
            key = (version, device_library_identifier)
            self._told.pop(key, None)
            self._told[key] = at
            devices = self._by_version.setdefault(version, OrderedDict())
            devices.pop(device_library_identifier, None)
            devices[device_library_identifier] = None
        self._forget(at)

    def fetched(
        self, project_id: str, pass_id: str, update_tag: int, ticket_id: int, at: datetime
    ) -> FetchConfirmation | None:
        """A download of that pass version at `at`: the device told about it most recently
        and not matched since, or None when none was told (within the ledger's age)."""
        self._forget(at)
        version = (project_id, pass_id, update_tag)
        devices = self._by_version.get(version)
        if not devices:
            return None
        device, _ = devices.popitem(last=True)
        if not devices:
            del self._by_version[version]
        del self._told[(version, device)]
        return FetchConfirmation(project_id, pass_id, device, update_tag, ticket_id, at)

    def _forget(self, now: datetime) -> None:
        """Drops entries past their age, and the oldest past the ledger's size."""
        oldest = now - self._max_age
        while self._told:
            (version, device), told_at = next(iter(self._told.items()))
            if told_at >= oldest and len(self._told) <= self._max_entries:
                return
            del self._told[(version, device)]
            devices = self._by_version[version]
            del devices[device]
            if not devices:
                del self._by_version[version]


class FetchRecorder:
    """Records batches of confirmations, each batch in one transaction."""

    def __init__(
        self,
        transactions: Connector,
        *,
        on_recorded: Callable[[], None] = lambda: None,
    ) -> None:
        # On the driver's connection, not a session: in a storm of downloads the batches
        # through SQLAlchemy's session were most of the gRPC process's CPU.
        self._transactions = transactions
        # Wakes the status streams: tickets' counts and events changed.
        self._on_recorded = on_recorded

    async def record(self, confirmations: list[FetchConfirmation]) -> list[RecordedFetch]:
        """Marks the deliveries fetched (once each), appends FETCHED events, counts them on
        their tickets; returns what was recorded (not what was fetched before, nor what
        matches no delivered push)."""
        if not confirmations:
            return []
        recorded = await self._transactions.run(lambda: record_fetches(confirmations))
        if recorded:
            self._on_recorded()
        return recorded


_Key = tuple[int, str, str, str]  # ticket, project, pass, device


def _key_of(c: FetchConfirmation | RecordedFetch) -> _Key:
    return (c.ticket_id, c.project_id, c.pass_id, c.device_library_identifier)


class FetchBatcher:
    """Gathers confirmations from the PassKit core and records them in batches: every
    `interval` seconds, or at once when `batch_size` wait. At most `max_waiting` wait (a
    database that cannot be written loses the oldest, with a warning), and a batch that
    fails is tried again with the next.

    A confirmation that matched no delivered push is tried again `retries` times, 1, 2, 4…
    seconds later: a device may fetch before the worker has written that APNs took the
    push (its record waits for a batch; under a broadcast, for a busy database).
    """

    def __init__(
        self,
        record: Callable[[list[FetchConfirmation]], Awaitable[Sequence[RecordedFetch]]],
        *,
        interval: float = 0.1,
        batch_size: int = 500,
        max_waiting: int = 50_000,
        retries: int = 5,
    ) -> None:
        self._record = record
        self._interval = interval
        self._batch_size = batch_size
        self._max_waiting = max_waiting
        self._retries = retries
        self._waiting: list[tuple[FetchConfirmation, int]] = []  # with the tries made
        # Unmatched, to try again: (when, by the loop's clock; tries made; confirmation).
        self._later: list[tuple[float, int, FetchConfirmation]] = []
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dropped = 0
        # One flush at a time: a flush returns once what waited when it was called is written.
        self._flushing = asyncio.Lock()
        # Deliveries recorded as fetched already (the newest): a device that downloads its
        # pass again confirms nothing new, and must cost no write, nor its tries again.
        self._recorded: OrderedDict[_Key, None] = OrderedDict()
        # Deliveries whose first confirmation waits (to be written, or tried again): the
        # same device fetching again meanwhile adds nothing (in a storm it fetches often).
        self._pending: set[_Key] = set()

    RECORDED_KEPT = 200_000

    def add(self, confirmation: FetchConfirmation) -> None:
        key = _key_of(confirmation)
        if key not in self._recorded and key not in self._pending:
            self._pending.add(key)
            self._add(confirmation, 0)

    def _add(self, confirmation: FetchConfirmation, tries: int) -> None:
        self._waiting.append((confirmation, tries))
        if len(self._waiting) > self._max_waiting:
            dropped = self._waiting[: len(self._waiting) - self._max_waiting]
            del self._waiting[: len(dropped)]
            self._pending.difference_update(_key_of(c) for c, _ in dropped)
            self._dropped += len(dropped)
        if len(self._waiting) >= self._batch_size:
            self._full.set()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="fetch confirmations")

    async def stop(self) -> None:
        """Stops, recording what waits first (not what waits to be tried again)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except Exception:
            log.exception("recording fetch confirmations at shutdown failed; they are lost")
        self._pending.difference_update(_key_of(c) for _, _, c in self._later)
        self._later.clear()

    async def flush(self) -> None:
        """Records what waits now, in batches of `batch_size`."""
        async with self._flushing:
            while self._waiting:
                batch = self._waiting[: self._batch_size]
                del self._waiting[: len(batch)]
                try:
                    recorded = await self._record([c for c, _ in batch])
                except BaseException:
                    self._waiting[:0] = batch  # tried again with the next
                    raise
                matched = {_key_of(r) for r in recorded}
                self._remember(matched)
                self._try_later(batch, matched)

    def _remember(self, recorded: set[_Key]) -> None:
        self._pending -= recorded
        for key in recorded:
            self._recorded[key] = None
            self._recorded.move_to_end(key)
        while len(self._recorded) > self.RECORDED_KEPT:
            self._recorded.popitem(last=False)

    def _try_later(self, batch: list[tuple[FetchConfirmation, int]], matched: set[_Key]) -> None:
        now = asyncio.get_running_loop().time()
        for confirmation, tries in batch:
            key = _key_of(confirmation)
            if tries < self._retries and key not in matched and key not in self._recorded:
                self._later.append((now + 2.0**tries, tries + 1, confirmation))
            else:
                self._pending.discard(key)  # recorded, or given up
        if len(self._later) > self._max_waiting:  # the oldest go: fetches long unmatched
            dropped = self._later[: len(self._later) - self._max_waiting]
            del self._later[: len(dropped)]
            self._pending.difference_update(_key_of(c) for _, _, c in dropped)
            self._dropped += len(dropped)

    def _due(self) -> None:
        """Puts the confirmations due to be tried again back with those waiting."""
        now = asyncio.get_running_loop().time()
        due = [(c, tries) for at, tries, c in self._later if at <= now]
        if due:
            self._later = [entry for entry in self._later if entry[0] > now]
            for confirmation, tries in due:
                self._add(confirmation, tries)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._full.wait()
            self._full.clear()
            self._due()
            if self._dropped:
                log.warning("dropped %d fetch confirmations: too many waited", self._dropped)
                self._dropped = 0
            try:
                await self.flush()
            except Exception:
                log.exception("recording fetch confirmations failed; retrying in 1 s")
                await asyncio.sleep(1.0)
