"""What tickets ask of Google: a message to add to a pass object or class, or passpush's removed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from passpush.domain.model import Content, Operation
from passpush.store.connectors.connector import ByDialect, Query, Steps
from passpush.store.db import one_of
from passpush.store.models import TicketRow, table_of

_tickets = table_of(TicketRow)


@dataclass(frozen=True)
class TicketMessage:
    """What a Google delivery's ticket asks of the pass object."""

    operation: Operation  # SEND: add the message; DELETE: remove passpush's messages
    content: Content | None  # None for a Delete


def ticket_messages(ticket_ids: Sequence[int]) -> Steps[dict[int, TicketMessage]]:
    """What the tickets ask of Google, by ticket id: a message to add, or passpush's removed."""
    messages: dict[int, TicketMessage] = {}
    query = Query(_TICKET_MESSAGES, {"ids": list(ticket_ids)})
    for ticket_id, operation, header, body, display_start, display_end in (yield query):
        content = None
        if operation == Operation.SEND.value:
            content = Content(header, body, display_start, display_end)
        messages[ticket_id] = TicketMessage(Operation(operation), content)
    return messages


_TICKET_MESSAGES = ByDialect(
    lambda dialect: select(
        _tickets.c.id,
        _tickets.c.operation,
        _tickets.c.content_header,
        _tickets.c.content_body,
        _tickets.c.display_start,
        _tickets.c.display_end,
    ).where(one_of(_tickets.c.id, dialect))
)
