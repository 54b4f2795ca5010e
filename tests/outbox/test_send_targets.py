"""Send to every kind of target: exactly the right passes, exactly the expected pushes."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import struct_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.app import Application
from passpush.delivery.apple.gateway import ApnsGateway
from passpush.delivery.worker import WorkerSettings
from passpush.fakes.apns import FakeApns
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from support import TOPIC, World, channel_with_key, wait_terminal

TICKETS_TOPIC = "pass.com.example.tickets"


async def build_world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    """Two templates of one project, passes in every status, tags, segments, a campaign."""
    world = World(passes)
    await passes.CreateEntity(
        ppb.CreateEntityRequest(entity_id="brand", entity=ppb.Entity(project_id="acme"))
    )
    await world.apple_template("loyalty", external_id="loyalty-ext", entity_id="brand")
    await world.apple_template("tickets", topic=TICKETS_TOPIC)
    revoked, draft = ppb.PASS_STATUS_REVOKED, ppb.PASS_STATUS_DRAFT
    await world.pass_(
        "p1", "loyalty", tags=("gold", "vip"), group_tags=("summer",), external_id="m1"
    )
    await world.pass_("p2", "loyalty", tags=("gold",), devices=2)
    await world.pass_("p3", "loyalty", tags=("silver",), group_tags=("winter",))
    await world.pass_("p4", "loyalty", tags=("gold",), status=revoked, group_tags=("summer",))
    await world.pass_("p5", "loyalty", tags=("gold",), devices=0)
    await world.pass_("p6", "tickets", tags=("gold",), external_id="m6")
    await world.pass_("p7", "tickets", tags=("silver", "vip"), status=draft)
    for segment_id, criteria in {
        "gold-not-vip": {"and": [{"tag": "gold"}, {"not": {"tag": "vip"}}]},
        "silver-or-vip": {"or": [{"tag": "silver"}, {"tag": "vip"}]},
    }.items():
        struct = struct_pb2.Struct()
        struct.update(criteria)
        await passes.CreateSegment(
            ppb.CreateSegmentRequest(
                segment_id=segment_id, segment=ppb.Segment(project_id="acme", criteria=struct)
            )
        )
    await passes.CreateCampaign(
        ppb.CreateCampaignRequest(campaign_id="spring", campaign=ppb.Campaign(project_id="acme"))
    )
    await passes.AddCampaignMembers(
        ppb.AddCampaignMembersRequest(campaign_id="spring", pass_ids=["p1", "p3", "p4"])
    )
    return world


@dataclass(frozen=True)
class Case:
    target: npb.Target
    pushed: tuple[str, ...]  # passes whose devices are pushed
    skipped: int  # passes counted as skipped (not active, or no device)


CASES = {
    "pass_id": Case(npb.Target(pass_id="p2"), ("p2",), 0),
    "pass_id_as_external_id": Case(npb.Target(pass_id="m6"), ("p6",), 0),
    "inactive_pass": Case(npb.Target(pass_id="p4"), (), 1),
    "external_pass": Case(
        npb.Target(external_pass=npb.ExternalPass(template_id="loyalty", pass_external_id="m1")),
        ("p1",),
        0,
    ),
    "template": Case(
        npb.Target(template=npb.TemplateRef(template_id="loyalty")), ("p1", "p2", "p3"), 2
    ),
    "template_external_id": Case(
        npb.Target(template=npb.TemplateRef(template_external_id="loyalty-ext")),
        ("p1", "p2", "p3"),
        2,
    ),
    "tag_in_template": Case(
        npb.Target(tag=npb.TagRef(tag="gold", template_id="loyalty")), ("p1", "p2"), 2
    ),
    "tag_in_project": Case(npb.Target(tag=npb.TagRef(tag="gold")), ("p1", "p2", "p6"), 2),
    "segment_and_not": Case(
        npb.Target(segment=npb.SegmentRef(project_id="acme", segment_id="gold-not-vip")),
        ("p2", "p6"),
        2,
    ),
    "segment_or_in_template": Case(
        npb.Target(
            segment=npb.SegmentRef(
                project_id="acme", segment_id="silver-or-vip", template_id="tickets"
            )
        ),
        (),
        1,
    ),
    "segment_or": Case(
        npb.Target(segment=npb.SegmentRef(project_id="acme", segment_id="silver-or-vip")),
        ("p1", "p3"),
        1,
    ),
    "campaign": Case(npb.Target(campaign_id="spring"), ("p1", "p3"), 1),
    "entity": Case(npb.Target(entity=npb.EntityRef(entity_id="brand")), ("p1", "p2", "p3"), 2),
    "entity_group_tags": Case(
        npb.Target(entity=npb.EntityRef(entity_id="brand", group_tags=["summer"])), ("p1",), 1
    ),
}


async def test_each_send_reaches_exactly_the_targets_devices(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
) -> None:
    """Each target in turn on one world (a Send changes whom no later one reaches)."""
    world = await build_world(passes)
    assert await _each_reached(world, notifications, fake_apns, header="News") == {}


async def test_each_send_fanned_out_two_passes_at_a_time_reaches_exactly_the_same_devices(
    engine: AsyncEngine,
    apns_gateway: ApnsGateway,
    worker_settings: WorkerSettings,
    api_key: str,
    passes: passes_pb2_grpc.PassServiceStub,
    fake_apns: FakeApns,
) -> None:
    """A large audience is fanned out in chunks of the project's passes, its tag and
    member lists read a chunk's range at a time: the chunks reach the same devices."""
    world = await build_world(passes)
    server = Application(engine, apns_gateway, worker_settings=worker_settings, fanout_chunk=2)
    await server.start()
    try:
        async with channel_with_key(server.port, api_key) as channel:
            notifications = notifications_pb2_grpc.NotificationServiceStub(channel)
            assert await _each_reached(world, notifications, fake_apns) == {}
    finally:
        await server.stop(grace=1.0)


async def _each_reached(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
    header: str = "",
) -> dict[str, str]:
    """Sends to each case's target in turn: what went wrong, by case."""
    wrong = {}
    for name, case in CASES.items():
        fake_apns.reset()
        accepted = await notifications.Send(
            npb.SendRequest(target=case.target, content=npb.Content(header=header, body="Hello"))
        )
        ticket = await wait_terminal(notifications, accepted.id)
        try:
            _assert_reached(case, world, ticket, fake_apns)
        except AssertionError as error:
            wrong[name] = str(error)
    return wrong


def _assert_reached(case: Case, world: World, ticket: npb.Ticket, fake_apns: FakeApns) -> None:
    expected_tokens = world.tokens_of(*case.pushed)
    assert sorted(fake_apns.tokens()) == expected_tokens
    for push in fake_apns.received:
        assert push.payload == b"{}"
        owner = next(p for p, tokens in world.devices.items() if push.device_token in tokens)
        assert push.topic == (TICKETS_TOPIC if owner in ("p6", "p7") else TOPIC)
    counts = ticket.counts
    assert counts.delivered == len(expected_tokens)
    assert counts.skipped == case.skipped
    assert (counts.failed, counts.pending) == (0, 0)
    assert counts.total == counts.delivered + counts.skipped
    assert ticket.state == npb.TICKET_STATE_SUCCEEDED
    assert ticket.target == case.target


async def test_send_sets_the_notification_field_on_active_passes_only(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
) -> None:
    await build_world(passes)
    before = {p: await passes.GetPass(ppb.GetPassRequest(id=p)) for p in ("p1", "p4")}

    ticket = await notifications.Send(
        npb.SendRequest(
            target=npb.Target(template=npb.TemplateRef(template_id="loyalty")),
            content=npb.Content(header="Offer", body="20% off"),
        )
    )
    await wait_terminal(notifications, ticket.id)

    active = await passes.GetPass(ppb.GetPassRequest(id="p1"))
    assert (active.notification.header, active.notification.body) == ("Offer", "20% off")
    assert active.notification.ticket_id == ticket.id
    assert active.update_tag > before["p1"].update_tag
    revoked = await passes.GetPass(ppb.GetPassRequest(id="p4"))
    assert not revoked.HasField("notification")
    assert revoked.update_tag == before["p4"].update_tag


async def test_delete_clears_the_field_and_pushes_again(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
) -> None:
    world = await build_world(passes)
    target = npb.Target(pass_id="p2")
    sent = await notifications.Send(
        npb.SendRequest(target=target, content=npb.Content(body="Hello"))
    )
    await wait_terminal(notifications, sent.id)
    tag_after_send = (await passes.GetPass(ppb.GetPassRequest(id="p2"))).update_tag

    deleted = await notifications.Delete(npb.DeleteRequest(target=target))
    ticket = await wait_terminal(notifications, deleted.id)

    assert ticket.operation == npb.OPERATION_DELETE
    assert ticket.counts.delivered == 2
    assert sorted(fake_apns.tokens()) == sorted(world.tokens_of("p2") * 2)
    cleared = await passes.GetPass(ppb.GetPassRequest(id="p2"))
    assert not cleared.HasField("notification")
    assert cleared.update_tag > tag_after_send


async def test_a_target_with_nothing_to_push_succeeds_at_once(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
) -> None:
    world = World(passes)
    await world.apple_template("empty")

    ticket = await notifications.Send(
        npb.SendRequest(
            target=npb.Target(template=npb.TemplateRef(template_id="empty")),
            content=npb.Content(body="Hello"),
        )
    )

    assert ticket.state == npb.TICKET_STATE_SUCCEEDED
    assert ticket.counts.total == 0
    assert ticket.HasField("complete_time")
    assert fake_apns.received == []
