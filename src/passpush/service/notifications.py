"""Send, Delete and GetTicket: validate, commit the ticket and its deliveries, answer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.domain.errors import AlreadyExists
from passpush.domain.model import Content, Operation, Target, Ticket, target_to_dict
from passpush.domain.validation import (
    check_content,
    check_request_id,
    check_target,
    raise_if_any,
)
from passpush.service.clock import Clock, utcnow
from passpush.store.audience import resolve_audience
from passpush.store.models import TicketRow
from passpush.store.tickets import TicketStore


class NotificationCore:
    """Accepts notification operations; delivery workers carry them out."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utcnow,
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        # Wakes the local delivery workers so that the first push does not wait for a poll.
        self._on_enqueued = on_enqueued

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
        fingerprint = _fingerprint(operation, target, content)
        try:
            async with self._sessions.begin() as session:
                tickets = TicketStore(session)
                if request_id:
                    # First: a retry answers its first ticket even if the target changed since.
                    existing = await tickets.find_by_request_id(project_id, request_id)
                    if existing is not None:
                        return await self._replay(tickets, existing, fingerprint)
                audience = await resolve_audience(session, project_id, target)
                ticket_id = await tickets.create(
                    audience=audience,
                    operation=operation,
                    target=target,
                    content=content,
                    request_id=request_id,
                    fingerprint=fingerprint,
                    now=self._clock(),
                )
                ticket = await tickets.get(project_id, ticket_id)
        except IntegrityError:
            if not request_id:
                raise
            # Two first tries raced on one request_id: the loser answers the winner's ticket.
            async with self._sessions() as session:
                tickets = TicketStore(session)
                existing = await tickets.find_by_request_id(project_id, request_id)
                if existing is None:
                    raise
                return await self._replay(tickets, existing, fingerprint)
        self._on_enqueued()
        return ticket

    @staticmethod
    async def _replay(tickets: TicketStore, existing: TicketRow, fingerprint: str) -> Ticket:
        """Answers a retry with the first ticket; a reused key with another request is refused."""
        if existing.request_fingerprint != fingerprint:
            raise AlreadyExists("request", "request_id", reason="REQUEST_ID_REUSED")
        return await tickets.get(existing.project_id, existing.id)


def _fingerprint(operation: Operation, target: Target, content: Content | None) -> str:
    document = {
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
