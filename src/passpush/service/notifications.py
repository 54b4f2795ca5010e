"""Send, Delete and GetTicket: validate, commit the ticket and its deliveries, answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from passpush.domain.clock import Clock, utcnow
from passpush.domain.errors import DomainError
from passpush.domain.model import (
    Content,
    Operation,
    PassTarget,
    Target,
    Ticket,
    target_to_dict,
)
from passpush.domain.validation import (
    check_content,
    check_display_window,
    check_request_id,
    check_target,
    raise_if_any,
)
from passpush.outbox.accepting import (
    Accepted,
    accept_group,
    create_tickets,
    new_ticket,
    retry_answer,
)
from passpush.outbox.fanout_chunks import FANOUT_CHUNK
from passpush.store.audience import resolve_audience
from passpush.store.connectors import connect, connect_standalone
from passpush.store.connectors.session import run_on_session
from passpush.store.faults import unavailable_from, write_check
from passpush.store.schedules import reserve_campaign_place
from passpush.store.tickets import PriorTicket, TicketStore, prior_tickets


@dataclass(eq=False)
class _Submission:
    """A Send or Delete waiting for its transaction."""

    project_id: str
    operation: Operation
    target: Target
    content: Content | None
    request_id: str
    fingerprint: str
    answer: asyncio.Future[Ticket]

    @property
    def key(self) -> tuple[str, str]:
        return (self.project_id, self.request_id)


class NotificationCore:
    """Accepts notification operations; delivery workers carry them out.

    Sends to one pass each are committed in groups: while one transaction
    commits, the next ones queue and then share a transaction of a few
    statements, so that throughput grows with load instead of each call paying
    a dozen round trips. Those transactions (outbox/accepting.py) run on the
    driver's connection directly (store/connectors/): this is the path whose
    latency callers feel.
    A broadcast commits alone, beside them, through SQLAlchemy.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utcnow,
        on_enqueued: Callable[[bool], None] = lambda others_told: None,
        max_group: int = 256,
        fanout_chunk: int = FANOUT_CHUNK,
        on_fanning_out: Callable[[int], None] = lambda ticket_id: None,
    ) -> None:
        self._sessions = sessions
        self._direct = connect(engine)
        # Where a group is accepted on PostgreSQL, its plans kept (outbox/accepting.py).
        self._standalone = (
            connect_standalone(engine) if engine.dialect.name == "postgresql" else self._direct
        )
        self._clock = clock
        # Wakes the delivery workers so that the first push does not wait for a poll: the
        # local ones, and the others unless the accept told them (its argument).
        self._on_enqueued = on_enqueued
        # On PostgreSQL a group of one-pass Sends wakes the workers at its commit itself.
        self._groups_tell_workers = engine.dialect.name == "postgresql"
        self._max_group = max_group
        # A broadcast's Send writes its first chunk of passes; the FanOut loop, told of the
        # ticket, writes the others (outbox/fanout.py).
        self._fanout_chunk = fanout_chunk
        self._on_fanning_out = on_fanning_out
        self._queued: list[_Submission] = []
        self._committer: asyncio.Task[None] | None = None

    async def send(
        self, project_id: str, target: Target | None, content: Content | None, request_id: str
    ) -> Ticket:
        raise_if_any(
            [*check_target(target), *check_content(content), *check_request_id(request_id)]
        )
        assert target is not None and content is not None
        if content.display_end is not None:  # no clock read for the usual Send
            raise_if_any(check_display_window(content, self._clock(), when="now"))
        return await self._submit(project_id, Operation.SEND, target, content, request_id)

    async def delete(self, project_id: str, target: Target | None, request_id: str) -> Ticket:
        raise_if_any([*check_target(target), *check_request_id(request_id)])
        assert target is not None
        return await self._submit(project_id, Operation.DELETE, target, None, request_id)

    async def get_ticket(self, project_id: str, ticket_id: int) -> Ticket:
        async with self._sessions() as session:
            return await TicketStore(session).get(project_id, ticket_id)

    async def _submit(
        self,
        project_id: str,
        operation: Operation,
        target: Target,
        content: Content | None,
        request_id: str,
    ) -> Ticket:
        answer = asyncio.get_running_loop().create_future()
        fingerprint = fingerprint_of(operation, target, content)
        submission = _Submission(
            project_id, operation, target, content, request_id, fingerprint, answer
        )
        if isinstance(target, PassTarget):
            self._queued.append(submission)
            if self._committer is None or self._committer.done():
                self._committer = asyncio.create_task(self._commit_queued())
        else:
            await self._commit([submission], self._accept_alone, others_told=False)
        # The transaction goes on if the caller leaves: its retry will find the ticket.
        return await asyncio.shield(answer)

    async def _commit_queued(self) -> None:
        while self._queued:
            group = self._queued[: self._max_group]
            del self._queued[: self._max_group]
            await self._commit(
                group, self._accept_one_pass_each, others_told=self._groups_tell_workers
            )

    async def _commit(
        self,
        group: list[_Submission],
        accept: Callable[[list[_Submission]], Awaitable[_Answers]],
        *,
        others_told: bool,
    ) -> None:
        """Commits a group in one transaction and answers each submission."""
        answers = await self._answers(group, accept)
        if any(isinstance(a, Ticket) for a in answers.values()):
            self._on_enqueued(others_told)
        for answer in answers.values():
            if isinstance(answer, Ticket) and answer.fanning_out:
                self._on_fanning_out(answer.id)
        for submission, answer in answers.items():
            if isinstance(answer, PriorTicket):  # a retry: its first ticket, as it is now
                try:
                    answer = await self.get_ticket(answer.project_id, answer.id)
                except Exception as error:
                    answer = error
            if submission.answer.done():
                continue
            if isinstance(answer, Ticket):
                submission.answer.set_result(answer)
            else:
                submission.answer.set_exception(answer)

    async def _answers(
        self, group: list[_Submission], accept: Callable[[list[_Submission]], Awaitable[_Answers]]
    ) -> _Answers:
        """What each submission gets from its group's transaction.

        A transaction that the database refuses (one request's value, a trigger, ...) is
        split in halves, tried apart, until the request it fails for fails alone: one such
        request costs about 2*log2(group) more transactions, and a group that commits costs
        nothing more. The database being unavailable is no request's fault: all share it.
        """
        for _ in range(3):
            try:
                return await accept(group)
            except IntegrityError as error:
                # A request_id raced another server's first try: the next look finds its ticket.
                failure: Exception = error
            except Exception as error:
                failure = error
                break
        if len(group) == 1 or unavailable_from(failure) is not None:
            return {s: failure for s in group}
        half = len(group) // 2
        return await self._answers(group[:half], accept) | await self._answers(group[half:], accept)

    async def _accept_one_pass_each(self, group: list[_Submission]) -> _Answers:
        return await accept_group(self._direct, self._standalone, group, self._clock)

    async def _accept_alone(self, group: list[_Submission]) -> _Answers:
        """A broadcast (or a pass named by its external ids), in a transaction of its own:
        the ticket and its first chunk of passes (the FanOut loop writes the others)."""
        (s,) = group
        async with self._sessions.begin() as session:
            keys = {s.key} if s.request_id else set()
            prior = await run_on_session(session, prior_tickets(keys))
            if s.key in prior:
                return {s: retry_answer(s, prior[s.key])}
            try:
                if s.operation is Operation.SEND:
                    await reserve_campaign_place(session, s.project_id, s.target)
                audience = await resolve_audience(session, s.project_id, s.target)
            except DomainError as error:
                return {s: error}
            now = self._clock()
            new = new_ticket(s, audience)
            (ticket,) = await create_tickets(session, [new], now, chunk=self._fanout_chunk)
            return {s: ticket}

    async def check_writable(self) -> None:
        """Writes to the database every way this core does (the connections single-pass
        Sends commit on, and SQLAlchemy's sessions), changing nothing: raises what a call
        would meet (for the readiness probe)."""
        await self._direct.run(write_check)
        if self._standalone is not self._direct:
            await self._standalone.run(write_check, one_write=True)
        async with self._sessions.begin() as session:
            await run_on_session(session, write_check())

    def close(self) -> None:
        self._direct.close()
        if self._standalone is not self._direct:
            self._standalone.close()


# What a transaction answers each submission; a PriorTicket is a retry's first ticket.
_Answers = dict[_Submission, Accepted]


def fingerprint_of(
    operation: Operation, target: Target, content: Content | None, **more: str
) -> str:
    """A digest of a request, to tell a retry (same digest) from a reused request_id."""
    document = {
        **more,
        "operation": operation.value,
        "target": target_to_dict(target),
        "content": None
        if content is None
        else {
            "header": content.header,
            "body": content.body,
            "display_start": content.display_start.isoformat() if content.display_start else None,
            "display_end": content.display_end.isoformat() if content.display_end else None,
        },
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
