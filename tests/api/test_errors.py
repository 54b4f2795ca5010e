"""Bad input: the right status with rich details, and nothing written."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.store.models import Base
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from support import World, invalid_argument_problem, rich_error, token, upsert


async def row_counts(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sessions() as session:
        return {
            table.name: int(await session.scalar(select(func.count()).select_from(table)) or 0)
            for table in Base.metadata.sorted_tables
        }


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await world.apple_template("loyalty")
    await world.pass_("p1", "loyalty", tags=("gold",))
    return world


def at(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


PASS = npb.Target(pass_id="p1")
SEND_VIOLATIONS = {
    "no_target": (npb.SendRequest(content=npb.Content(body="hi")), "target"),
    "no_content": (npb.SendRequest(target=PASS), "content"),
    "empty_body": (npb.SendRequest(target=PASS, content=npb.Content(body="")), "content.body"),
    "blank_body": (npb.SendRequest(target=PASS, content=npb.Content(body="   ")), "content.body"),
    "long_body": (
        npb.SendRequest(target=PASS, content=npb.Content(body="x" * 501)),
        "content.body",
    ),
    "long_header": (
        npb.SendRequest(target=PASS, content=npb.Content(header="h" * 101, body="hi")),
        "content.header",
    ),
    "display_window_backwards": (
        npb.SendRequest(
            target=PASS,
            content=npb.Content(body="hi", display_start=at(2_000), display_end=at(1_000)),
        ),
        "content.display_end",
    ),
    "long_request_id": (
        npb.SendRequest(target=PASS, content=npb.Content(body="hi"), request_id="r" * 129),
        "request_id",
    ),
    "empty_pass_id": (
        npb.SendRequest(target=npb.Target(pass_id=""), content=npb.Content(body="hi")),
        "target.pass_id",
    ),
    "bad_template_id": (
        npb.SendRequest(
            target=npb.Target(template=npb.TemplateRef(template_id="no spaces allowed")),
            content=npb.Content(body="hi"),
        ),
        "target.template.template_id",
    ),
    "empty_tag": (
        npb.SendRequest(target=npb.Target(tag=npb.TagRef(tag="")), content=npb.Content(body="x")),
        "target.tag.tag",
    ),
    "segment_without_project": (
        npb.SendRequest(
            target=npb.Target(segment=npb.SegmentRef(segment_id="s")),
            content=npb.Content(body="hi"),
        ),
        "target.segment.project_id",
    ),
    "external_pass_without_external_id": (
        npb.SendRequest(
            target=npb.Target(external_pass=npb.ExternalPass(template_id="loyalty")),
            content=npb.Content(body="hi"),
        ),
        "target.external_pass.pass_external_id",
    ),
    "entity_blank_group_tag": (
        npb.SendRequest(
            target=npb.Target(entity=npb.EntityRef(entity_id="e", group_tags=[" "])),
            content=npb.Content(body="hi"),
        ),
        "target.entity.group_tags[0]",
    ),
}


async def test_every_invalid_send_names_the_field_and_writes_nothing(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Each case in turn on one server: none may write, so none needs a server of its own."""
    before = await row_counts(sessions)
    wrong = {}
    for case, (request_, field) in SEND_VIOLATIONS.items():
        wrong[case] = await _invalid_naming(notifications.Send(request_), field)
    assert {case: why for case, why in wrong.items() if why} == {}
    assert await row_counts(sessions) == before


async def _invalid_naming(call: Awaitable[object], field: str) -> str | None:
    """What is wrong with the answer to a call that must be INVALID_ARGUMENT naming `field`."""
    try:
        await call
    except grpc.aio.AioRpcError as raised:
        return invalid_argument_problem(raised, field)
    return "accepted"


async def test_body_at_the_limits_is_accepted(
    world: World, notifications: notifications_pb2_grpc.NotificationServiceStub
) -> None:
    ticket = await notifications.Send(
        npb.SendRequest(target=PASS, content=npb.Content(header="h" * 100, body="é" * 500))
    )
    assert ticket.counts.total == 1


UNKNOWN_TARGETS = {
    "pass": (npb.Target(pass_id="nope"), "pass"),
    "external_pass": (
        npb.Target(external_pass=npb.ExternalPass(template_id="loyalty", pass_external_id="x")),
        "pass",
    ),
    "external_pass_template": (
        npb.Target(external_pass=npb.ExternalPass(template_id="nope", pass_external_id="x")),
        "template",
    ),
    "template": (npb.Target(template=npb.TemplateRef(template_id="nope")), "template"),
    "template_external_id": (
        npb.Target(template=npb.TemplateRef(template_external_id="nope")),
        "template",
    ),
    "tag": (npb.Target(tag=npb.TagRef(tag="platinum")), "tag"),
    "tag_template": (npb.Target(tag=npb.TagRef(tag="gold", template_id="nope")), "template"),
    "segment": (npb.Target(segment=npb.SegmentRef(project_id="acme", segment_id="s")), "segment"),
    "segment_project": (
        npb.Target(segment=npb.SegmentRef(project_id="nope", segment_id="s")),
        "project",
    ),
    "campaign": (npb.Target(campaign_id="nope"), "campaign"),
    "entity": (npb.Target(entity=npb.EntityRef(entity_id="nope")), "entity"),
}


async def test_every_unknown_target_is_not_found_and_writes_nothing(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    before = await row_counts(sessions)
    wrong = {}
    for case, (target, resource_type) in UNKNOWN_TARGETS.items():
        for call in (
            notifications.Send(npb.SendRequest(target=target, content=npb.Content(body="hi"))),
            notifications.Delete(npb.DeleteRequest(target=target)),
        ):
            try:
                await call
                wrong[case] = "accepted"
                continue
            except grpc.aio.AioRpcError as raised:
                error = rich_error(raised)
            if (
                error.code != grpc.StatusCode.NOT_FOUND
                or error.reason != f"{resource_type.upper()}_NOT_FOUND"
                or error.resource is None
                or error.resource[0] != resource_type
            ):
                wrong[case] = f"{error.code} {error.reason} {error.resource}"
    assert wrong == {}
    assert await row_counts(sessions) == before


async def test_unknown_ticket_is_not_found(
    world: World, notifications: notifications_pb2_grpc.NotificationServiceStub
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await notifications.GetTicket(npb.GetTicketRequest(id=424242))
    assert rich_error(raised.value).resource == ("ticket", "424242")


PASS_SERVICE_VIOLATIONS = {
    "template_without_platform": (
        "CreateTemplate",
        ppb.CreateTemplateRequest(template=ppb.Template(project_id="acme")),
        "template.platform",
    ),
    "apple_template_without_topic": (
        "CreateTemplate",
        ppb.CreateTemplateRequest(
            template=ppb.Template(project_id="acme", platform=ppb.PLATFORM_APPLE)
        ),
        "template.pass_type_identifier",
    ),
    "google_template_bad_object_type": (
        "CreateTemplate",
        ppb.CreateTemplateRequest(
            template=ppb.Template(
                project_id="acme",
                platform=ppb.PLATFORM_GOOGLE,
                google_class_id="1.c",
                google_object_type="spaceshipObject",
            )
        ),
        "template.google_object_type",
    ),
    "pass_without_template": ("UpsertPass", upsert(id="p9"), "pass.template_id"),
    "pass_short_auth_token": (
        "UpsertPass",
        upsert(template_id="loyalty", authentication_token="short"),
        "pass.authentication_token",
    ),
    "device_bad_token": (
        "RegisterDevice",
        ppb.RegisterDeviceRequest(
            pass_id="p1", device_library_identifier="d", push_token="not-hex"
        ),
        "push_token",
    ),
    "segment_bad_criteria": (
        "CreateSegment",
        ppb.CreateSegmentRequest(
            segment=ppb.Segment(
                project_id="acme", criteria=struct_pb2.Struct(fields={"xor": struct_pb2.Value()})
            )
        ),
        "segment.criteria",
    ),
    "list_bad_page_token": (
        "ListPasses",
        ppb.ListPassesRequest(template_id="loyalty", page_token="garbage"),
        "page_token",
    ),
}


async def test_every_invalid_pass_service_request_names_the_field_and_writes_nothing(
    world: World,
    passes: passes_pb2_grpc.PassServiceStub,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    before = await row_counts(sessions)
    wrong = {}
    for case, (method, request_, field) in PASS_SERVICE_VIOLATIONS.items():
        wrong[case] = await _invalid_naming(getattr(passes, method)(request_), field)
    assert {case: why for case, why in wrong.items() if why} == {}
    assert await row_counts(sessions) == before


async def test_pass_service_unknown_and_duplicate_resources(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    cases = [
        (passes.GetPass(ppb.GetPassRequest(id="nope")), grpc.StatusCode.NOT_FOUND),
        (passes.GetTemplate(ppb.GetTemplateRequest(id="nope")), grpc.StatusCode.NOT_FOUND),
        (passes.UpsertPass(upsert(template_id="nope")), grpc.StatusCode.NOT_FOUND),
        (
            passes.RegisterDevice(
                ppb.RegisterDeviceRequest(
                    pass_id="nope", device_library_identifier="d", push_token=token(1)
                )
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            passes.AddCampaignMembers(ppb.AddCampaignMembersRequest(campaign_id="nope")),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            passes.CreateProject(ppb.CreateProjectRequest(project_id="acme")),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
        (
            passes.CreateTemplate(
                ppb.CreateTemplateRequest(
                    template_id="loyalty",
                    template=ppb.Template(
                        project_id="acme",
                        platform=ppb.PLATFORM_APPLE,
                        pass_type_identifier="pass.x.y",
                    ),
                )
            ),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
    ]
    for call, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert rich_error(raised.value).code == code
