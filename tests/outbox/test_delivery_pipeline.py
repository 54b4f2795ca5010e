"""The worker's pipeline on an audience larger than its window: nothing lost, nothing twice."""

from __future__ import annotations

import pytest

from passpush.delivery.worker import WorkerSettings
from passpush.fakes.apns import FakeApns
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from support import World, seed_apple_passes, wait_terminal

AUDIENCE = 1_500


@pytest.fixture
def worker_settings() -> WorkerSettings:
    # A small window and frequent writes: many claims and flushes overlap the pushes.
    return WorkerSettings(
        poll_interval=0.05, batch_size=200, max_in_flight=50, record_interval=0.01
    )


async def test_a_broadcast_larger_than_the_window_delivers_each_device_once(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    database_url: str,
    fake_apns: FakeApns,
) -> None:
    await World(passes).apple_template("crowd")
    tokens = await seed_apple_passes(database_url, "acme", "crowd", AUDIENCE)

    accepted = await notifications.Send(
        npb.SendRequest(
            target=npb.Target(template=npb.TemplateRef(template_id="crowd")),
            content=npb.Content(body="Everyone"),
        )
    )
    ticket = await wait_terminal(notifications, accepted.id, seconds=60)

    assert ticket.state == npb.TICKET_STATE_SUCCEEDED
    assert (ticket.counts.total, ticket.counts.delivered) == (AUDIENCE, AUDIENCE)
    assert sorted(fake_apns.tokens()) == sorted(tokens)


async def test_pushes_in_flight_never_exceed_the_setting(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    database_url: str,
    fake_apns: FakeApns,
    worker_settings: WorkerSettings,
) -> None:
    """Over a whole broadcast to a slow APNs, the most pushes the fake held unanswered at
    once is the setting: no sleep waits to see that no push beyond it arrives."""
    await World(passes).apple_template("crowd")
    tokens = await seed_apple_passes(database_url, "acme", "crowd", 300)
    fake_apns.answer_delay = 0.05  # each push stays in flight a while: the window fills

    accepted = await notifications.Send(
        npb.SendRequest(
            target=npb.Target(template=npb.TemplateRef(template_id="crowd")),
            content=npb.Content(body="Everyone"),
        )
    )
    ticket = await wait_terminal(notifications, accepted.id, seconds=60)

    assert ticket.counts.delivered == len(tokens)
    assert fake_apns.most_unanswered == worker_settings.max_in_flight
