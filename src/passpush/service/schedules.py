"""Schedule, Cancel, GetScheduled, ListScheduled; and the scheduler that sends them on time.

A due schedule is claimed (PROCESSING, under a lease) in one transaction, then
sent exactly as Send would and marked SENT in a second one: the ticket and the
SENT mark commit together, so a crash in between leaves it PROCESSING until its
lease ends, and it is then sent once. On PostgreSQL replicas claim with SKIP
LOCKED, so a schedule fires once whatever their number.

Each schedule is its own failure domain: one that cannot be sent ends FAILED
with its reason (after a few tries when the database failed for a passing
reason), and the schedules claimed with it go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.domain.clock import Clock, utcnow
from passpush.domain.errors import DomainError
from passpush.domain.model import (
    Content,
    Operation,
    ScheduledNotification,
    ScheduleState,
    Target,
)
from passpush.domain.paging import Page, decode_token, page_of, page_size
from passpush.domain.validation import (
    check_content,
    check_display_window,
    check_id,
    check_request_id,
    check_send_time,
    check_target,
    raise_if_any,
)
from passpush.logs import log_context
from passpush.metrics import SCHEDULER_LAG
from passpush.outbox.accepting import NewTicket, create_tickets, reused_request_id
from passpush.outbox.fanout_chunks import FANOUT_CHUNK
from passpush.service.notifications import fingerprint_of
from passpush.store.audience import resolve_audience
from passpush.store.connectors.session import run_on_session
from passpush.store.faults import error_code, is_passing_trouble
from passpush.store.schedules import ScheduleStore, reserve_campaign_place
from passpush.store.tickets import prior_tickets

log = logging.getLogger(__name__)

CLAIM_LEASE = timedelta(seconds=60)
CLAIM_BATCH = 50
# A schedule whose send fails for a passing reason (the database unreachable, locked, out
# of disk) is tried this many times in all, waiting 2 s, 4 s, 8 s between; then FAILED.
MAX_SEND_ATTEMPTS = 4
RETRY_BACKOFF = timedelta(seconds=2)
# At most this long between two looks at the schedules: a replica notices another's
# schedules (or one left by a dead replica) within it.
MAX_SLEEP_SECONDS = 1.0


class ScheduleCore:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utcnow,
        on_scheduled: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        # Wakes the local scheduler, which may have to fire sooner than it planned.
        self._on_scheduled = on_scheduled

    async def schedule(
        self,
        project_id: str,
        target: Target | None,
        content: Content | None,
        send_time: datetime | None,
        request_id: str,
    ) -> ScheduledNotification:
        now = self._clock()
        raise_if_any(
            [
                *check_target(target),
                *check_content(content),
                *check_send_time(send_time, now),
                *check_request_id(request_id),
            ]
        )
        assert target is not None and content is not None and send_time is not None
        raise_if_any(check_display_window(content, send_time, when="send_time"))
        fingerprint = fingerprint_of(
            Operation.SEND, target, content, send_time=send_time.isoformat()
        )
        try:
            async with self._sessions.begin() as session:
                schedules = ScheduleStore(session)
                if request_id:
                    existing = await schedules.find_by_request_id(project_id, request_id)
                    if existing is not None:
                        return _replay(*existing, fingerprint)
                    # One namespace with Send and Delete: a ticket's id is not a schedule's.
                    key = (project_id, request_id)
                    if await run_on_session(session, prior_tickets({key})):
                        raise reused_request_id()
                await reserve_campaign_place(session, project_id, target)
                await resolve_audience(session, project_id, target)  # it must exist now
                created = await schedules.create(
                    project_id, target, content, send_time, request_id, fingerprint, now
                )
        except IntegrityError:
            if not request_id:
                raise
            # Two first tries raced on one request_id: the loser answers the winner's.
            async with self._sessions() as session:
                existing = await ScheduleStore(session).find_by_request_id(project_id, request_id)
            if existing is None:
                raise
            return _replay(*existing, fingerprint)
        self._on_scheduled()
        return created

    async def cancel(self, project_id: str, schedule_id: str) -> ScheduledNotification:
        raise_if_any(check_id("id", schedule_id))
        async with self._sessions.begin() as session:
            return await ScheduleStore(session).cancel(project_id, schedule_id, self._clock())

    async def get(self, project_id: str, schedule_id: str) -> ScheduledNotification:
        raise_if_any(check_id("id", schedule_id))
        async with self._sessions() as session:
            return await ScheduleStore(session).get(project_id, schedule_id)

    async def list(
        self,
        project_id: str,
        state: ScheduleState | None,
        target: Target | None,
        size: int,
        token: str,
    ) -> Page[ScheduledNotification]:
        if target is not None:
            raise_if_any(check_target(target))
        limit, before = page_size(size), decode_token(token)
        async with self._sessions() as session:
            items = await ScheduleStore(session).newest_first(
                project_id, state, target, before, limit + 1
            )
        return page_of(items, limit, lambda s: s.id)


def _replay(existing: ScheduledNotification, fingerprint: str, asked: str) -> ScheduledNotification:
    if fingerprint != asked:
        raise reused_request_id()
    return existing


class Scheduler:
    """Sends each schedule when its time comes, in every replica, each schedule once."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utcnow,
        on_sent: Callable[[], None] = lambda: None,
        fanout_chunk: int = FANOUT_CHUNK,
        on_fanning_out: Callable[[int], None] = lambda ticket_id: None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._on_sent = on_sent  # wakes the delivery worker
        # A broadcast's first chunk goes with its ticket; the FanOut loop writes the others.
        self._fanout_chunk = fanout_chunk
        self._on_fanning_out = on_fanning_out
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"scheduler {self.owner}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def fire_due(self) -> int:
        """Sends every schedule that is due now; returns how many it took on."""
        fired = 0
        while True:
            self._wake.clear()
            async with self._sessions.begin() as session:
                claimed = await ScheduleStore(session).claim_due(
                    self.owner, self._clock(), CLAIM_LEASE, CLAIM_BATCH, MAX_SEND_ATTEMPTS
                )
            for scheduled, attempt in claimed:
                await self._send_contained(scheduled, attempt)
            fired += len(claimed)
            if len(claimed) < CLAIM_BATCH:
                return fired

    async def _run(self) -> None:
        while True:
            try:
                await self.fire_due()
                async with self._sessions() as session:
                    due = await ScheduleStore(session).next_send_time()
            except Exception:
                log.exception("firing scheduled notifications failed; trying again shortly")
                due = None
            sleep = MAX_SLEEP_SECONDS
            if due is not None:
                sleep = min(sleep, max(0.0, (due - self._clock()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sleep):
                    await self._wake.wait()

    async def _send_contained(self, scheduled: ScheduledNotification, attempt: int) -> None:
        """Sends one schedule in its own failure domain: whatever stops it ends it FAILED
        with a reason, or (a passing database failure) has it tried again a little later,
        and never stops the schedules claimed with it."""
        log_context(project=scheduled.project_id, schedule=scheduled.id)
        try:
            await self._send(scheduled)
        except DomainError as error:
            log.info("scheduled notification %s failed: %s", scheduled.id, error.message)
            await self._record(scheduled, failure=error.message)
        except Exception as error:
            cause = error_code(error)
            if not is_passing_trouble(error):
                log.exception("scheduled notification %s cannot be sent", scheduled.id)
                refused = "the database refused it" if isinstance(error, DBAPIError) else "failed"
                await self._record(scheduled, failure=f"{refused} ({cause})")
            elif attempt >= MAX_SEND_ATTEMPTS:
                log.exception("scheduled notification %s: giving up", scheduled.id)
                reason = f"given up after {attempt} attempts: the database failed ({cause})"
                await self._record(scheduled, failure=reason)
            else:
                delay = RETRY_BACKOFF * 2 ** (attempt - 1)
                log.warning(
                    "scheduled notification %s: attempt %d failed (%s); trying again in %s",
                    scheduled.id,
                    attempt,
                    cause,
                    delay,
                )
                await self._record(scheduled, retry_in=delay)

    async def _record(
        self,
        scheduled: ScheduledNotification,
        *,
        failure: str = "",
        retry_in: timedelta | None = None,
    ) -> None:
        """Marks a schedule FAILED, or to be tried again; if even that fails, its claim runs
        out and the next claim counts one more attempt."""
        now = self._clock()
        try:
            async with self._sessions.begin() as session:
                schedules = ScheduleStore(session)
                if retry_in is not None:
                    at = now + retry_in
                    await schedules.retry_later(
                        scheduled.project_id, scheduled.id, self.owner, now, at
                    )
                else:
                    await schedules.finish(
                        scheduled.project_id, scheduled.id, self.owner, now, failure=failure
                    )
        except Exception:
            log.exception("could not record how scheduled notification %s ended", scheduled.id)

    async def _send(self, scheduled: ScheduledNotification) -> None:
        """Sends as Send would; the ticket and the SENT mark commit together."""
        now = self._clock()
        try:
            async with self._sessions.begin() as session:
                audience = await resolve_audience(session, scheduled.project_id, scheduled.target)
                new = NewTicket(
                    audience,
                    Operation.SEND,
                    scheduled.target,
                    scheduled.content,
                    "",
                    "",
                    scheduled=(scheduled.id, scheduled.send_time),
                )
                (ticket,) = await create_tickets(session, [new], now, chunk=self._fanout_chunk)
                schedules = ScheduleStore(session)
                if not await schedules.finish(
                    scheduled.project_id, scheduled.id, self.owner, now, ticket_id=ticket.id
                ):
                    raise _ClaimLost  # another scheduler took it over: undo this send
        except _ClaimLost:
            log.warning("scheduled notification %s was taken over; not sent here", scheduled.id)
            return
        late = now - scheduled.send_time
        SCHEDULER_LAG.observe(max(0.0, late.total_seconds()))
        log.info(
            "scheduled notification %s sent as ticket %d (%.3f s late)",
            scheduled.id,
            ticket.id,
            late.total_seconds(),
        )
        self._on_sent()
        if ticket.fanning_out:
            self._on_fanning_out(ticket.id)


class _ClaimLost(Exception):
    pass
