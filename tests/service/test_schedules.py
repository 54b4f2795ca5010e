"""Schedules: validated, idempotent, fired on time and once, cancellable while pending, listed;
campaigns capped over immediate and scheduled sends, race-free."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.fakes.apns import FakeApns
from passpush.store.models import PassRow, TicketRow
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from support import World, rich_error, wait_terminal

Stub = notifications_pb2_grpc.NotificationServiceStub
P1 = npb.Target(pass_id="p1")
CAMPAIGN = npb.Target(campaign_id="spring")
PENDING = npb.SCHEDULED_NOTIFICATION_STATE_PENDING
SENT = npb.SCHEDULED_NOTIFICATION_STATE_SENT


def at(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return ts


def schedule(
    target: npb.Target, seconds: float, body: str = "Later", **more: str
) -> npb.ScheduleRequest:
    return npb.ScheduleRequest(
        target=target, content=npb.Content(header="News", body=body), send_time=at(seconds), **more
    )


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await passes.CreateEntity(
        ppb.CreateEntityRequest(entity_id="brand", entity=ppb.Entity(project_id="acme"))
    )
    await world.apple_template("loyalty", entity_id="brand")
    await world.pass_("p1", "loyalty", group_tags=("summer",))
    await world.pass_("p2", "loyalty", group_tags=("winter",))
    await world.pass_("p9", "loyalty")
    await passes.CreateCampaign(
        ppb.CreateCampaignRequest(
            campaign_id="spring", campaign=ppb.Campaign(project_id="acme", notification_limit=3)
        )
    )
    await passes.AddCampaignMembers(
        ppb.AddCampaignMembersRequest(campaign_id="spring", pass_ids=["p1", "p2"])
    )
    return world


async def wait_state(
    stub: Stub, schedule_id: str, state: int, seconds: float = 10
) -> npb.ScheduledNotification:
    async with asyncio.timeout(seconds):
        while True:
            scheduled = await stub.GetScheduled(npb.GetScheduledRequest(id=schedule_id))
            if scheduled.state == state:
                return scheduled
            await asyncio.sleep(0.02)


async def test_send_time_must_be_in_the_future_and_within_30_days(
    world: World, notifications: Stub
) -> None:
    for seconds in (-60, 0, 31 * 24 * 3600):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await notifications.Schedule(schedule(P1, seconds))
        error = rich_error(raised.value)
        assert (error.code, error.field_violations) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            ["send_time"],
        )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await notifications.Schedule(npb.ScheduleRequest(target=P1, content=npb.Content(body="x")))
    assert rich_error(raised.value).field_violations == ["send_time"]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await notifications.Schedule(schedule(npb.Target(pass_id="nobody"), 60))
    assert rich_error(raised.value).resource == ("pass", "nobody")

    listed = await notifications.ListScheduled(npb.ListScheduledRequest())
    assert list(listed.scheduled_notifications) == []  # nothing was created
    almost_30_days = await notifications.Schedule(schedule(P1, 30 * 24 * 3600 - 60))
    assert almost_30_days.state == PENDING


async def test_a_schedule_fires_on_time_as_send_would(
    world: World, notifications: Stub, fake_apns: FakeApns
) -> None:
    scheduled = await notifications.Schedule(schedule(P1, 1.5))
    assert (scheduled.state, scheduled.ticket_id) == (PENDING, 0)
    due = scheduled.send_time.ToDatetime(tzinfo=UTC).timestamp()

    await fake_apns.wait_for(1, timeout=10)
    pushed_at = time.time()
    sent = await wait_state(notifications, scheduled.id, SENT)

    assert 0 <= pushed_at - due < 1.0, f"pushed {pushed_at - due:.3f} s after its time"
    assert fake_apns.tokens() == world.tokens_of("p1")
    ticket = await notifications.GetTicket(npb.GetTicketRequest(id=sent.ticket_id))
    assert ticket.target == P1 and ticket.content.body == "Later"
    assert ticket.scheduled_notification_id == scheduled.id
    assert 0 <= ticket.late_by.ToTimedelta().total_seconds() < 1.0
    assert ticket.create_time.ToDatetime(tzinfo=UTC).timestamp() >= due


async def test_schedule_is_idempotent_with_a_request_id(world: World, notifications: Stub) -> None:
    first = await notifications.Schedule(schedule(P1, 60, request_id="once"))
    again = await notifications.Schedule(
        npb.ScheduleRequest(
            target=P1, content=first.content, send_time=first.send_time, request_id="once"
        )
    )
    assert again.id == first.id
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await notifications.Schedule(schedule(P1, 60, body="Other", request_id="once"))
    assert rich_error(raised.value).reason == "REQUEST_ID_REUSED"
    listed = await notifications.ListScheduled(npb.ListScheduledRequest())
    assert [s.id for s in listed.scheduled_notifications] == [first.id]


async def test_only_a_pending_schedule_can_be_cancelled_and_it_never_fires(
    world: World, notifications: Stub, fake_apns: FakeApns
) -> None:
    doomed = await notifications.Schedule(schedule(P1, 1.0))
    # Due after the cancelled one: schedules fire in the order of their times, so once this
    # one is sent the cancelled one's time has passed, and it was passed over.
    fired = await notifications.Schedule(schedule(npb.Target(pass_id="p2"), 1.2))
    cancelled = await notifications.Cancel(npb.CancelRequest(id=doomed.id))
    assert cancelled.state == npb.SCHEDULED_NOTIFICATION_STATE_CANCELLED
    sent = await wait_state(notifications, fired.id, SENT)
    await wait_terminal(notifications, sent.ticket_id)
    passed_over = await notifications.GetScheduled(npb.GetScheduledRequest(id=doomed.id))

    assert (passed_over.state, passed_over.ticket_id) == (
        npb.SCHEDULED_NOTIFICATION_STATE_CANCELLED,
        0,
    )
    assert fake_apns.tokens() == world.tokens_of("p2")
    for schedule_id in (doomed.id, fired.id):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await notifications.Cancel(npb.CancelRequest(id=schedule_id))
        error = rich_error(raised.value)
        assert (error.code, error.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "SCHEDULE_NOT_PENDING",
        )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await notifications.Cancel(npb.CancelRequest(id="no-such-schedule"))
    assert rich_error(raised.value).code == grpc.StatusCode.NOT_FOUND


async def test_list_filters_by_state_and_target_newest_first_in_pages(
    world: World, notifications: Stub
) -> None:
    template = npb.Target(template=npb.TemplateRef(template_id="loyalty"))
    made = [
        await notifications.Schedule(schedule(target, 3600))
        for target in (P1, template, P1, template, template)
    ]
    await notifications.Cancel(npb.CancelRequest(id=made[3].id))

    async def ids(**request: object) -> list[str]:
        found, token = [], ""
        while True:
            page = await notifications.ListScheduled(
                npb.ListScheduledRequest(page_size=2, page_token=token, **request)
            )
            assert len(page.scheduled_notifications) <= 2
            found += [s.id for s in page.scheduled_notifications]
            token = page.next_page_token
            if not token:
                return found

    newest_first = [s.id for s in reversed(made)]
    assert await ids() == newest_first
    assert await ids(target=P1) == [made[2].id, made[0].id]
    assert await ids(state=PENDING, target=template) == [made[4].id, made[1].id]
    cancelled = npb.SCHEDULED_NOTIFICATION_STATE_CANCELLED
    assert await ids(state=cancelled) == [made[3].id]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await notifications.ListScheduled(npb.ListScheduledRequest(page_token="garbage"))
    assert rich_error(raised.value).field_violations == ["page_token"]


async def test_a_schedule_whose_target_vanished_fails_with_a_reason(
    world: World, notifications: Stub, sessions: async_sessionmaker[AsyncSession]
) -> None:
    scheduled = await notifications.Schedule(schedule(npb.Target(pass_id="p9"), 0.5))
    async with sessions.begin() as session:
        await session.execute(delete(PassRow).where(PassRow.id == "p9"))
    failed = await wait_state(notifications, scheduled.id, npb.SCHEDULED_NOTIFICATION_STATE_FAILED)
    assert "p9" in failed.failure_reason and failed.ticket_id == 0


async def test_a_scheduled_entity_batch_reaches_its_group_tags(
    world: World, notifications: Stub, fake_apns: FakeApns
) -> None:
    batch = npb.Target(entity=npb.EntityRef(entity_id="brand", group_tags=["summer"]))
    scheduled = await notifications.Schedule(schedule(batch, 0.5))
    sent = await wait_state(notifications, scheduled.id, SENT)
    ticket = await notifications.GetTicket(npb.GetTicketRequest(id=sent.ticket_id))
    assert ticket.counts.total == 1
    await fake_apns.wait_for(1)
    assert fake_apns.tokens() == world.tokens_of("p1")


async def _tickets(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count()).select_from(TicketRow)) or 0


async def test_a_campaign_takes_three_notifications_scheduled_ones_included(
    world: World, notifications: Stub, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await notifications.Send(npb.SendRequest(target=CAMPAIGN, content=npb.Content(body="1")))
    second = await notifications.Schedule(schedule(CAMPAIGN, 3600, body="2"))
    await notifications.Schedule(schedule(CAMPAIGN, 7200, body="3"))
    tickets = await _tickets(sessions)

    refusals = [
        notifications.Send(npb.SendRequest(target=CAMPAIGN, content=npb.Content(body="4"))),
        notifications.Schedule(schedule(CAMPAIGN, 60, body="4")),
    ]
    for refused in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await refused
        error = rich_error(raised.value)
        assert (error.code, error.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "NOTIFICATION_LIMIT_EXCEEDED",
        )
        quota = _quota_failure(raised.value)
        assert [v.subject for v in quota.violations] == ["campaigns/spring"]
    assert await _tickets(sessions) == tickets  # nothing was created
    listed = await notifications.ListScheduled(npb.ListScheduledRequest(target=CAMPAIGN))
    assert len(listed.scheduled_notifications) == 2

    # A cancelled one gives its place back.
    await notifications.Cancel(npb.CancelRequest(id=second.id))
    again = await notifications.Schedule(schedule(CAMPAIGN, 60, body="4"))
    assert again.state == PENDING


def _quota_failure(error: grpc.aio.AioRpcError) -> error_details_pb2.QuotaFailure:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            return quota
    raise AssertionError("no QuotaFailure in the status")


async def test_ten_concurrent_requests_against_a_cap_of_three_make_exactly_three(
    world: World, notifications: Stub
) -> None:
    requests = [
        notifications.Send(npb.SendRequest(target=CAMPAIGN, content=npb.Content(body=str(i))))
        if i % 2
        else notifications.Schedule(schedule(CAMPAIGN, 3600, body=str(i)))
        for i in range(10)
    ]
    answers = await asyncio.gather(*requests, return_exceptions=True)

    made = [a for a in answers if not isinstance(a, BaseException)]
    refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(made) == 3 and len(refused) == 7, answers
    assert {rich_error(e).reason for e in refused} == {"NOTIFICATION_LIMIT_EXCEEDED"}
