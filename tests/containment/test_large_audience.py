"""The largest audience expressions a caller may send are accepted, reach exactly their
passes, and cost SQL of one size whatever their length; one item more is refused."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.domain.segments import SEGMENT_OPERATORS_MAX, SEGMENT_TAGS_MAX
from passpush.domain.validation import (
    ENTITY_GROUP_TAGS_MAX,
    MEMBERS_PER_CALL_MAX,
    PASS_GROUP_TAGS_MAX,
    PASS_TAGS_MAX,
)
from passpush.fakes.apns import FakeApns
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from support import World, rich_error, statements_run, upsert, wait_terminal

Stub = notifications_pb2_grpc.NotificationServiceStub


def _writes_deliveries(statement: str) -> bool:
    """The INSERT ... SELECT that writes a fan-out's deliveries."""
    return statement.lstrip().startswith("INSERT INTO deliveries")


async def _send(stub: Stub, target: npb.Target) -> npb.Ticket:
    accepted = await stub.Send(npb.SendRequest(target=target, content=npb.Content(body="Hi")))
    return await wait_terminal(stub, accepted.id)


def _struct(criteria: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(criteria)
    return struct


async def test_the_largest_entity_group_tag_list_reaches_its_passes_with_sql_of_one_size(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: Stub,
    fake_apns: FakeApns,
    engine: AsyncEngine,
) -> None:
    """An entity target with the most group tags allowed reaches exactly the passes carrying
    one of them, with the same SQL as a target of one group tag."""
    world = World(passes)
    await passes.CreateEntity(
        ppb.CreateEntityRequest(entity_id="brand", entity=ppb.Entity(project_id="acme"))
    )
    await world.apple_template("loyalty", entity_id="brand")
    tags = [f"g{i:04}" for i in range(ENTITY_GROUP_TAGS_MAX)]
    await world.pass_("first", "loyalty", group_tags=(tags[0],))
    await world.pass_("last", "loyalty", group_tags=(tags[-1],))
    await world.pass_("other", "loyalty", group_tags=("other",))

    def entity(group_tags: list[str]) -> npb.Target:
        return npb.Target(entity=npb.EntityRef(entity_id="brand", group_tags=group_tags))

    with statements_run(engine, _writes_deliveries) as statements:
        one = await _send(notifications, entity(tags[:1]))
        largest = await _send(notifications, entity(tags))

    assert (one.counts.delivered, largest.counts.delivered) == (1, 2)
    assert sorted(fake_apns.tokens()) == sorted(world.tokens_of("first", "first", "last"))
    assert len(statements) == 2 and statements[0] == statements[1]

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await notifications.Send(
            npb.SendRequest(target=entity([*tags, "one-more"]), content=npb.Content(body="Hi"))
        )
    error = rich_error(raised.value)
    assert (error.code, error.field_violations) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["target.entity.group_tags"],
    )
    assert f"at most {ENTITY_GROUP_TAGS_MAX}" in (raised.value.details() or "")


async def test_the_largest_segment_reaches_its_passes_with_sql_of_one_size(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: Stub,
    fake_apns: FakeApns,
    engine: AsyncEngine,
) -> None:
    """A segment with the most tags allowed reaches exactly its passes, with the same SQL as
    a segment of the same shape with a few tags."""
    world = World(passes)
    await world.apple_template("loyalty")
    many = [f"t{i:04}" for i in range(SEGMENT_TAGS_MAX - 2)]
    await world.pass_("first", "loyalty", tags=(many[0], "gold"))
    await world.pass_("last", "loyalty", tags=(many[-1], "gold"))
    await world.pass_("vip", "loyalty", tags=(many[-1], "gold", "vip"))
    await world.pass_("not-gold", "loyalty", tags=(many[1],))
    await world.pass_("gold-only", "loyalty", tags=("gold",))

    def shape(any_of: list[str]) -> dict[str, Any]:
        return {
            "and": [
                {"or": [{"tag": t} for t in any_of]},
                {"not": {"tag": "vip"}},
                {"tag": "gold"},
            ]
        }

    for segment_id, criteria in (("small", shape(many[:2])), ("largest", shape(many))):
        await passes.CreateSegment(
            ppb.CreateSegmentRequest(
                segment_id=segment_id,
                segment=ppb.Segment(project_id="acme", criteria=_struct(criteria)),
            )
        )

    def segment(segment_id: str) -> npb.Target:
        return npb.Target(segment=npb.SegmentRef(project_id="acme", segment_id=segment_id))

    with statements_run(engine, _writes_deliveries) as statements:
        small = await _send(notifications, segment("small"))
        largest = await _send(notifications, segment("largest"))

    assert (small.counts.delivered, largest.counts.delivered) == (1, 2)
    assert sorted(fake_apns.tokens()) == sorted(world.tokens_of("first", "first", "last"))
    assert len(statements) == 2 and statements[0] == statements[1]


OVER_THE_LIMITS = {
    "segment_tags": (
        "CreateSegment",
        ppb.CreateSegmentRequest(
            segment_id="huge",
            segment=ppb.Segment(
                project_id="acme",
                criteria=_struct({"or": [{"tag": f"t{i}"} for i in range(SEGMENT_TAGS_MAX + 1)]}),
            ),
        ),
        "segment.criteria",
        f"at most {SEGMENT_TAGS_MAX} tags",
    ),
    "segment_operators": (
        "CreateSegment",
        ppb.CreateSegmentRequest(
            segment_id="deep",
            segment=ppb.Segment(
                project_id="acme",
                criteria=_struct(
                    {"or": [{"not": {"tag": "a"}} for _ in range(SEGMENT_OPERATORS_MAX)]}
                ),
            ),
        ),
        "segment.criteria",
        f"at most {SEGMENT_OPERATORS_MAX} operators",
    ),
    "pass_tags": (
        "UpsertPass",
        upsert(id="p", template_id="loyalty", tags=[f"t{i}" for i in range(PASS_TAGS_MAX + 1)]),
        "pass.tags",
        f"at most {PASS_TAGS_MAX}",
    ),
    "pass_group_tags": (
        "UpsertPass",
        upsert(
            id="p",
            template_id="loyalty",
            group_tags=[f"g{i}" for i in range(PASS_GROUP_TAGS_MAX + 1)],
        ),
        "pass.group_tags",
        f"at most {PASS_GROUP_TAGS_MAX}",
    ),
    "campaign_members": (
        "AddCampaignMembers",
        ppb.AddCampaignMembersRequest(
            campaign_id="spring", pass_ids=[f"p{i}" for i in range(MEMBERS_PER_CALL_MAX + 1)]
        ),
        "pass_ids",
        f"at most {MEMBERS_PER_CALL_MAX}",
    ),
}


@pytest.mark.parametrize("case", OVER_THE_LIMITS.values(), ids=OVER_THE_LIMITS.keys())
async def test_one_item_over_a_list_limit_is_invalid_argument_naming_the_limit(
    case: tuple[str, Any, str, str], passes: passes_pb2_grpc.PassServiceStub
) -> None:
    """A list one item longer than its limit is refused as INVALID_ARGUMENT naming the field
    and the limit, before any work."""
    method, request, field, limit = case
    await World(passes).apple_template("loyalty")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await getattr(passes, method)(request)
    error = rich_error(raised.value)
    assert (error.code, error.field_violations) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    assert limit in (raised.value.details() or "")
