"""Crash safety and replicas: `kill -9` mid-broadcast, and several servers on one database.

The servers are real `passpush serve` processes (tests/processes.py) pushing to fake APNs
servers in this test process. The audience is written straight into the database with Core
`executemany`: thousands of gRPC calls would only slow the tests down.

The worker's contract under test: at most PASSPUSH_WORKER_BATCH_SIZE deliveries are claimed
and not yet recorded per process at any moment, and leases expire after
PASSPUSH_WORKER_LEASE_SECONDS. So a process killed mid-broadcast leaves at most one batch
pushed and unrecorded, which is pushed again: every device gets the notification, and at most
one batch of devices gets it twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import select

from passpush.fakes.apns import FakeApns
from passpush.store.db import is_sqlite, make_engine
from passpush.store.models import (
    DeliveryRow,
    DeviceRegistrationRow,
)
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc

from processes import Launcher, ServerProcess
from support import TOPIC, make_key, seed_apple_passes, wait_terminal

PROJECT = "resilience"
TEMPLATE = "broadcast"
BATCH_SIZE = 100
LEASE_SECONDS = 2
# How each server under test runs: small claims, short leases, quick polls.
WORKER = {
    "WORKER_BATCH_SIZE": str(BATCH_SIZE),
    "WORKER_LEASE_SECONDS": str(LEASE_SECONDS),
    "WORKER_POLL_SECONDS": "0.1",
}


@pytest.fixture
async def launch(database_url: str, fake_apns: FakeApns, tmp_path: Path) -> AsyncIterator[Launcher]:
    async with Launcher(database_url, fake_apns, tmp_path) as launcher:
        yield launcher


# Replicas share work through PostgreSQL; on SQLite one `passpush serve` does all the work.
replicas_on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def replica_database_url(database_url: str) -> str:
    """The database of a replicas test (marked replicas_on_postgresql)."""
    assert not is_sqlite(database_url), "replicas tests run on PostgreSQL only"
    return database_url


@pytest.fixture
async def key(database_url: str) -> str:
    """A key with every scope, which also creates the project."""
    return await make_key(database_url, PROJECT)


@pytest.fixture
async def second_apns(fake_apns: FakeApns) -> AsyncIterator[FakeApns]:
    """Another fake APNs with the same CA, so that each replica's pushes can be told apart."""
    async with FakeApns(fake_apns.tls) as fake:
        yield fake


@pytest.fixture
async def replicas(
    replica_database_url: str, fake_apns: FakeApns, second_apns: FakeApns, tmp_path: Path
) -> AsyncIterator[Launcher]:
    """Like `launch`, on PostgreSQL; the servers stop before the second fake APNs does."""
    async with Launcher(replica_database_url, fake_apns, tmp_path) as launcher:
        yield launcher


# -- the audience and the outbox, straight from the database ---------------------------------


@dataclass(frozen=True)
class Delivery:
    id: int
    state: str
    lease_owner: str | None
    lease_until: datetime | None
    push_token: str


async def deliveries(database_url: str, ticket_id: int) -> list[Delivery]:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(
                    DeliveryRow.id,
                    DeliveryRow.state,
                    DeliveryRow.lease_owner,
                    DeliveryRow.lease_until,
                    DeviceRegistrationRow.push_token,
                )
                .join(
                    DeviceRegistrationRow, DeviceRegistrationRow.id == DeliveryRow.registration_id
                )
                .where(DeliveryRow.ticket_id == ticket_id)
            )
            return [Delivery(*row) for row in rows]
    finally:
        await engine.dispose()


async def send_to_template(server: ServerProcess, key: str) -> npb.Ticket:
    async with server.channel(key) as channel:
        ticket: npb.Ticket = await notifications_pb2_grpc.NotificationServiceStub(channel).Send(
            npb.SendRequest(
                target=npb.Target(template=npb.TemplateRef(template_id=TEMPLATE)),
                content=npb.Content(header="News", body="Everything is 20% off today"),
            )
        )
    return ticket


async def finish(server: ServerProcess, key: str, ticket_id: int) -> npb.Ticket:
    async with server.channel(key) as channel:
        notifications = notifications_pb2_grpc.NotificationServiceStub(channel)
        return await wait_terminal(notifications, ticket_id, seconds=30)


def assert_all_delivered(ticket: npb.Ticket, total: int) -> None:
    counts = ticket.counts
    assert ticket.state == npb.TICKET_STATE_SUCCEEDED, ticket
    assert (counts.total, counts.delivered, counts.pending) == (total, total, 0), ticket
    assert counts.delivered + counts.failed + counts.skipped + counts.pending == counts.total


def twice_or_more(tokens: list[str]) -> list[str]:
    return [t for t, n in Counter(tokens).items() if n > 1]


async def kill_when(fake: FakeApns, pushes: int, server: ServerProcess) -> int:
    """SIGKILLs `server` as soon as `fake` has received `pushes`; returns the count then."""
    try:
        await fake.wait_for(pushes, timeout=20)
    except TimeoutError:
        raise AssertionError(
            f"the broadcast stalled: {len(fake.received)} of the {pushes} pushes awaited in 20s"
        ) from None
    received = len(fake.received)
    server.kill_now()  # before this loop reads (and answers) another push
    await server.kill()
    return received


# -- one server, killed ----------------------------------------------------------------------

AUDIENCE = 1500  # 15 claims of BATCH_SIZE


async def test_kill_9_mid_broadcast_then_restart_pushes_every_device(
    launch: Launcher, database_url: str, fake_apns: FakeApns, key: str
) -> None:
    tokens = await seed_apple_passes(
        database_url, PROJECT, TEMPLATE, AUDIENCE, new_template_topic=TOPIC
    )
    server = await launch(**WORKER)
    ticket = await send_to_template(server, key)
    assert ticket.counts.total == AUDIENCE, ticket

    received_at_kill = await kill_when(fake_apns, AUDIENCE // 3, server)

    assert received_at_kill < AUDIENCE, "the broadcast ended before the kill: nothing tested"
    outbox = await deliveries(database_url, ticket.id)
    recorded = sum(d.state == "delivered" for d in outbox)
    left_leased = sum(d.state == "pending" and d.lease_owner is not None for d in outbox)
    assert recorded < AUDIENCE  # so the restarted server has work left

    restarted = await launch(**WORKER)
    done = await finish(restarted, key, ticket.id)

    assert_all_delivered(done, AUDIENCE)
    pushed = fake_apns.tokens()
    assert sorted(set(pushed)) == sorted(tokens)  # every device, and only the audience
    repushed = twice_or_more(pushed)
    assert len(repushed) <= BATCH_SIZE, (
        f"{len(repushed)} devices pushed more than once: more than one claim batch"
    )
    print(
        f"killed after {received_at_kill} pushes ({recorded} recorded, {left_leased} leased);"
        f" {len(repushed)} devices pushed twice"
    )


# -- replicas on PostgreSQL ------------------------------------------------------------------

REPLICA_AUDIENCE = 1000


@replicas_on_postgresql
async def test_two_replicas_share_a_broadcast_and_push_each_device_once(
    replicas: Launcher,
    replica_database_url: str,
    fake_apns: FakeApns,
    second_apns: FakeApns,
    key: str,
) -> None:
    tokens = await seed_apple_passes(
        replica_database_url, PROJECT, TEMPLATE, REPLICA_AUDIENCE, new_template_topic=TOPIC
    )
    # The default lease (60 s): in normal operation no lease may expire under a busy replica.
    settings = {"WORKER_BATCH_SIZE": str(BATCH_SIZE), "WORKER_POLL_SECONDS": "0.1"}
    replica_a = await replicas(**settings)
    await replicas(**settings, APNS_ENDPOINT=second_apns.endpoint)  # replica B

    ticket = await send_to_template(replica_a, key)
    done = await finish(replica_a, key, ticket.id)

    assert_all_delivered(done, REPLICA_AUDIENCE)
    pushed = fake_apns.tokens() + second_apns.tokens()
    assert twice_or_more(pushed) == [], "a device was pushed twice in normal operation"
    assert sorted(pushed) == sorted(tokens)
    by_a, by_b = len(fake_apns.received), len(second_apns.received)
    print(f"replica A pushed {by_a}, replica B {by_b}")
    # Both took part: each pushed at least one full claim's worth.
    assert by_a >= BATCH_SIZE and by_b >= BATCH_SIZE, (by_a, by_b)


@replicas_on_postgresql
async def test_when_a_replica_is_killed_the_other_finishes_its_leased_work(
    replicas: Launcher,
    replica_database_url: str,
    fake_apns: FakeApns,
    second_apns: FakeApns,
    key: str,
) -> None:
    tokens = await seed_apple_passes(
        replica_database_url, PROJECT, TEMPLATE, AUDIENCE, new_template_topic=TOPIC
    )
    replica_a = await replicas(**WORKER)
    replica_b = await replicas(**WORKER, APNS_ENDPOINT=second_apns.endpoint)
    # Some of B's pushes are never answered, so that B surely holds leases when it dies
    # (B is killed long before they would time out).
    for slow in tokens[::25]:
        second_apns.hang(slow)
    ticket = await send_to_template(replica_a, key)

    # B is killed once it has done a good part of its share, well before the end.
    by_b_at_kill = await kill_when(second_apns, AUDIENCE // 8, replica_b)

    assert by_b_at_kill + len(fake_apns.received) < AUDIENCE, "the broadcast ended first"
    outbox = await deliveries(replica_database_url, ticket.id)
    # A lease owner is "host:pid:random" (DeliveryWorker.owner).
    b_owner = [d for d in outbox if d.lease_owner and f":{replica_b.pid}:" in d.lease_owner]
    left_by_b = [d for d in b_owner if d.state == "pending"]
    assert left_by_b, (
        f"no delivery leased to replica B (pid {replica_b.pid}) after its kill; owners seen: "
        f"{sorted({d.lease_owner for d in outbox if d.lease_owner})}"
    )

    done = await finish(replica_a, key, ticket.id)

    assert_all_delivered(done, AUDIENCE)
    pushed = fake_apns.tokens() + second_apns.tokens()
    assert sorted(set(pushed)) == sorted(tokens)
    repushed = twice_or_more(pushed)
    assert len(repushed) <= BATCH_SIZE, (
        f"{len(repushed)} devices pushed more than once: more than one claim batch"
    )
    # A finished what B held, and only once B's leases had expired.
    after = {d.id: d for d in await deliveries(replica_database_url, ticket.id)}
    assert {after[d.id].state for d in left_by_b} == {"delivered"}
    lease_ends = {d.push_token: d.lease_until for d in left_by_b}
    for push in fake_apns.received:
        if push.device_token in lease_ends:
            lease_until = lease_ends[push.device_token]
            assert lease_until is not None
            early = lease_until.timestamp() - push.received_at
            assert early < 0.01, f"replica A pushed {push.device_token} {early:.3f}s early"
    print(
        f"B pushed {by_b_at_kill} before the kill and left {len(left_by_b)} leased;"
        f" {len(repushed)} devices pushed twice"
    )


@replicas_on_postgresql
async def test_a_subscriber_of_one_replica_follows_what_another_delivers(
    replicas: Launcher,
    replica_database_url: str,
    fake_apns: FakeApns,
    second_apns: FakeApns,
    key: str,
) -> None:
    """Streams on A are woken by B's outcomes through PostgreSQL (LISTEN/NOTIFY): A serves
    the API alone (`--role api`: no worker, which B's Send would otherwise wake to push a
    share), so it never pushes nor looks at the outbox, and its streams never poll."""
    audience = 300
    tokens = await seed_apple_passes(
        replica_database_url, PROJECT, TEMPLATE, audience, new_template_topic=TOPIC
    )
    replica_a = await replicas(ROLE="api")
    replica_b = await replicas(WORKER_POLL_SECONDS="600", APNS_ENDPOINT=second_apns.endpoint)

    async with replica_a.channel(key) as channel:
        on_a = notifications_pb2_grpc.NotificationServiceStub(channel)
        everything = on_a.StreamDeliveryEvents(npb.StreamDeliveryEventsRequest())
        ticket = await send_to_template(replica_b, key)
        events = []
        async with asyncio.timeout(30):
            updates = [t async for t in on_a.WatchTicket(npb.WatchTicketRequest(id=ticket.id))]
            async for event in everything:
                events.append(event)
                if len(events) == audience:
                    break
        everything.cancel()

    assert updates[-1].state == npb.TICKET_STATE_SUCCEEDED
    assert updates[-1].counts.delivered == audience
    assert fake_apns.received == [] and sorted(second_apns.tokens()) == sorted(tokens)
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})
    assert {e.pass_id for e in events} == {f"{TEMPLATE}-{i}" for i in range(audience)}
    assert {e.outcome for e in events} == {npb.DELIVERY_OUTCOME_DELIVERED}


# -- schedules across restarts and replicas ---------------------------------------------------


def _in(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return ts


async def _schedule_to_template(server: ServerProcess, key: str, seconds: float) -> str:
    async with server.channel(key) as channel:
        scheduled = await notifications_pb2_grpc.NotificationServiceStub(channel).Schedule(
            npb.ScheduleRequest(
                target=npb.Target(template=npb.TemplateRef(template_id=TEMPLATE)),
                content=npb.Content(body="Doors open at six"),
                send_time=_in(seconds),
            )
        )
    return scheduled.id


async def _sent(server: ServerProcess, key: str, schedule_id: str) -> npb.Ticket:
    """Waits for the schedule to be SENT; its ticket, once terminal."""
    async with server.channel(key) as channel:
        stub = notifications_pb2_grpc.NotificationServiceStub(channel)
        async with asyncio.timeout(30):
            while True:
                scheduled = await stub.GetScheduled(npb.GetScheduledRequest(id=schedule_id))
                if scheduled.state == npb.SCHEDULED_NOTIFICATION_STATE_SENT:
                    break
                await asyncio.sleep(0.05)
        return await wait_terminal(stub, scheduled.ticket_id, seconds=30)


async def test_a_schedule_due_while_no_server_ran_fires_at_start_up(
    database_url: str, fake_apns: FakeApns, tmp_path: Path, key: str
) -> None:
    tokens = await seed_apple_passes(database_url, PROJECT, TEMPLATE, 3, new_template_topic=TOPIC)
    async with Launcher(database_url, fake_apns, tmp_path) as launcher:
        first = await launcher()
        schedule_id = await _schedule_to_template(first, key, 2.0)
        a_second_past_due = asyncio.get_running_loop().time() + 2.0 + 1.0
        await first.stop()
        # Its time passes while no server runs (the stop took part of that time already).
        await asyncio.sleep(a_second_past_due - asyncio.get_running_loop().time())
        assert fake_apns.received == []

        restarted = await launcher()
        ticket = await _sent(restarted, key, schedule_id)

    assert ticket.scheduled_notification_id == schedule_id
    assert ticket.late_by.ToTimedelta() >= timedelta(seconds=1), ticket.late_by
    assert ticket.counts.delivered == 3
    assert sorted(fake_apns.tokens()) == sorted(tokens)


@replicas_on_postgresql
async def test_replicas_fire_each_schedule_once(
    replicas: Launcher,
    replica_database_url: str,
    fake_apns: FakeApns,
    second_apns: FakeApns,
    key: str,
) -> None:
    tokens = await seed_apple_passes(
        replica_database_url, PROJECT, TEMPLATE, 4, new_template_topic=TOPIC
    )
    replica_a = await replicas()
    replica_b = await replicas(APNS_ENDPOINT=second_apns.endpoint)
    made = [
        await _schedule_to_template(server, key, 1.5)
        for server in (replica_a, replica_b, replica_a, replica_b, replica_a)
    ]
    tickets = [await _sent(replica_a, key, schedule_id) for schedule_id in made]

    assert len({t.id for t in tickets}) == len(made)
    assert all(t.counts.delivered == len(tokens) for t in tickets)
    pushed = Counter(fake_apns.tokens() + second_apns.tokens())
    assert pushed == {token: len(made) for token in tokens}, "each schedule sent exactly once"
