"""A Send that the database refuses fails alone, though it shared a group transaction."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import text

from passpush.app import Application
from passpush.store.db import make_engine
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from support import World, channel_with_key

PASSES = 10
ROUNDS = 3
POISON = "POISON"

# A real database-level failure: the ticket insert of a poisoned body is refused.
_SQLITE_TRIGGER = f"""
CREATE TRIGGER poisoned_ticket BEFORE INSERT ON tickets
WHEN NEW.content_body LIKE '%{POISON}%'
BEGIN SELECT RAISE(ABORT, 'poisoned ticket'); END
"""
_POSTGRES_TRIGGER = [
    f"""
    CREATE FUNCTION refuse_poisoned_ticket() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.content_body LIKE '%{POISON}%' THEN RAISE EXCEPTION 'poisoned ticket'; END IF;
        RETURN NEW;
    END $$
    """,
    "CREATE TRIGGER poisoned_ticket BEFORE INSERT ON tickets"
    " FOR EACH ROW EXECUTE FUNCTION refuse_poisoned_ticket()",
]
_POSTGRES_CLEANUP = [
    "DROP TRIGGER IF EXISTS poisoned_ticket ON tickets",
    "DROP FUNCTION IF EXISTS refuse_poisoned_ticket()",
]


@pytest.fixture
async def poisoned_tickets(database_url: str) -> AsyncIterator[None]:
    """A trigger that makes the database refuse any ticket whose body holds POISON."""
    engine = make_engine(database_url)
    postgres = engine.dialect.name == "postgresql"
    try:
        async with engine.begin() as connection:
            for sql in _POSTGRES_TRIGGER if postgres else [_SQLITE_TRIGGER]:
                await connection.execute(text(sql))
        yield
    finally:
        # The PostgreSQL database outlives the test (its tables are only truncated).
        if postgres:
            async with engine.begin() as connection:
                for sql in _POSTGRES_CLEANUP:
                    await connection.execute(text(sql))
        await engine.dispose()


@pytest.fixture
async def projects(
    server: Application, api_key: str
) -> AsyncIterator[dict[str, notifications_pb2_grpc.NotificationServiceStub]]:
    """Two projects with PASSES passes each: each one's NotificationService, by project."""
    _, other_key = await server.keys.create_key("globex", "tests", ["all"], create_project=True)
    async with (
        channel_with_key(server.port, api_key) as acme,
        channel_with_key(server.port, other_key) as globex,
    ):
        worlds = [
            World(passes_pb2_grpc.PassServiceStub(acme), "acme"),
            World(passes_pb2_grpc.PassServiceStub(globex), "globex"),
        ]
        for world in worlds:
            await world.apple_template(f"{world.project_id}-loyalty")
            for i in range(PASSES):
                await world.pass_(f"{world.project_id}-{i}", f"{world.project_id}-loyalty")
        yield {
            "acme": notifications_pb2_grpc.NotificationServiceStub(acme),
            "globex": notifications_pb2_grpc.NotificationServiceStub(globex),
        }


async def test_only_the_send_the_database_refuses_fails_in_a_shared_transaction(
    projects: dict[str, notifications_pb2_grpc.NotificationServiceStub], poisoned_tickets: None
) -> None:
    """When the database refuses one Send of a group transaction, that Send alone fails:
    every other Send of the group, of any project, gets its ticket."""
    calls: list[tuple[str, str, npb.SendRequest]] = []  # (project, kind, request)
    for round_ in range(ROUNDS):
        for project in projects:
            for i in range(PASSES):
                pass_id = f"{project}-{i}"
                calls.append((project, "innocent", _send(pass_id, f"ok-{round_}-{i}")))
                if i % 3 == 0:
                    poisoned = _send(pass_id, f"bad-{round_}-{i}", body=f"Hi {POISON}")
                    calls.append((project, "poisoned", poisoned))
    random.Random(16).shuffle(calls)

    answers = await asyncio.gather(
        *(projects[project].Send(request) for project, _, request in calls), return_exceptions=True
    )

    innocent_failures = [
        (request.request_id, _code(answer))
        for (_, kind, request), answer in zip(calls, answers, strict=True)
        if kind == "innocent" and not isinstance(answer, npb.Ticket)
    ]
    poisoned_tickets_made = [
        request.request_id
        for (_, kind, request), answer in zip(calls, answers, strict=True)
        if kind == "poisoned" and isinstance(answer, npb.Ticket)
    ]
    assert innocent_failures == []
    assert poisoned_tickets_made == []
    # Each innocent ticket is its own, with its own request id.
    tickets = [a for a in answers if isinstance(a, npb.Ticket)]
    innocents = sum(kind == "innocent" for _, kind, _ in calls)
    assert len({t.id for t in tickets}) == len(tickets) == innocents
    assert {t.request_id for t in tickets} == {
        r.request_id for _, kind, r in calls if kind == "innocent"
    }


def _send(pass_id: str, request_id: str, body: str = "Hi") -> npb.SendRequest:
    return npb.SendRequest(
        target=npb.Target(pass_id=pass_id), content=npb.Content(body=body), request_id=request_id
    )


def _code(answer: object) -> str:
    if isinstance(answer, grpc.aio.AioRpcError):
        return answer.code().name
    return repr(answer)


@pytest.mark.parametrize(
    "target",
    [
        npb.Target(pass_id="acme-0"),
        npb.Target(template=npb.TemplateRef(template_id="acme-loyalty")),
    ],
    ids=["one-pass", "broadcast"],
)
async def test_the_refused_send_is_logged_without_its_body(
    target: npb.Target,
    projects: dict[str, notifications_pb2_grpc.NotificationServiceStub],
    poisoned_tickets: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server log says why a Send failed, never what it said: a notification's body
    stays out of every log line, the database's error included."""
    body = f"{POISON} secret body 7f3a"
    with pytest.raises(grpc.aio.AioRpcError):
        await projects["acme"].Send(npb.SendRequest(target=target, content=npb.Content(body=body)))

    logged = "\n".join(caplog.handler.format(record) for record in caplog.records)
    assert "poisoned ticket" in logged  # the failure is in the log...
    assert "secret body 7f3a" not in logged  # ...its body is not
