"""Single-pass Sends arriving together share a transaction: each still gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import grpc
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from passpush.domain.model import (
    SKIP_NO_DEVICES,
    Content,
    Operation,
    PassTarget,
    Ticket,
    TicketState,
)
from passpush.fakes.apns import FakeApns
from passpush.outbox.accepting import accept_group
from passpush.service.notifications import NotificationCore
from passpush.store.connectors import connect, connect_standalone
from passpush.store.db import asyncpg_dsn, make_engine, make_sessions
from passpush.store.models import DeliveryEventRow, DeliveryRow, PassRow
from passpush.store.wakeups import Topic
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from support import CountedSteps, World, rich_error, wait_terminal

PASSES = 30


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await world.apple_template("loyalty")
    for i in range(PASSES):
        await world.pass_(f"p{i}", "loyalty")
    await world.pass_("by-external", "loyalty", external_id="member-7")
    await world.pass_("no-device", "loyalty", devices=0)
    return world


def _send(pass_id: str, request_id: str, body: str = "Hi") -> npb.SendRequest:
    return npb.SendRequest(
        target=npb.Target(pass_id=pass_id), content=npb.Content(body=body), request_id=request_id
    )


async def test_a_burst_of_single_pass_sends_answers_each_call_as_if_alone(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
) -> None:
    requests = {
        **{f"p{i}": _send(f"p{i}", f"r{i}") for i in range(PASSES)},
        "external": _send("member-7", "r-external"),
        "no-device": _send("no-device", "r-no-device"),
        **{f"ghost{i}": _send(f"ghost{i}", f"r-ghost{i}") for i in range(3)},
        **{f"retry{i}": _send("p0", "r0") for i in range(5)},
        "reused": _send("p1", "r1", body="another body"),
    }
    answers = dict(
        zip(
            requests,
            await asyncio.gather(
                *(notifications.Send(r) for r in requests.values()), return_exceptions=True
            ),
            strict=True,
        )
    )

    tickets = {name: a for name, a in answers.items() if isinstance(a, npb.Ticket)}
    errors = {
        name: rich_error(a) for name, a in answers.items() if isinstance(a, grpc.aio.AioRpcError)
    }
    assert set(tickets) | set(errors) == set(requests), answers
    # Retries of r0 answer r0's ticket; r1 with two bodies: one ticket, one refusal.
    assert {tickets[f"retry{i}"].id for i in range(5)} == {tickets["p0"].id}
    r1 = [name for name in ("p1", "reused") if name in tickets]
    refused = [name for name in ("p1", "reused") if name in errors]
    assert len(r1) == 1 and len(refused) == 1
    assert errors[refused[0]].code == grpc.StatusCode.ALREADY_EXISTS
    assert errors[refused[0]].reason == "REQUEST_ID_REUSED"
    for i in range(3):
        assert errors[f"ghost{i}"].code == grpc.StatusCode.NOT_FOUND
        assert errors[f"ghost{i}"].resource == ("pass", f"ghost{i}")
    assert set(errors) == {*refused, "ghost0", "ghost1", "ghost2"}

    # Each new ticket is its own, for its own pass, with its own counts.
    sent = [name for name in tickets if not name.startswith("retry")]
    assert len({tickets[name].id for name in sent}) == len(sent)
    for name in sent:
        ticket = tickets[name]
        assert ticket.target == requests[name].target
        assert ticket.request_id == requests[name].request_id
        if name == "no-device":
            assert (ticket.counts.total, ticket.counts.skipped) == (1, 1)
            assert ticket.state == npb.TICKET_STATE_SUCCEEDED
        else:
            assert (ticket.counts.total, ticket.counts.pending) == (1, 1)
        done = await wait_terminal(notifications, ticket.id)
        assert done.counts.total == 1

    pushed = [f"p{i}" for i in range(PASSES)] + ["by-external"]
    assert sorted(fake_apns.tokens()) == world.tokens_of(*pushed)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_request_id_racing_another_replica_answers_with_the_first_ticket(
    world: World, database_url: str
) -> None:
    """Two replicas take the same request at once. The second's ticket insert waits on the
    first's uncommitted ticket, fails on the unique request id, and its retry answers with
    the first ticket: one ticket for both callers."""
    engines = [make_engine(database_url) for _ in range(3)]
    blocker = engines[2]
    first, second = (NotificationCore(e, make_sessions(e)) for e in engines[:2])

    def send(core: NotificationCore) -> asyncio.Task[Ticket]:
        return asyncio.create_task(
            core.send(world.project_id, PassTarget("p0"), Content("", "Hi"), "raced")
        )

    try:
        async with blocker.begin() as connection:
            # Holding p0's row stops the first replica at its pass update, uncommitted.
            await connection.execute(
                text("SELECT 1 FROM passes WHERE project_id = :p AND id = 'p0' FOR UPDATE"),
                {"p": world.project_id},
            )
            one = send(first)
            await _until_waiting_on_locks(blocker, 1)
            two = send(second)  # does not see the first's ticket; waits on its request id
            await _until_waiting_on_locks(blocker, 2)
        async with asyncio.timeout(10):
            tickets = await asyncio.gather(one, two)
        async with blocker.connect() as connection:
            count = await connection.scalar(
                text("SELECT count(*) FROM tickets WHERE request_id = 'raced'")
            )
    finally:
        for engine in engines:
            await engine.dispose()

    assert tickets[0].id == tickets[1].id
    assert count == 1


async def _until_waiting_on_locks(engine: AsyncEngine, backends: int) -> None:
    """Until `backends` connections to the database wait on a lock (5 s at most)."""
    for _ in range(500):
        async with engine.connect() as connection:
            waiting = await connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        if waiting >= backends:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{backends} transactions never waited on a lock")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_sends_go_on_after_the_database_drops_the_connections(
    world: World, database_url: str
) -> None:
    """A PostgreSQL restart or failover ends every connection: the call that finds its
    connection dead fails, and the ones after it get a new connection."""
    engine, admin = make_engine(database_url), make_engine(database_url)
    core = NotificationCore(engine, make_sessions(engine))

    def send(request_id: str) -> Coroutine[None, None, Ticket]:
        return core.send(world.project_id, PassTarget("p0"), Content("", "Hi"), request_id)

    try:
        await send("before")
        async with engine.connect() as connection:  # the pool's one connection so far
            pid = await connection.scalar(text("SELECT pg_backend_pid()"))
        async with admin.connect() as connection:
            await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        failed = 0
        for attempt in range(3):
            try:
                await send(f"after-{attempt}")
            except Exception:
                failed += 1
    finally:
        await engine.dispose()
        await admin.dispose()

    assert failed <= 1


@dataclass(frozen=True)
class _Request:
    """A one-pass Send as the service hands it to the outbox."""

    pass_id: str
    request_id: str
    project_id: str = "acme"
    operation: Operation = Operation.SEND
    content: Content | None = field(default_factory=lambda: Content("", "Hi"))
    fingerprint: str = "same"

    @property
    def target(self) -> PassTarget:
        return PassTarget(self.pass_id)

    @property
    def key(self) -> tuple[str, str]:
        return (self.project_id, self.request_id)


async def test_a_group_is_written_with_its_deliveries_pass_changes_and_skipped_events(
    world: World, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Sends to passes with a device and to one without, accepted together: each ticket goes
    in with its counts, deliveries, its pass's notification and the events of what it
    skipped. On PostgreSQL that is one pipelined write, a statement a Send (it was a
    transaction of eight statements and BEGIN and COMMIT, then two reads and a write)."""
    group = [_Request("p0", "a"), _Request("no-device", "b"), _Request("member-7", "c")]
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    postgresql = engine.dialect.name == "postgresql"
    transactions = CountedSteps(connect(engine))
    standalone = CountedSteps(connect_standalone(engine))
    try:
        answers = await accept_group(transactions, standalone, group, lambda: now)
    finally:
        transactions.close()
        standalone.close()
    tickets = [answers[r] for r in group]
    assert all(isinstance(t, Ticket) for t in tickets), answers
    sent, skipped, by_external = cast(list[Ticket], tickets)
    async with sessions() as session:
        deliveries = {
            (row.ticket_id, row.pass_id, row.state)
            for row in await session.scalars(select(DeliveryRow))
        }
        events = [
            (row.ticket_id, row.pass_id, row.outcome, row.reason)
            for row in await session.scalars(select(DeliveryEventRow))
        ]
        shown = {
            row.id: (row.notification_ticket_id, row.last_ticket_id, row.notification_body)
            for row in await session.scalars(select(PassRow))
        }

    assert [t.state for t in tickets] == [
        TicketState.PENDING,
        TicketState.SUCCEEDED,
        TicketState.PENDING,
    ]
    assert (skipped.counts.total, skipped.counts.skipped) == (1, 1)
    assert deliveries == {
        (sent.id, "p0", "pending"),
        (skipped.id, "no-device", "skipped"),
        (by_external.id, "by-external", "pending"),
    }
    assert events == [(skipped.id, "no-device", "skipped", SKIP_NO_DEVICES)]
    assert shown["p0"] == (sent.id, sent.id, "Hi")
    assert shown["by-external"] == (by_external.id, by_external.id, "Hi")
    assert shown["p1"] == (None, None, None)
    if postgresql:
        assert (transactions.statements, standalone.statements) == (0, 1)


async def test_a_group_that_queues_a_push_wakes_the_delivery_workers_at_its_commit(
    world: World, engine: AsyncEngine
) -> None:
    """On PostgreSQL the group's one write also tells the workers of every replica (NOTIFY,
    delivered at its commit), so that no statement of its own is spent on it; a group that
    queued nothing to push tells nobody."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's processes are woken through their sockets, after the commit")
    import asyncpg  # type: ignore[import-untyped]

    listener = await asyncpg.connect(asyncpg_dsn(engine.url.render_as_string(False)))
    woken: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(
        Topic.DELIVERIES.value, lambda _c, _pid, channel, _payload: woken.put_nowait(channel)
    )
    transactions, standalone = connect(engine), connect_standalone(engine)
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    try:
        skipped = await accept_group(
            transactions, standalone, [_Request("no-device", "quiet")], lambda: now
        )
        await accept_group(transactions, standalone, [_Request("p0", "pushed")], lambda: now)
        async with asyncio.timeout(10):
            first = await woken.get()
    finally:
        transactions.close()
        standalone.close()
        await listener.close()

    assert isinstance(skipped[_Request("no-device", "quiet")], Ticket)
    assert first == Topic.DELIVERIES.value
    # Notifications arrive in commit order: had the skipped Send's group woken the workers,
    # its wake-up would have come first, and then a second one.
    assert woken.empty()
