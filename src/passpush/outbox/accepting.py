"""Accepting Sends and Deletes to one pass each: a group of them in one short transaction.

These are the steps a connector runs for NotificationCore's group commit: a few statements
for the whole group whatever its size (the retries' first tickets, the passes named, the
tickets and their deliveries, the events of what they skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from passpush.domain.errors import AlreadyExists, NotFound
from passpush.domain.model import Content, Operation, PassTarget, Target, Ticket
from passpush.store.audience import Audience, pass_targets
from passpush.store.connectors.connector import Steps
from passpush.store.events import skipped_events
from passpush.store.tickets import NewTicket, PriorTicket, one_pass_tickets, prior_tickets


class Request(Hashable, Protocol):
    """A Send or Delete to accept, as the service took it in."""

    @property
    def project_id(self) -> str: ...
    @property
    def operation(self) -> Operation: ...
    @property
    def target(self) -> Target: ...
    @property
    def content(self) -> Content | None: ...
    @property
    def request_id(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...  # tells a retry from a reused request_id
    @property
    def key(self) -> tuple[str, str]: ...  # (project_id, request_id)


R = TypeVar("R", bound=Request)
# What a request gets: its ticket, a retry's first ticket, or why it is refused.
Accepted = Ticket | PriorTicket | Exception


def accept_one_pass_each(
    group: Sequence[R], clock: Callable[[], datetime]
) -> Steps[dict[R, Accepted]]:
    """Sends and Deletes to one pass each (PassTarget): a few statements for the whole group.
    `clock` is read once the group's reads are done: the tickets' creation time."""
    answers: dict[R, Accepted] = {}
    # First: a retry answers its first ticket even if the target changed since.
    prior = yield from prior_tickets({r.key for r in group if r.request_id})
    targets = {(r.project_id, _pass_id(r)) for r in group}
    passes = yield from pass_targets(targets)
    first_in_group: dict[tuple[str, str], R] = {}
    retries_in_group: list[tuple[R, R]] = []
    new: list[tuple[R, NewTicket]] = []
    for r in group:
        if r.request_id and r.key in prior:
            answers[r] = retry_answer(r, prior[r.key])
            continue
        if r.request_id and r.key in first_in_group:
            retries_in_group.append((r, first_in_group[r.key]))
            continue
        pass_id = _pass_id(r)
        audience = passes.get((r.project_id, pass_id))
        if audience is None:
            answers[r] = NotFound("pass", pass_id)
            continue
        if r.request_id:
            first_in_group[r.key] = r
        new.append((r, new_ticket(r, audience)))
    now = clock()
    created = yield from one_pass_tickets([n for _, n in new], now)
    yield from skipped_events([t.id for t in created if t.counts.skipped], now)
    answers.update(zip([r for r, _ in new], created, strict=True))
    for retry, first in retries_in_group:
        answers[retry] = (
            answers[first] if retry.fingerprint == first.fingerprint else reused_request_id()
        )
    return answers


def new_ticket(r: Request, audience: Audience) -> NewTicket:
    return NewTicket(audience, r.operation, r.target, r.content, r.request_id, r.fingerprint)


def retry_answer(r: Request, prior: PriorTicket) -> PriorTicket | Exception:
    """A retry gets the first ticket; a reused key with another request is refused."""
    return prior if prior.fingerprint == r.fingerprint else reused_request_id()


def reused_request_id() -> AlreadyExists:
    return AlreadyExists("request", "request_id", reason="REQUEST_ID_REUSED")


def _pass_id(r: Request) -> str:
    assert isinstance(r.target, PassTarget)  # the only target grouped
    return r.target.pass_id
