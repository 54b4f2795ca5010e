"""What each APNs answer does to a delivery, its registration and its ticket."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.app import Application
from passpush.delivery.worker import WorkerSettings
from passpush.domain.clock import utcnow
from passpush.domain.model import DeliveryState
from passpush.domain.outcomes import RetryPolicy
from passpush.fakes.apns import FakeApns
from passpush.outbox.claiming import claim_due
from passpush.outbox.recording import DeliveryResult, record
from passpush.store.connectors.session import run_on_session
from passpush.store.events import EventStore
from passpush.store.models import DeliveryRow, DeviceRegistrationRow
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from support import World, wait_terminal

TEMPLATE = npb.Target(template=npb.TemplateRef(template_id="loyalty"))


@pytest.fixture
def worker_settings() -> WorkerSettings:
    # Retries for a second, 0.1-0.2 s apart.
    return WorkerSettings(
        poll_interval=0.05, retry=RetryPolicy(budget=1.0, backoff_base=0.2, backoff_cap=0.2)
    )


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await world.apple_template("loyalty")
    for pass_id in ("p1", "p2", "p3"):
        await world.pass_(pass_id, "loyalty")
    return world


async def send(notifications: notifications_pb2_grpc.NotificationServiceStub) -> npb.Ticket:
    accepted = await notifications.Send(
        npb.SendRequest(target=TEMPLATE, content=npb.Content(body="Hello"))
    )
    return await wait_terminal(notifications, accepted.id)


async def registrations(sessions: async_sessionmaker[AsyncSession]) -> dict[str, bool]:
    async with sessions() as session:
        rows = await session.execute(
            select(DeviceRegistrationRow.push_token, DeviceRegistrationRow.active)
        )
        return {t: a for t, a in rows.all()}


async def test_unregistered_removes_the_registration(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    gone = world.devices["p1"][0]
    fake_apns.respond(gone, 410, "Unregistered")

    ticket = await send(notifications)

    assert ticket.state == npb.TICKET_STATE_PARTIALLY_FAILED
    assert (ticket.counts.delivered, ticket.counts.failed) == (2, 1)
    assert [(e.reason, e.count) for e in ticket.errors] == [("Unregistered", 1)]
    assert gone not in await registrations(sessions)
    assert fake_apns.tokens().count(gone) == 1  # no retry

    fake_apns.reset()
    again = await send(notifications)
    assert gone not in fake_apns.tokens()
    assert (again.counts.delivered, again.counts.skipped) == (2, 1)


@pytest.mark.parametrize("reason", ["BadDeviceToken", "DeviceTokenNotForTopic"])
async def test_bad_token_deactivates_the_registration(
    reason: str,
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    bad = world.devices["p2"][0]
    fake_apns.respond(bad, 400, reason)

    ticket = await send(notifications)

    assert [(e.reason, e.count) for e in ticket.errors] == [(reason, 1)]
    assert (await registrations(sessions))[bad] is False
    assert fake_apns.tokens().count(bad) == 1


async def test_retryable_answers_are_retried_until_delivered(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    flaky = world.devices["p3"][0]
    fake_apns.respond(flaky, 503, "ServiceUnavailable", times=1)

    ticket = await send(notifications)

    assert ticket.state == npb.TICKET_STATE_SUCCEEDED
    assert ticket.counts.delivered == 3
    assert fake_apns.tokens().count(flaky) == 2
    async with sessions() as session:
        attempts = await session.scalar(
            select(DeliveryRow.attempts)
            .where(DeliveryRow.ticket_id == ticket.id)
            .order_by(DeliveryRow.attempts.desc())
            .limit(1)
        )
    assert attempts == 2


async def test_retries_are_bounded_and_keep_the_last_reason(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
) -> None:
    throttled = world.devices["p3"][0]
    fake_apns.respond(throttled, 429, "TooManyRequests")

    ticket = await send(notifications)

    # Retried 0.1-0.2 s apart until the 1-s budget was spent: 6 to 11 pushes, on a machine
    # slow enough, as few as 2.
    assert fake_apns.tokens().count(throttled) >= 2
    assert [(e.reason, e.count) for e in ticket.errors] == [("TooManyRequests", 1)]
    assert ticket.state == npb.TICKET_STATE_PARTIALLY_FAILED


async def test_forbidden_fails_without_retry(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
) -> None:
    for tokens in world.devices.values():
        fake_apns.respond(tokens[0], 403, "InvalidProviderToken")

    ticket = await send(notifications)

    assert ticket.state == npb.TICKET_STATE_FAILED
    assert ticket.counts.failed == 3
    assert [(e.reason, e.count) for e in ticket.errors] == [("403 InvalidProviderToken", 3)]
    assert len(fake_apns.received) == 3


async def test_expired_leases_of_a_dead_worker_are_delivered(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
    sessions: async_sessionmaker[AsyncSession],
    server: Application,
) -> None:
    await server.worker.stop(grace=1.0)  # only the "dead" worker below may claim now
    accepted = await notifications.Send(
        npb.SendRequest(target=TEMPLATE, content=npb.Content(body="Hello"))
    )
    async with sessions.begin() as session:
        claimed = await run_on_session(
            session, claim_due("dead-worker", utcnow(), timedelta(milliseconds=300), limit=2)
        )
    assert len(claimed) == 2  # leased, then never recorded: the worker "crashed"

    server.worker.start()
    ticket = await wait_terminal(notifications, accepted.id)

    assert ticket.counts.delivered == 3
    assert sorted(fake_apns.tokens()) == world.tokens_of("p1", "p2", "p3")


async def test_an_answer_after_the_lease_was_taken_over_counts_once_for_the_new_owner(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    sessions: async_sessionmaker[AsyncSession],
    server: Application,
) -> None:
    await server.worker.stop(grace=1.0)  # the outbox is driven by hand below
    accepted = await notifications.Send(
        npb.SendRequest(target=TEMPLATE, content=npb.Content(body="Hello"))
    )
    now = utcnow()
    async with sessions.begin() as session:
        slow = await run_on_session(session, claim_due("slow", now, timedelta(seconds=1), limit=3))
    after_its_lease = now + timedelta(seconds=2)
    async with sessions.begin() as session:
        taken_over = await run_on_session(
            session, claim_due("new-owner", after_its_lease, timedelta(seconds=60), limit=3)
        )
    assert [d.id for d in taken_over] == [d.id for d in slow] and len(slow) == 3

    late_answers = [
        DeliveryResult(slow[0], DeliveryState.PENDING, "TooManyRequests", after_its_lease),
        *(DeliveryResult(d, DeliveryState.DELIVERED, "") for d in slow[1:]),
    ]
    async with sessions.begin() as session:
        await run_on_session(session, record("slow", late_answers, after_its_lease))
    ticket = await notifications.GetTicket(npb.GetTicketRequest(id=accepted.id))
    assert (ticket.counts.pending, ticket.counts.delivered) == (3, 0)
    async with sessions() as session:
        assert await EventStore(session).after("acme", 0, limit=10) == []  # nothing happened

    async with sessions.begin() as session:
        answers = [DeliveryResult(d, DeliveryState.DELIVERED, "") for d in taken_over]
        await run_on_session(session, record("new-owner", answers, after_its_lease))
    ticket = await notifications.GetTicket(npb.GetTicketRequest(id=accepted.id))
    assert ticket.state == npb.TICKET_STATE_SUCCEEDED
    assert (ticket.counts.pending, ticket.counts.delivered) == (0, 3)
