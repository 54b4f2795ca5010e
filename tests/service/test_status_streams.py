"""WatchTicket and StreamDeliveryEvents: live, complete, resumable, and freed when left."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.app import Application
from passpush.domain.model import SKIP_NO_DEVICES
from passpush.domain.validation import OUTCOMES_MAX
from passpush.fakes.apns import FakeApns
from passpush.service.status import EventRetention
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from support import World, rich_error, wait_terminal

PASSES = 40
TEMPLATE = npb.Target(template=npb.TemplateRef(template_id="loyalty"))
Stub = notifications_pb2_grpc.NotificationServiceStub


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await world.apple_template("loyalty")
    for i in range(PASSES):
        await world.pass_(f"p{i}", "loyalty", devices=2 if i % 10 == 0 else 1)
    await world.pass_("lonely", "loyalty", devices=0)  # skipped: no device
    return world


def _device_of(world: World) -> dict[str, tuple[str, str]]:
    """token -> (pass id, device library identifier), as World registered them."""
    return {
        token: (pass_id, f"{pass_id}-device-{i}")
        for pass_id, tokens in world.devices.items()
        for i, token in enumerate(tokens)
    }


async def _events(stub: Stub, **request: object) -> list[npb.DeliveryEvent]:
    return [e async for e in stub.StreamDeliveryEvents(npb.StreamDeliveryEventsRequest(**request))]


async def test_watch_ticket_follows_a_broadcast_to_its_end(
    world: World, notifications: Stub
) -> None:
    ticket = await notifications.Send(
        npb.SendRequest(target=TEMPLATE, content=npb.Content(body="Hello"))
    )
    started = time.monotonic()
    updates = [t async for t in notifications.WatchTicket(npb.WatchTicketRequest(id=ticket.id))]
    seconds = time.monotonic() - started

    assert updates[0].id == ticket.id
    assert updates[-1].state == npb.TICKET_STATE_SUCCEEDED  # and then the stream ended
    assert [u.state for u in updates[:-1]].count(npb.TICKET_STATE_SUCCEEDED) == 0
    done = [u.counts.delivered + u.counts.failed + u.counts.skipped for u in updates]
    assert done == sorted(done), "progress never goes back"
    assert len(set(done)) == len(done), "a message only when something changed"
    total = PASSES + 4 + 1  # 4 passes have two devices; one pass has none
    assert (updates[-1].counts.total, updates[-1].counts.delivered) == (total, total - 1)
    assert updates[-1].counts.skipped == 1
    assert len(updates) <= 2 + 10 * seconds + 1, "coalesced to about ten a second"
    assert updates[-1] == await notifications.GetTicket(npb.GetTicketRequest(id=ticket.id))


async def test_watching_a_finished_ticket_gives_one_message(
    world: World, notifications: Stub
) -> None:
    ticket = await notifications.Send(
        npb.SendRequest(target=npb.Target(pass_id="p1"), content=npb.Content(body="Hi"))
    )
    final = await wait_terminal(notifications, ticket.id)
    updates = [t async for t in notifications.WatchTicket(npb.WatchTicketRequest(id=ticket.id))]
    assert updates == [final]


async def test_watching_an_unknown_ticket_is_not_found(notifications: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in notifications.WatchTicket(npb.WatchTicketRequest(id=424242)):
            pass
    assert rich_error(raised.value).resource == ("ticket", "424242")


async def test_events_tell_every_outcome_of_a_broadcast_in_order(
    world: World, notifications: Stub, fake_apns: FakeApns
) -> None:
    gone, bad = world.devices["p3"][0], world.devices["p4"][0]
    fake_apns.respond(gone, 410, "Unregistered")
    fake_apns.respond(bad, 400, "BadDeviceToken")
    ticket = await notifications.Send(
        npb.SendRequest(target=TEMPLATE, content=npb.Content(body="Hello"))
    )
    events = await _events(notifications, ticket_id=ticket.id)  # ends: the ticket is done

    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences)), "strictly increasing"
    device_of = _device_of(world)
    pushed = {device_of[token] for token in fake_apns.tokens()}
    attempted = {(e.pass_id, e.device_library_identifier) for e in events if e.attempt}
    assert attempted == pushed and len(events) == len(pushed) + 1, "one event a push, + skip"
    by_device = {(e.pass_id, e.device_library_identifier): e for e in events}
    assert by_device[device_of[gone]].outcome == npb.DELIVERY_OUTCOME_FAILED
    assert by_device[device_of[gone]].reason == "Unregistered"
    assert by_device[device_of[bad]].reason == "BadDeviceToken"
    skipped = by_device[("lonely", "")]
    assert (skipped.outcome, skipped.reason, skipped.attempt) == (
        npb.DELIVERY_OUTCOME_SKIPPED,
        SKIP_NO_DEVICES,
        0,
    )
    delivered = [e for e in events if e.outcome == npb.DELIVERY_OUTCOME_DELIVERED]
    assert len(delivered) == len(pushed) - 2
    assert all(e.ticket_id == ticket.id and e.platform for e in events)
    assert all(e.event_time.seconds > 0 for e in events)


async def test_a_retry_is_an_event_of_its_own(
    world: World, notifications: Stub, fake_apns: FakeApns
) -> None:
    token = world.devices["p1"][0]
    fake_apns.respond(token, 503, "ServiceUnavailable", times=1)
    ticket = await notifications.Send(
        npb.SendRequest(target=npb.Target(pass_id="p1"), content=npb.Content(body="Hi"))
    )
    events = await _events(notifications, ticket_id=ticket.id)
    assert [(e.outcome, e.reason, e.attempt) for e in events] == [
        (npb.DELIVERY_OUTCOME_RETRYING, "ServiceUnavailable", 1),
        (npb.DELIVERY_OUTCOME_DELIVERED, "", 2),
    ]


async def test_a_subscriber_resumes_with_no_gap_and_no_repeat(
    world: World, notifications: Stub, fake_apns: FakeApns
) -> None:
    first = await notifications.Send(
        npb.SendRequest(target=TEMPLATE, content=npb.Content(body="One"))
    )
    seen: list[npb.DeliveryEvent] = []
    stream = notifications.StreamDeliveryEvents(npb.StreamDeliveryEventsRequest())
    async for event in stream:  # every ticket: this stream never ends by itself
        seen.append(event)
        if len(seen) == 17:
            break
    stream.cancel()  # a disconnect in the middle of the broadcast
    second = await notifications.Send(
        npb.SendRequest(target=TEMPLATE, content=npb.Content(body="Two"))
    )
    await wait_terminal(notifications, first.id)
    await wait_terminal(notifications, second.id)
    expected = len(fake_apns.received) + 2  # and a skip each

    async with asyncio.timeout(10):
        async for event in notifications.StreamDeliveryEvents(
            npb.StreamDeliveryEventsRequest(after_sequence=seen[-1].sequence)
        ):
            seen.append(event)
            if len(seen) == expected:
                break
    everything = await _events(notifications, ticket_id=first.id) + await _events(
        notifications, ticket_id=second.id
    )
    assert [e.sequence for e in seen] == sorted(e.sequence for e in everything)
    assert seen == sorted(everything, key=lambda e: e.sequence)


async def test_events_filter_by_target_and_outcome(
    world: World, notifications: Stub, fake_apns: FakeApns
) -> None:
    fake_apns.respond(world.devices["p5"][0], 400, "BadDeviceToken")
    ticket = await notifications.Send(
        npb.SendRequest(target=TEMPLATE, content=npb.Content(body="Hello"))
    )
    await wait_terminal(notifications, ticket.id)

    of_p0 = await _events(notifications, ticket_id=ticket.id, target=npb.Target(pass_id="p0"))
    assert sorted(e.device_library_identifier for e in of_p0) == ["p0-device-0", "p0-device-1"]
    failed = await _events(
        notifications, ticket_id=ticket.id, outcomes=[npb.DELIVERY_OUTCOME_FAILED]
    )
    assert [(e.pass_id, e.reason) for e in failed] == [("p5", "BadDeviceToken")]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _events(notifications, target=npb.Target(pass_id="nobody"))
    assert rich_error(raised.value).code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _events(notifications, outcomes=[npb.DELIVERY_OUTCOME_UNSPECIFIED])
    assert rich_error(raised.value).field_violations == ["outcomes"]


async def test_a_client_that_leaves_frees_its_stream_at_once(
    world: World, server: Application, notifications: Stub, fake_apns: FakeApns
) -> None:
    fake_apns.hang(world.devices["p2"][0])  # the ticket never finishes
    ticket = await notifications.Send(
        npb.SendRequest(target=npb.Target(pass_id="p2"), content=npb.Content(body="Hi"))
    )
    watch = notifications.WatchTicket(npb.WatchTicketRequest(id=ticket.id))
    await watch.read()
    assert ticket.id in server.watch.watched()
    watch.cancel()
    for _ in range(100):
        if ticket.id not in server.watch.watched():
            break
        await asyncio.sleep(0.01)
    assert ticket.id not in server.watch.watched()


async def test_old_events_are_purged_after_the_retention(
    world: World, notifications: Stub, sessions: async_sessionmaker[AsyncSession]
) -> None:
    ticket = await notifications.Send(
        npb.SendRequest(target=npb.Target(pass_id="p1"), content=npb.Content(body="Hi"))
    )
    await wait_terminal(notifications, ticket.id)
    assert len(await _events(notifications, ticket_id=ticket.id)) == 1

    keep = EventRetention(sessions, timedelta(days=7))
    assert await keep.purge() == 0  # nothing is a week old
    later = EventRetention(
        sessions,
        timedelta(days=7),
        clock=lambda: datetime.now(UTC) + timedelta(days=8),
    )
    assert await later.purge() == 1
    assert await _events(notifications, ticket_id=ticket.id) == []


async def test_a_subscriber_that_does_not_read_slows_nothing(
    world: World, notifications: Stub
) -> None:
    stalled = notifications.StreamDeliveryEvents(npb.StreamDeliveryEventsRequest())
    watched = notifications.WatchTicket(npb.WatchTicketRequest(id=1))
    for _ in range(3):  # one after another, while the subscribers read nothing
        ticket = await notifications.Send(
            npb.SendRequest(target=TEMPLATE, content=npb.Content(body="Hello"))
        )
        done = await wait_terminal(notifications, ticket.id, seconds=10)
        assert done.state == npb.TICKET_STATE_SUCCEEDED
    first = await stalled.read()
    assert isinstance(first, npb.DeliveryEvent) and first.sequence == 1
    stalled.cancel()
    watched.cancel()


async def test_streams_end_unavailable_when_the_server_stops(
    world: World, server: Application, notifications: Stub, fake_apns: FakeApns
) -> None:
    # Retried with backoff: the ticket stays open, with no push held in flight.
    fake_apns.respond(world.devices["p2"][0], 503, "ServiceUnavailable")
    ticket = await notifications.Send(
        npb.SendRequest(target=npb.Target(pass_id="p2"), content=npb.Content(body="Hi"))
    )
    watch = notifications.WatchTicket(npb.WatchTicketRequest(id=ticket.id))
    events = notifications.StreamDeliveryEvents(npb.StreamDeliveryEventsRequest())
    await watch.read()
    await fake_apns.wait_for(1)
    started = time.monotonic()
    await server.stop(grace=5.0)
    assert time.monotonic() - started < 4.0, "streams do not hold shutdown for the grace"
    for stream in (watch, events):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            while True:
                await stream.read()
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_an_outcome_filter_over_its_limit_is_invalid_argument(notifications: Stub) -> None:
    outcomes = [npb.DELIVERY_OUTCOME_DELIVERED] * (OUTCOMES_MAX + 1)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _events(notifications, outcomes=outcomes)
    error = rich_error(raised.value)
    assert (error.code, error.field_violations) == (grpc.StatusCode.INVALID_ARGUMENT, ["outcomes"])
    assert f"at most {OUTCOMES_MAX}" in (raised.value.details() or "")
