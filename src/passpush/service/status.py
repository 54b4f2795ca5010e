"""Delivery status for subscribers: WatchTicket and StreamDeliveryEvents, woken by changes.

Nothing here polls the database on a timer. Whatever changes tickets or
events publishes to the ChangeFeed: this process's worker when it records
outcomes, and on PostgreSQL every other replica through LISTEN/NOTIFY. A
woken stream reads once, at most `interval` after its last read, so a
million-push broadcast costs a subscriber ten reads a second, not a million.

Back-pressure: a ticket watcher holds only the newest state (a slow client
skips states, never piles them up), and an event stream reads its next page
only once the previous one was taken by the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Collection
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.domain.clock import Clock, utcnow
from passpush.domain.errors import DomainError, FieldViolation, NotFound, Unavailable
from passpush.domain.model import DeliveryEvent, DeliveryOutcome, Target, Ticket
from passpush.domain.validation import (
    OUTCOMES_MAX,
    check_list_length,
    check_target,
    raise_if_any,
)
from passpush.store.audience import resolve_audience
from passpush.store.events import EventStore
from passpush.store.google_messages import GoogleMessageLog
from passpush.store.tickets import TicketStore

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.1  # seconds: at most ten reads (and messages) a second per stream
EVENT_PAGE = 500
DEFAULT_EVENT_RETENTION = timedelta(days=7)


class ChangeFeed:
    """Says that tickets or events changed, so that waiting streams read again."""

    def __init__(self) -> None:
        self._generation = 0
        self._changed = asyncio.Event()
        self._closed = False

    @property
    def generation(self) -> int:
        return self._generation

    def publish(self) -> None:
        self._generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """Ends every waiting stream with UNAVAILABLE: the server is stopping."""
        self._closed = True
        self.publish()

    async def wait_past(self, generation: int) -> None:
        """Returns once anything changed after `generation` was read."""
        while self._generation == generation and not self._closed:
            await self._changed.wait()
        if self._closed:
            raise _shutting_down()


class _Latest:
    """One watcher's mailbox: the newest state not yet sent, never a queue."""

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        self.sent: Ticket | None = None
        self._newest: Ticket | None = None
        self._error: DomainError | None = None
        self._ready = asyncio.Event()

    def fail(self, error: DomainError) -> None:
        self._error = error
        self._ready.set()

    def offer(self, ticket: Ticket) -> None:
        if ticket.project_id != self.project_id:
            self.fail(NotFound("ticket", str(ticket.id)))  # another project's: as if absent
        elif self.sent is None or not _same(self.sent, ticket):
            self._newest = ticket
            self._ready.set()

    async def take(self) -> Ticket:
        await self._ready.wait()
        if self._error is not None:
            raise self._error
        self._ready.clear()
        assert self._newest is not None
        self.sent, self._newest = self._newest, None
        return self.sent


def _same(a: Ticket, b: Ticket) -> bool:
    return (a.state, a.counts) == (b.state, b.counts)


class TicketWatch:
    """WatchTicket for every stream of this server: one reader reads all watched tickets
    at once, when something changed or streams joined (their first message), at most once
    every `interval`, whatever the number of streams."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        feed: ChangeFeed,
        *,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self._sessions = sessions
        self._feed = feed
        self._interval = interval
        self._watchers: dict[int, set[_Latest]] = defaultdict(set)
        self._joined = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._stopped = False

    async def watch(self, project_id: str, ticket_id: int) -> AsyncIterator[Ticket]:
        """The ticket now, then each change of its state or counts; ends when it is terminal."""
        if self._stopped:
            raise _shutting_down()
        mailbox = _Latest(project_id)
        self._watchers[ticket_id].add(mailbox)
        self._joined.set()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_on_change(), name="ticket watch")
        try:
            while True:
                ticket = await mailbox.take()
                yield ticket
                if ticket.state.is_terminal:
                    return
        finally:
            watchers = self._watchers.get(ticket_id)
            if watchers is not None:
                watchers.discard(mailbox)
                if not watchers:
                    del self._watchers[ticket_id]

    def watched(self) -> set[int]:
        """The tickets that streams watch now."""
        return set(self._watchers)

    async def stop(self) -> None:
        """Ends every watch with UNAVAILABLE: the server is stopping."""
        self._stopped = True
        for watchers in self._watchers.values():
            for mailbox in watchers:
                mailbox.fail(_shutting_down())
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read_on_change(self) -> None:
        generation = self._feed.generation
        while self._watchers:
            self._joined.clear()
            # Only the watchers this read is for: one that joins while it runs waits for the
            # next read, since this one may not include its ticket and would call it absent.
            asked = {ticket_id: list(watchers) for ticket_id, watchers in self._watchers.items()}
            try:
                async with self._sessions() as session:
                    tickets = await TicketStore(session).get_many(list(asked))
            except Exception:
                log.exception("reading watched tickets failed; trying again")
                await asyncio.sleep(1.0)
                continue
            found = {ticket.id: ticket for ticket in tickets}
            for ticket_id, watchers in asked.items():
                ticket = found.get(ticket_id)
                for mailbox in watchers:
                    if ticket is None:
                        mailbox.fail(NotFound("ticket", str(ticket_id)))
                    else:
                        mailbox.offer(ticket)
            await asyncio.sleep(self._interval)  # coalesces changes: ten reads a second at most
            if self._watchers and not self._joined.is_set():
                try:
                    await self._next_change(generation)
                except Unavailable:
                    return
            generation = self._feed.generation

    async def _next_change(self, generation: int) -> None:
        """Returns when something changed after `generation`, or a stream joined."""
        changed = asyncio.ensure_future(self._feed.wait_past(generation))
        joined = asyncio.ensure_future(self._joined.wait())
        try:
            done, _ = await asyncio.wait({changed, joined}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (changed, joined):
                waiter.cancel()
            await asyncio.gather(changed, joined, return_exceptions=True)
        if changed in done and not changed.cancelled():
            changed.result()  # Unavailable once the feed closed


def _shutting_down() -> Unavailable:
    return Unavailable("the server is shutting down; watch again", reason="SHUTTING_DOWN")


class EventStreams:
    """StreamDeliveryEvents: each stream keeps its own place in the project's events."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        feed: ChangeFeed,
        *,
        interval: float = DEFAULT_INTERVAL,
        page: int = EVENT_PAGE,
    ) -> None:
        self._sessions = sessions
        self._feed = feed
        self._interval = interval
        self._page = page

    async def stream(
        self,
        project_id: str,
        *,
        ticket_id: int = 0,
        after_sequence: int = 0,
        target: Target | None = None,
        outcomes: Collection[DeliveryOutcome] = (),
    ) -> AsyncIterator[DeliveryEvent]:
        """Events after `after_sequence`, then each new one as it comes; with a ticket, ends
        once the ticket is terminal and all its events were sent."""
        violations = []
        if ticket_id < 0:
            violations.append(FieldViolation("ticket_id", "must not be negative"))
        if after_sequence < 0:
            violations.append(FieldViolation("after_sequence", "must not be negative"))
        if target is not None:
            violations += check_target(target)
        violations += check_list_length("outcomes", outcomes, OUTCOMES_MAX, "outcomes")
        raise_if_any(violations)
        async with self._sessions() as session:
            if ticket_id:
                await TicketStore(session).state(project_id, ticket_id)  # NotFound
            audience = await resolve_audience(session, project_id, target) if target else None
        cursor = after_sequence
        while True:
            generation = self._feed.generation
            async with self._sessions() as session:
                # The ticket's state before its events: once terminal, all its events are in.
                finished = False
                if ticket_id:
                    state = await TicketStore(session).state(project_id, ticket_id)
                    finished = state.is_terminal
                events = await EventStore(session).after(
                    project_id,
                    cursor,
                    self._page,
                    ticket_id=ticket_id,
                    audience=audience.condition if audience else None,
                    outcomes=outcomes,
                )
            for event in events:
                yield event
                cursor = event.sequence
            if len(events) == self._page:
                continue
            if finished:
                return
            await self._feed.wait_past(generation)
            await asyncio.sleep(self._interval)


class EventRetention:
    """Deletes events older than the retention, in small batches, every `every`; and the
    Google message ledger's rows once they are out of its 24-hour window."""

    BATCH = 10_000

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        retention: timedelta,
        *,
        clock: Clock = utcnow,
        every: timedelta = timedelta(hours=1),
    ) -> None:
        self._sessions = sessions
        self._retention = retention
        self._clock = clock
        self._every = every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def purge(self) -> int:
        """Deletes every event older than the retention; returns how many."""
        async with self._sessions.begin() as session:
            await GoogleMessageLog(session).purge(self._clock())
        before = self._clock() - self._retention
        total = 0
        while True:
            async with self._sessions.begin() as session:
                deleted = await EventStore(session).purge(before, self.BATCH)
            total += deleted
            if deleted < self.BATCH:
                return total

    async def _run(self) -> None:
        while True:
            try:
                purged = await self.purge()
            except Exception:
                log.exception("purging old delivery events failed; trying again later")
            else:
                if purged:
                    log.info("purged %d delivery events older than %s", purged, self._retention)
            await asyncio.sleep(self._every.total_seconds())
