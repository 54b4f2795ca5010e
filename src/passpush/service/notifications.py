"""Send, Delete and GetTicket: validate, commit the ticket and its deliveries, answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.domain.errors import AlreadyExists, DomainError, NotFound
from passpush.domain.model import (
    Content,
    ExternalPassTarget,
    Operation,
    PassTarget,
    Target,
    Ticket,
    target_to_dict,
)
from passpush.domain.validation import (
    check_content,
    check_request_id,
    check_target,
    raise_if_any,
)
from passpush.service.clock import Clock, utcnow
from passpush.store.audience import resolve_audience, resolve_pass_targets
from passpush.store.events import EventStore
from passpush.store.schedules import reserve_campaign_place
from passpush.store.tickets import NewTicket, PriorTicket, TicketStore


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
    a dozen round trips. A broadcast commits alone, beside them.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utcnow,
        on_enqueued: Callable[[], None] = lambda: None,
        max_group: int = 256,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        # Wakes the local delivery workers so that the first push does not wait for a poll.
        self._on_enqueued = on_enqueued
        self._max_group = max_group
        self._queued: list[_Submission] = []
        self._committer: asyncio.Task[None] | None = None

    async def send(
        self, project_id: str, target: Target | None, content: Content | None, request_id: str
    ) -> Ticket:
        raise_if_any(
            [*check_target(target), *check_content(content), *check_request_id(request_id)]
        )
        assert target is not None and content is not None
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
        if isinstance(target, PassTarget | ExternalPassTarget):
            self._queued.append(submission)
            if self._committer is None or self._committer.done():
                self._committer = asyncio.create_task(self._commit_queued())
        else:
            await self._commit([submission])
        # The transaction goes on if the caller leaves: its retry will find the ticket.
        return await asyncio.shield(answer)

    async def _commit_queued(self) -> None:
        while self._queued:
            group = self._queued[: self._max_group]
            del self._queued[: self._max_group]
            await self._commit(group)

    async def _commit(self, group: list[_Submission]) -> None:
        """Commits a group in one transaction and answers each submission."""
        for attempt in range(3):
            try:
                async with self._sessions.begin() as session:
                    answers = await self._accept(session, group)
                break
            except IntegrityError as error:
                # A request_id raced another server's first try: the next look finds its ticket.
                if attempt == 2:
                    answers = {s: error for s in group}
            except Exception as error:  # every waiting call gets the failure
                answers = {s: error for s in group}
                break
        if any(isinstance(a, Ticket) for a in answers.values()):
            self._on_enqueued()
        for submission, answer in answers.items():
            if submission.answer.done():
                continue
            if isinstance(answer, Ticket):
                submission.answer.set_result(answer)
            else:
                submission.answer.set_exception(answer)

    async def _accept(
        self, session: AsyncSession, group: list[_Submission]
    ) -> dict[_Submission, Ticket | Exception]:
        tickets = TicketStore(session)
        answers: dict[_Submission, Ticket | Exception] = {}
        # First: a retry answers its first ticket even if the target changed since.
        existing = await tickets.find_by_request_ids({s.key for s in group if s.request_id})
        # One query resolves every pass target of the group.
        passes = await resolve_pass_targets(
            session,
            {(s.project_id, s.target.pass_id) for s in group if isinstance(s.target, PassTarget)},
        )
        first_in_group: dict[tuple[str, str], _Submission] = {}
        retries_in_group: list[tuple[_Submission, _Submission]] = []
        new: list[tuple[_Submission, NewTicket]] = []
        for s in group:
            if s.request_id and s.key in existing:
                answers[s] = await _answer_retry(tickets, s, existing[s.key])
                continue
            if s.request_id and s.key in first_in_group:
                retries_in_group.append((s, first_in_group[s.key]))
                continue
            try:
                if isinstance(s.target, PassTarget):
                    audience = passes.get((s.project_id, s.target.pass_id))
                    if audience is None:
                        raise NotFound("pass", s.target.pass_id)
                else:
                    if s.operation is Operation.SEND:
                        await reserve_campaign_place(session, s.project_id, s.target)
                    audience = await resolve_audience(session, s.project_id, s.target)
            except DomainError as error:
                answers[s] = error
                continue
            if s.request_id:
                first_in_group[s.key] = s
            new.append(
                (
                    s,
                    NewTicket(
                        audience, s.operation, s.target, s.content, s.request_id, s.fingerprint
                    ),
                )
            )
        now = self._clock()
        created = await tickets.create_many([n for _, n in new], now)
        await EventStore(session).append_skipped([t.id for t in created if t.counts.skipped], now)
        answers.update(zip([s for s, _ in new], created, strict=True))
        for retry, first in retries_in_group:
            answers[retry] = (
                answers[first] if retry.fingerprint == first.fingerprint else _reused_request_id()
            )
        return answers


async def _answer_retry(
    tickets: TicketStore, submission: _Submission, existing: PriorTicket
) -> Ticket | Exception:
    """A retry gets the first ticket; a reused key with another request is refused."""
    if existing.fingerprint != submission.fingerprint:
        return _reused_request_id()
    return await tickets.get(existing.project_id, existing.id)


def _reused_request_id() -> AlreadyExists:
    return AlreadyExists("request", "request_id", reason="REQUEST_ID_REUSED")


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
