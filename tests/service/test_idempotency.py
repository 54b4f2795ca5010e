"""request_id (AIP-155): a retry returns the first ticket and sends nothing twice."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.fakes.apns import FakeApns
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from support import World, deliveries_by_state, rich_error, upsert, wait_terminal

TEMPLATE = npb.Target(template=npb.TemplateRef(template_id="loyalty"))


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await world.apple_template("loyalty")
    await world.pass_("p1", "loyalty", devices=2)
    await world.pass_("p2", "loyalty")
    return world


async def test_same_request_id_returns_the_same_ticket_and_pushes_once(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    request = npb.SendRequest(
        target=TEMPLATE, content=npb.Content(body="Hello"), request_id="retry-me"
    )
    first = await notifications.Send(request)
    await wait_terminal(notifications, first.id)
    second = await notifications.Send(request)

    assert second.id == first.id
    assert second.request_id == "retry-me"
    # A second fan-out would be rows by now (committed before the retry's answer).
    assert await deliveries_by_state(sessions) == {"delivered": 3}
    assert sorted(fake_apns.tokens()) == world.tokens_of("p1", "p2")


async def test_concurrent_retries_create_one_ticket(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    request = npb.SendRequest(target=TEMPLATE, content=npb.Content(body="Hi"), request_id="burst")

    tickets = await asyncio.gather(*(notifications.Send(request) for _ in range(10)))
    await wait_terminal(notifications, tickets[0].id)

    assert {t.id for t in tickets} == {tickets[0].id}
    assert await deliveries_by_state(sessions) == {"delivered": 3}  # every retry had answered
    assert sorted(fake_apns.tokens()) == world.tokens_of("p1", "p2")


async def test_reusing_a_request_id_for_another_request_is_refused(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
) -> None:
    await notifications.Send(
        npb.SendRequest(target=TEMPLATE, content=npb.Content(body="One"), request_id="key")
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await notifications.Send(
            npb.SendRequest(target=TEMPLATE, content=npb.Content(body="Two"), request_id="key")
        )

    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "REQUEST_ID_REUSED"


async def test_delete_is_idempotent_too(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    request = npb.DeleteRequest(target=npb.Target(pass_id="p2"), request_id="del-1")
    first = await notifications.Delete(request)
    await wait_terminal(notifications, first.id)

    again = await notifications.Delete(request)

    assert again.id == first.id
    assert await deliveries_by_state(sessions) == {"delivered": 1}  # the retry added none
    assert fake_apns.tokens() == world.tokens_of("p2")


async def test_without_request_id_each_send_is_new(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
) -> None:
    request = npb.SendRequest(target=npb.Target(pass_id="p2"), content=npb.Content(body="x"))
    first = await notifications.Send(request)
    second = await notifications.Send(request)
    await wait_terminal(notifications, second.id)
    await wait_terminal(notifications, first.id)

    assert first.id != second.id
    assert fake_apns.tokens() == world.tokens_of("p2") * 2


async def test_a_retry_finds_its_ticket_after_the_target_changed(
    world: World,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
) -> None:
    await passes.UpsertPass(upsert(id="p2", template_id="loyalty", tags=["vip"]))
    request = npb.SendRequest(
        target=npb.Target(tag=npb.TagRef(tag="vip")),
        content=npb.Content(body="x"),
        request_id="late-retry",
    )
    first = await notifications.Send(request)
    await passes.UpsertPass(upsert(id="p2", template_id="loyalty", tags=[]))  # no "vip" now

    again = await notifications.Send(request)

    assert again.id == first.id


def in_an_hour() -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(time.time()) + 3600)


async def test_a_request_id_is_one_namespace_across_send_delete_and_schedule(
    world: World, notifications: notifications_pb2_grpc.NotificationServiceStub
) -> None:
    """Each kind's retry still answers its first result; another kind reusing the id (a
    one-pass Send, a broadcast Delete, a Schedule) is ALREADY_EXISTS, REQUEST_ID_REUSED."""
    one_pass = npb.Target(pass_id="p1")
    sent = npb.SendRequest(target=one_pass, content=npb.Content(body="x"), request_id="sent")
    scheduled = npb.ScheduleRequest(
        target=one_pass, content=npb.Content(body="x"), send_time=in_an_hour(), request_id="later"
    )
    first_ticket = await notifications.Send(sent)
    first_schedule = await notifications.Schedule(scheduled)

    reuses = {
        "a schedule reusing a send's id": notifications.Schedule(
            npb.ScheduleRequest(
                target=one_pass,
                content=npb.Content(body="x"),
                send_time=in_an_hour(),
                request_id="sent",
            )
        ),
        "a one-pass send reusing a schedule's id": notifications.Send(
            npb.SendRequest(target=one_pass, content=npb.Content(body="x"), request_id="later")
        ),
        "a broadcast delete reusing a schedule's id": notifications.Delete(
            npb.DeleteRequest(target=TEMPLATE, request_id="later")
        ),
        "a one-pass delete reusing a schedule's id": notifications.Delete(
            npb.DeleteRequest(target=one_pass, request_id="later")
        ),
    }
    for what, call in reuses.items():
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        error = rich_error(raised.value)
        assert (error.code, error.reason) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "REQUEST_ID_REUSED",
        ), what

    assert (await notifications.Send(sent)).id == first_ticket.id
    assert (await notifications.Schedule(scheduled)).id == first_schedule.id
