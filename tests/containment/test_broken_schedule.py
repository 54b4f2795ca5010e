"""A schedule that cannot be sent ends FAILED with its reason and holds no other schedule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.app import Application
from passpush.service import schedules
from passpush.store.db import dialect_name
from passpush.store.schedules import ScheduleStore
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from support import World, channel_with_key

Stub = notifications_pb2_grpc.NotificationServiceStub
FAILED = npb.SCHEDULED_NOTIFICATION_STATE_FAILED
SENT = npb.SCHEDULED_NOTIFICATION_STATE_SENT
POISON = "poison"  # the body of the notification the database refuses

_SQLITE_TRIGGER = f"""
CREATE TRIGGER refuse_poison BEFORE INSERT ON tickets WHEN NEW.content_body = '{POISON}'
BEGIN SELECT RAISE(ABORT, 'this ticket is refused'); END
"""


def _postgres_trigger(error: str) -> list[str]:
    """Raises `error` (a PL/pgSQL RAISE operand) at every ticket whose body is POISON."""
    return [
        f"""
        CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN
          IF NEW.content_body = '{POISON}' THEN RAISE {error}; END IF;
          RETURN NEW;
        END $$ LANGUAGE plpgsql
        """,
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON tickets "
        "FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
    ]


async def _drop_postgres_trigger(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions.begin() as session:  # the PostgreSQL database outlives the test
        await session.execute(text("DROP TRIGGER refuse_poison ON tickets"))
        await session.execute(text("DROP FUNCTION refuse_poison()"))


@pytest.fixture
async def poisoned(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[None]:
    """A database that refuses, with an error of its own, every ticket whose body is POISON."""
    async with sessions.begin() as session:
        postgres = dialect_name(session) == "postgresql"
        refused = "EXCEPTION 'this ticket is refused'"
        for statement in _postgres_trigger(refused) if postgres else [_SQLITE_TRIGGER]:
            await session.execute(text(statement))
    yield
    if postgres:
        await _drop_postgres_trigger(sessions)


async def _project(server: Application, project_id: str) -> tuple[World, Stub]:
    _, key = await server.keys.create_key(project_id, "tests", ["all"], create_project=True)
    channel = channel_with_key(server.port, key)
    world = World(passes_pb2_grpc.PassServiceStub(channel), project_id=project_id)
    await world.apple_template("loyalty")
    await world.pass_("p1", "loyalty")
    return world, notifications_pb2_grpc.NotificationServiceStub(channel)


async def _state_of(stub: Stub, schedule_id: str, state: int) -> npb.ScheduledNotification:
    waiting = (
        npb.SCHEDULED_NOTIFICATION_STATE_PENDING,
        npb.SCHEDULED_NOTIFICATION_STATE_PROCESSING,
    )
    async with asyncio.timeout(30):
        found = await stub.GetScheduled(npb.GetScheduledRequest(id=schedule_id))
        while found.state in waiting:
            await asyncio.sleep(0.05)
            found = await stub.GetScheduled(npb.GetScheduledRequest(id=schedule_id))
    assert found.state == state, found
    return found


async def test_a_schedule_the_database_refuses_fails_and_the_others_claimed_with_it_are_sent(
    server: Application, poisoned: None
) -> None:
    """A due schedule whose send the database refuses ends FAILED with its reason, and the
    schedules of another project claimed in the same claim are sent all the same."""
    _, acme = await _project(server, "acme")
    _, beta = await _project(server, "beta")
    send_time = timestamp_pb2.Timestamp()
    send_time.FromDatetime(datetime.now(UTC) + timedelta(seconds=2))

    def at_once(body: str) -> npb.ScheduleRequest:  # all due at one time: claimed together
        target = npb.Target(pass_id="p1")
        content = npb.Content(body=body)
        return npb.ScheduleRequest(target=target, content=content, send_time=send_time)

    broken = await acme.Schedule(at_once(POISON))
    others = [await beta.Schedule(at_once(f"hello {i}")) for i in range(3)]

    failed = await _state_of(acme, broken.id, FAILED)
    for other in others:
        await _state_of(beta, other.id, SENT)

    assert failed.failure_reason == "the database refused it (SQLITE_CONSTRAINT_TRIGGER)" or (
        failed.failure_reason == "the database refused it (SQLSTATE P0001)"
    )
    assert failed.ticket_id == 0
    listed = await acme.ListScheduled(npb.ListScheduledRequest(state=FAILED))
    assert [(s.id, s.failure_reason) for s in listed.scheduled_notifications] == [
        (broken.id, failed.failure_reason)
    ]
    # Failed is final: neither the scheduler nor a restart takes it up again.
    assert await server.scheduler.fire_due() == 0
    assert (await acme.GetScheduled(npb.GetScheduledRequest(id=broken.id))).state == FAILED


# A trigger on SQLite can only refuse a statement, not fail it as a full disk would.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_schedule_the_database_keeps_failing_is_tried_a_few_times_then_failed(
    server: Application,
    sessions: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A schedule whose send meets a passing database failure (here: disk full, every time)
    is tried again a bounded number of times, then ends FAILED saying so."""
    async with sessions.begin() as session:
        for statement in _postgres_trigger("EXCEPTION 'no space left' USING ERRCODE = 'disk_full'"):
            await session.execute(text(statement))
    monkeypatch.setattr(schedules, "RETRY_BACKOFF", timedelta(milliseconds=50))
    try:
        _, acme = await _project(server, "acme")
        send_time = timestamp_pb2.Timestamp()
        send_time.FromDatetime(datetime.now(UTC) + timedelta(seconds=1))
        broken = await acme.Schedule(
            npb.ScheduleRequest(
                target=npb.Target(pass_id="p1"),
                content=npb.Content(body=POISON),
                send_time=send_time,
            )
        )
        failed = await _state_of(acme, broken.id, FAILED)
        assert failed.failure_reason == (
            f"given up after {schedules.MAX_SEND_ATTEMPTS} attempts: the database failed "
            "(SQLSTATE 53100)"
        )
    finally:
        await _drop_postgres_trigger(sessions)


async def test_a_schedule_whose_senders_keep_dying_is_given_up_after_its_attempts(
    server: Application, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A schedule whose every claim runs out (its sender dies each time) is claimed at most
    MAX_SEND_ATTEMPTS times, then FAILED: it is never claimed for ever."""
    await server.scheduler.stop()  # these claims stand for schedulers that die
    _, acme = await _project(server, "acme")
    send_time = timestamp_pb2.Timestamp()
    send_time.FromDatetime(datetime.now(UTC) + timedelta(seconds=1))
    doomed = await acme.Schedule(
        npb.ScheduleRequest(
            target=npb.Target(pass_id="p1"), content=npb.Content(body="x"), send_time=send_time
        )
    )
    now = datetime.now(UTC) + timedelta(seconds=2)
    lease = schedules.CLAIM_LEASE
    claims = []
    for attempt in range(schedules.MAX_SEND_ATTEMPTS + 1):
        async with sessions.begin() as session:
            claimed = await ScheduleStore(session).claim_due(
                f"dying-{attempt}", now, lease, 10, schedules.MAX_SEND_ATTEMPTS
            )
        claims.append([(s.id, n) for s, n in claimed])
        now += lease + timedelta(seconds=1)  # the claim ran out: its sender died

    attempts = [[(doomed.id, n)] for n in range(1, schedules.MAX_SEND_ATTEMPTS + 1)]
    assert claims == [*attempts, []]
    failed = await acme.GetScheduled(npb.GetScheduledRequest(id=doomed.id))
    assert failed.state == FAILED
    assert failed.failure_reason == (
        f"given up after {schedules.MAX_SEND_ATTEMPTS} attempts to send it"
    )
