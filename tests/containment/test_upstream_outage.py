"""A flaky or down APNs costs time, never a delivery that could still be made."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from passpush.delivery.worker import WorkerSettings
from passpush.domain.outcomes import RetryPolicy
from passpush.fakes.apns import FakeApns
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from support import World, seed_apple_passes, wait_terminal

# Retries 0.1-0.5 s apart: five attempts cover about a second, far less than the outage.
FAST_BACKOFF = RetryPolicy(budget=60.0, backoff_base=0.1, backoff_cap=0.5)
OUTAGE_SECONDS = 4.0


@pytest.fixture
def worker_settings() -> WorkerSettings:
    return WorkerSettings(poll_interval=0.05, batch_size=400, retry=FAST_BACKOFF)


async def broadcast(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    database_url: str,
    audience: int,
) -> tuple[list[str], int]:
    """Sends to `audience` new Apple devices; their tokens and the ticket's id."""
    await World(passes).apple_template("crowd")
    tokens = await seed_apple_passes(database_url, "acme", "crowd", audience)
    accepted = await notifications.Send(
        npb.SendRequest(
            target=npb.Target(template=npb.TemplateRef(template_id="crowd")),
            content=npb.Content(body="Everyone"),
        )
    )
    return tokens, accepted.id


async def test_a_broadcast_through_an_apns_outage_reaches_every_device(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    database_url: str,
    fake_apns: FakeApns,
) -> None:
    """An APNs outage far longer than a few retries cover, but within the retry budget,
    fails no delivery: each device is reached once APNs is back."""
    await fake_apns.outage(OUTAGE_SECONDS)

    tokens, ticket_id = await broadcast(passes, notifications, database_url, 300)
    ticket = await wait_terminal(notifications, ticket_id, seconds=60)

    assert ticket.state == npb.TICKET_STATE_SUCCEEDED, ticket
    assert ticket.counts.delivered == len(tokens)
    assert sorted(fake_apns.delivered) == sorted(tokens)


async def test_errors_and_dropped_connections_deliver_each_device_and_count_it_once(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    database_url: str,
    fake_apns: FakeApns,
) -> None:
    """With 30% of pushes answered 429/500/503 and connections dropped mid-stream, every
    device is delivered, and a push APNs answered 200 is never pushed again (the fake never
    loses an answer it sent, so any push after a 200 would be passpush's duplicate)."""
    fake_apns.faults(errors=0.3, drops=0.02, seed=16)

    tokens, ticket_id = await broadcast(passes, notifications, database_url, 1000)
    ticket = await wait_terminal(notifications, ticket_id, seconds=90)

    assert ticket.state == npb.TICKET_STATE_SUCCEEDED, ticket
    assert (ticket.counts.delivered, ticket.counts.failed) == (len(tokens), 0)
    assert sorted(fake_apns.delivered) == sorted(tokens)
    assert set(fake_apns.delivered.values()) == {1}
    assert fake_apns.duplicates == 0
    # The faults did happen: some pushes were retried.
    assert sum(fake_apns.pushes.values()) > len(tokens) * 1.1


@pytest.mark.parametrize(
    "worker_settings",
    [
        WorkerSettings(
            poll_interval=0.05, retry=RetryPolicy(budget=1.0, backoff_base=0.1, backoff_cap=0.2)
        )
    ],
)
async def test_a_permanent_outage_fails_the_deliveries_once_the_budget_is_spent(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    database_url: str,
    fake_apns: FakeApns,
    worker_settings: WorkerSettings,
) -> None:
    """The retry budget bounds the retries: an APNs that never comes back fails each
    delivery once the budget is spent, naming why."""
    await fake_apns.outage(None)
    started = asyncio.get_running_loop().time()

    tokens, ticket_id = await broadcast(passes, notifications, database_url, 20)
    ticket = await wait_terminal(notifications, ticket_id, seconds=60)

    assert ticket.state == npb.TICKET_STATE_FAILED
    assert ticket.counts.failed == len(tokens)
    assert [e.reason for e in ticket.errors] == ["ConnectionLost"]
    assert asyncio.get_running_loop().time() - started >= worker_settings.retry.budget


@pytest.mark.parametrize(
    "worker_settings",
    [
        WorkerSettings(
            poll_interval=0.05, batch_size=60, max_in_flight=4, lease=timedelta(seconds=1)
        )
    ],
)
async def test_a_slow_apns_never_gets_a_delivery_pushed_twice(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    database_url: str,
    fake_apns: FakeApns,
) -> None:
    """When APNs answers slowly, deliveries wait in the worker longer than their lease; the
    worker keeps them its own meanwhile, so none is pushed twice or counted wrong."""
    fake_apns.answer_delay = 0.25  # 60 pushes, 4 at a time: ~4 s, four leases

    tokens, ticket_id = await broadcast(passes, notifications, database_url, 60)
    ticket = await wait_terminal(notifications, ticket_id, seconds=60)

    assert ticket.state == npb.TICKET_STATE_SUCCEEDED, ticket
    assert ticket.counts.delivered == len(tokens)
    assert sorted(fake_apns.pushes) == sorted(tokens)
    assert (fake_apns.duplicates, sum(fake_apns.pushes.values())) == (0, len(tokens))
