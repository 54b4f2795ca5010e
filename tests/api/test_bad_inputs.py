"""Bad inputs, tried against a real server: each is the caller's mistake (INVALID_ARGUMENT with
the field at fault), never INTERNAL or UNKNOWN, and no Python exception text reaches the wire.

BAD_INPUTS is the probe's list; the count of its cases is the figure "bad inputs tried", and
each passing case is one with no server error.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from test_errors import row_counts

from passpush.v1 import admin_pb2 as apb
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from support import World, invalid_argument_problem, token, upsert

NUL = "a\x00b"
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
# What a caller's mistake may be answered with; INTERNAL, UNKNOWN and the rest may not.
CALLER_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
}
MEGABYTE = "x" * 1_000_000
PASS = npb.Target(pass_id="p1")
BODY = npb.Content(body="hi")
NOTIFICATIONS = "/passpush.v1.NotificationService/"
PASSES = "/passpush.v1.PassService/"
ADMIN = "/passpush.v1.AdminService/"


def at(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def hours_from_now(hours: float) -> timestamp_pb2.Timestamp:
    return at(int((datetime.now(UTC) + timedelta(hours=hours)).timestamp()))


def nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def deep_page_token() -> str:
    """A token of the server's shape (base64 JSON) whose JSON nests past Python's recursion
    limit."""
    return base64.urlsafe_b64encode(b'{"after": ' + nested_json(100_000) + b"}").decode()


def send(**content: object) -> npb.SendRequest:
    return npb.SendRequest(target=PASS, content=npb.Content(**{"body": "hi", **content}))  # type: ignore[arg-type]


def schedule(**fields: object) -> npb.ScheduleRequest:
    request = {"target": PASS, "content": BODY, "send_time": hours_from_now(1), **fields}
    return npb.ScheduleRequest(**request)  # type: ignore[arg-type]


def template(**fields: object) -> ppb.CreateTemplateRequest:
    apple = {"platform": ppb.PLATFORM_APPLE, "pass_type_identifier": "pass.com.example.t"}
    return ppb.CreateTemplateRequest(template=ppb.Template(**{**apple, **fields}))  # type: ignore[arg-type]


def pass_json(**fields: object) -> bytes:
    document = {
        "formatVersion": 1,
        "description": "d",
        "organizationName": "o",
        "teamIdentifier": "T",
        "generic": {},
        **fields,
    }
    return json.dumps(document).encode()


# Each case: the method, the request (a message, or raw bytes), the field the violation names.
BAD_INPUTS: dict[str, tuple[str, Message | bytes, str]] = {
    # NUL: PostgreSQL text cannot hold it, in any field.
    "send_body_nul": (NOTIFICATIONS + "Send", send(body=NUL), "content.body"),
    "send_header_nul": (NOTIFICATIONS + "Send", send(header=NUL), "content.header"),
    "send_pass_id_nul": (
        NOTIFICATIONS + "Send",
        npb.SendRequest(target=npb.Target(pass_id=NUL), content=BODY),
        "target.pass_id",
    ),
    "send_tag_nul": (
        NOTIFICATIONS + "Send",
        npb.SendRequest(target=npb.Target(tag=npb.TagRef(tag=NUL)), content=BODY),
        "target.tag.tag",
    ),
    "send_group_tag_nul": (
        NOTIFICATIONS + "Send",
        npb.SendRequest(
            target=npb.Target(entity=npb.EntityRef(entity_id="e", group_tags=["ok", NUL])),
            content=BODY,
        ),
        "target.entity.group_tags[1]",
    ),
    "send_request_id_nul": (
        NOTIFICATIONS + "Send",
        npb.SendRequest(target=PASS, content=BODY, request_id=NUL),
        "request_id",
    ),
    "delete_request_id_nul": (
        NOTIFICATIONS + "Delete",
        npb.DeleteRequest(target=PASS, request_id=NUL),
        "request_id",
    ),
    "schedule_body_nul": (
        NOTIFICATIONS + "Schedule",
        schedule(content=npb.Content(body=NUL)),
        "content.body",
    ),
    "cancel_id_nul": (NOTIFICATIONS + "Cancel", npb.CancelRequest(id=NUL), "id"),
    "list_scheduled_target_nul": (
        NOTIFICATIONS + "ListScheduled",
        npb.ListScheduledRequest(target=npb.Target(campaign_id=NUL)),
        "target.campaign_id",
    ),
    "upsert_tag_nul": (
        PASSES + "UpsertPass",
        upsert(template_id="loyalty", tags=[NUL]),
        "pass.tags[0]",
    ),
    "upsert_serial_nul": (
        PASSES + "UpsertPass",
        upsert(template_id="loyalty", serial_number=NUL),
        "pass.serial_number",
    ),
    "upsert_google_object_id_nul": (
        PASSES + "UpsertPass",
        upsert(template_id="loyalty", google_object_id=NUL),
        "pass.google_object_id",
    ),
    "upsert_authentication_token_nul": (
        PASSES + "UpsertPass",
        upsert(template_id="loyalty", authentication_token="t" * 20 + NUL),
        "pass.authentication_token",
    ),
    "template_display_name_nul": (
        PASSES + "CreateTemplate",
        template(display_name=NUL),
        "template.display_name",
    ),
    "project_display_name_nul": (
        PASSES + "CreateProject",
        ppb.CreateProjectRequest(project=ppb.Project(display_name=NUL)),
        "project.display_name",
    ),
    "segment_criteria_tag_nul": (
        PASSES + "CreateSegment",
        ppb.CreateSegmentRequest(
            segment=ppb.Segment(
                criteria=struct_pb2.Struct(fields={"tag": struct_pb2.Value(string_value=NUL)})
            )
        ),
        "segment.criteria.tag",
    ),
    "campaign_name_nul": (
        PASSES + "CreateCampaign",
        ppb.CreateCampaignRequest(campaign=ppb.Campaign(name=NUL)),
        "campaign.name",
    ),
    "entity_name_nul": (
        PASSES + "CreateEntity",
        ppb.CreateEntityRequest(entity=ppb.Entity(name=NUL)),
        "entity.name",
    ),
    "register_device_push_token_nul": (
        PASSES + "RegisterDevice",
        ppb.RegisterDeviceRequest(
            pass_id="p1", device_library_identifier="d", push_token=token(1) + NUL
        ),
        "push_token",
    ),
    "campaign_members_nul": (
        PASSES + "AddCampaignMembers",
        ppb.AddCampaignMembersRequest(campaign_id="c", pass_ids=["p1", NUL]),
        "pass_ids[1]",
    ),
    "pass_content_file_name_nul": (
        PASSES + "SetPassContent",
        ppb.SetPassContentRequest(pass_id="p1", pass_json=pass_json(), files={NUL: b"x"}),
        f"files[{NUL!r}]",
    ),
    "pass_json_serial_nul": (
        PASSES + "SetPassContent",
        ppb.SetPassContentRequest(
            pass_id="p1", pass_json=pass_json(serialNumber=NUL), files={"icon.png": b"x"}
        ),
        "pass_json.serialNumber",
    ),
    "api_key_display_name_nul": (
        ADMIN + "CreateApiKey",
        apb.CreateApiKeyRequest(api_key=apb.ApiKey(display_name=NUL, scopes=["passes:read"])),
        "api_key.display_name",
    ),
    # Strings past their documented maximum.
    "google_object_id_1mb": (
        PASSES + "UpsertPass",
        upsert(template_id="loyalty", google_object_id=MEGABYTE),
        "pass.google_object_id",
    ),
    "template_display_name_3mb": (
        PASSES + "CreateTemplate",
        template(display_name="x" * 3_000_000),
        "template.display_name",
    ),
    "template_google_class_id_1mb": (
        PASSES + "CreateTemplate",
        ppb.CreateTemplateRequest(
            template=ppb.Template(
                platform=ppb.PLATFORM_GOOGLE,
                google_class_id=MEGABYTE,
                google_object_type="genericObject",
            )
        ),
        "template.google_class_id",
    ),
    "template_pass_type_identifier_long": (
        PASSES + "CreateTemplate",
        template(pass_type_identifier="pass." + "a" * 300),
        "template.pass_type_identifier",
    ),
    "project_display_name_long": (
        PASSES + "CreateProject",
        ppb.CreateProjectRequest(project=ppb.Project(display_name="x" * 201)),
        "project.display_name",
    ),
    "segment_display_name_long": (
        PASSES + "CreateSegment",
        ppb.CreateSegmentRequest(
            segment=ppb.Segment(
                display_name="x" * 201,
                criteria=struct_pb2.Struct(fields={"tag": struct_pb2.Value(string_value="a")}),
            )
        ),
        "segment.display_name",
    ),
    "campaign_name_long": (
        PASSES + "CreateCampaign",
        ppb.CreateCampaignRequest(campaign=ppb.Campaign(name="x" * 201)),
        "campaign.name",
    ),
    "entity_name_long": (
        PASSES + "CreateEntity",
        ppb.CreateEntityRequest(entity=ppb.Entity(name="x" * 201)),
        "entity.name",
    ),
    "signing_certificate_1mb": (
        PASSES + "SetTemplateSigning",
        ppb.SetTemplateSigningRequest(
            template_id="loyalty",
            apple_signing=ppb.AppleSigning(
                certificate_pem=MEGABYTE, private_key_pem="k", wwdr_certificate_pem="w"
            ),
        ),
        "apple_signing.certificate_pem",
    ),
    "api_key_display_name_long": (
        ADMIN + "CreateApiKey",
        apb.CreateApiKeyRequest(api_key=apb.ApiKey(display_name="x" * 201, scopes=["passes:read"])),
        "api_key.display_name",
    ),
    "page_token_1mb": (
        PASSES + "ListPasses",
        ppb.ListPassesRequest(template_id="loyalty", page_token=MEGABYTE),
        "page_token",
    ),
    # Huge values where a refusal could echo them back (trailers have a size limit).
    "api_key_scope_1mb": (
        ADMIN + "CreateApiKey",
        apb.CreateApiKeyRequest(api_key=apb.ApiKey(scopes=[MEGABYTE])),
        "scopes",
    ),
    "segment_criteria_operator_1mb": (
        PASSES + "CreateSegment",
        ppb.CreateSegmentRequest(
            segment=ppb.Segment(
                criteria=struct_pb2.Struct(fields={MEGABYTE: struct_pb2.Value(string_value="a")})
            )
        ),
        "segment.criteria",
    ),
    "pass_content_file_name_1mb": (
        PASSES + "SetPassContent",
        ppb.SetPassContentRequest(pass_id="p1", pass_json=pass_json(), files={MEGABYTE: b"x"}),
        "files",
    ),
    "pass_json_pass_type_identifier_1mb": (
        PASSES + "SetPassContent",
        ppb.SetPassContentRequest(
            pass_id="p1",
            pass_json=pass_json(passTypeIdentifier=MEGABYTE),
            files={"icon.png": b"\x89PNG\r\n\x1a\n"},
        ),
        "pass_json.passTypeIdentifier",
    ),
    "segment_criteria_key_nul_1mb": (
        PASSES + "CreateSegment",
        ppb.CreateSegmentRequest(
            segment=ppb.Segment(
                criteria=struct_pb2.Struct(
                    fields={MEGABYTE + NUL: struct_pb2.Value(string_value="a")}
                )
            )
        ),
        "segment.criteria",
    ),
    "pass_content_file_name_nul_1mb": (
        PASSES + "SetPassContent",
        ppb.SetPassContentRequest(
            pass_id="p1", pass_json=pass_json(), files={MEGABYTE + NUL: b"x"}
        ),
        "files",
    ),
    "campaign_members_10000_bad_ids": (
        PASSES + "AddCampaignMembers",
        ppb.AddCampaignMembersRequest(campaign_id="c", pass_ids=["not an id!"] * 10_000),
        "pass_ids[0]",
    ),
    # Timestamps out of the range of google.protobuf.Timestamp.
    "display_end_seconds_2_62": (
        NOTIFICATIONS + "Send",
        send(display_end=at(2**62)),
        "content.display_end",
    ),
    "display_start_negative_nanos": (
        NOTIFICATIONS + "Send",
        send(display_start=at(2_000_000_000, -1)),
        "content.display_start",
    ),
    "display_end_nanos_too_large": (
        NOTIFICATIONS + "Send",
        send(display_end=at(2_000_000_000, 1_000_000_000)),
        "content.display_end",
    ),
    "send_time_seconds_2_62": (
        NOTIFICATIONS + "Schedule",
        schedule(send_time=at(2**62)),
        "send_time",
    ),
    "send_time_seconds_negative_2_62": (
        NOTIFICATIONS + "Schedule",
        schedule(send_time=at(-(2**62))),
        "send_time",
    ),
    # A display window already over when the request arrives.
    "send_display_window_ended": (
        NOTIFICATIONS + "Send",
        send(display_end=hours_from_now(-1)),
        "content.display_end",
    ),
    "schedule_display_window_ends_before_send_time": (
        NOTIFICATIONS + "Schedule",
        schedule(
            content=npb.Content(body="hi", display_end=hours_from_now(1)),
            send_time=hours_from_now(2),
        ),
        "content.display_end",
    ),
    # JSON nested past Python's recursion limit.
    "list_passes_deep_page_token": (
        PASSES + "ListPasses",
        ppb.ListPassesRequest(template_id="loyalty", page_token=deep_page_token()),
        "page_token",
    ),
    "list_scheduled_deep_page_token": (
        NOTIFICATIONS + "ListScheduled",
        npb.ListScheduledRequest(page_token=deep_page_token()),
        "page_token",
    ),
    "list_api_keys_deep_page_token": (
        ADMIN + "ListApiKeys",
        apb.ListApiKeysRequest(page_token=deep_page_token()),
        "page_token",
    ),
    "pass_json_deeply_nested": (
        PASSES + "SetPassContent",
        ppb.SetPassContentRequest(
            pass_id="p1", pass_json=nested_json(100_000), files={"icon.png": b"x"}
        ),
        "pass_json",
    ),
    # Enum values this server does not know.
    "pass_status_99": (
        PASSES + "UpsertPass",
        upsert(template_id="loyalty", status=99),  # type: ignore[arg-type]
        "pass.status",
    ),
    "template_platform_99": (
        PASSES + "CreateTemplate",
        ppb.CreateTemplateRequest(template=ppb.Template(platform=99)),  # type: ignore[arg-type]
        "template.platform",
    ),
    "list_scheduled_state_99": (
        NOTIFICATIONS + "ListScheduled",
        npb.ListScheduledRequest(state=99),  # type: ignore[arg-type]
        "state",
    ),
    # Bytes that are no valid message.
    "send_bad_utf8": (
        NOTIFICATIONS + "Send",
        # target { pass_id: "\xff\xfe" }, a string that is not UTF-8.
        bytes([0x0A, 0x04, 0x0A, 0x02, 0xFF, 0xFE]),
        "request",
    ),
    "send_truncated": (
        NOTIFICATIONS + "Send",
        send(body="truncated here").SerializeToString()[:-3],
        "request",
    ),
    "upsert_pass_garbage": (PASSES + "UpsertPass", b"\xff" * 32, "request"),
    "list_api_keys_truncated": (ADMIN + "ListApiKeys", b"\x12\x10abc", "request"),
}


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await world.apple_template("loyalty")
    await world.pass_("p1", "loyalty")
    return world


async def test_every_bad_input_is_invalid_argument_naming_its_field(
    world: World,
    channel: grpc.aio.Channel,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Each bad input in turn on one server: none changes the database, so each case needs
    no server of its own (one each cost the suite a minute)."""
    before = await row_counts(sessions)
    wrong = {}
    for case, (method, request_, field) in BAD_INPUTS.items():
        raw = request_ if isinstance(request_, bytes) else request_.SerializeToString()
        try:
            await channel.unary_unary(method)(raw)  # bytes in, bytes out: any bytes
        except grpc.aio.AioRpcError as raised:
            if problem := invalid_argument_problem(raised, field):
                wrong[case] = problem
        else:
            wrong[case] = "accepted"
        if await row_counts(sessions) != before:
            wrong[case] = "changed the database"
            before = await row_counts(sessions)
    assert wrong == {}


# Every field of every request (two levels of messages deep), set to extreme values.
SERVICES = [
    npb.DESCRIPTOR.services_by_name["NotificationService"],
    ppb.DESCRIPTOR.services_by_name["PassService"],
    apb.DESCRIPTOR.services_by_name["AdminService"],
]
EXTREMES: dict[int, list[object]] = {
    FieldDescriptor.TYPE_STRING: ["", NUL, "x" * 100_000, "💥" * 300, " ", "%s%n", "p1"],
    FieldDescriptor.TYPE_BYTES: [b"\x00" * 10, nested_json(50_000), b"x" * 400_000],
    FieldDescriptor.TYPE_ENUM: [99, -5],
    FieldDescriptor.TYPE_BOOL: [True],
}
INTEGERS: list[object] = [-1, -(2**63), 2**63 - 1, 2**31 - 1, -(2**31)]


def extreme_requests() -> Iterator[tuple[MethodDescriptor, str, Message]]:
    """(method, field path, request) for each extreme value of each field."""

    def fields(
        message: Descriptor, path: tuple[FieldDescriptor, ...]
    ) -> Iterator[tuple[FieldDescriptor, ...]]:
        for field in message.fields:
            if field.message_type is None:
                yield (*path, field)
            elif len(path) < 2 and not field.message_type.GetOptions().map_entry:
                yield from fields(field.message_type, (*path, field))

    for service in SERVICES:
        for method in service.methods:
            if method.client_streaming:
                continue
            for path in fields(method.input_type, ()):
                for value in EXTREMES.get(path[-1].type, INTEGERS):
                    request = _with(method.input_type._concrete_class(), path, value)
                    if request is not None:
                        yield method, ".".join(f.name for f in path), request


def _with(request: Message, path: tuple[FieldDescriptor, ...], value: object) -> Message | None:
    holder = request
    for field in path[:-1]:
        holder = getattr(holder, field.name)
        holder.SetInParent()
    last = path[-1]
    try:
        if last.is_repeated:
            getattr(holder, last.name).append(value)
        else:
            setattr(holder, last.name, value)
    except (TypeError, ValueError):  # out of the field's type's range: not sendable
        return None
    return request


async def test_every_field_of_every_request_takes_extreme_values_without_a_server_error(
    world: World, channel: grpc.aio.Channel
) -> None:
    """NUL, 100,000 characters, emoji, unknown enum numbers, the ends of every integer type,
    deep JSON in bytes: in each field of each request, one at a time. None is INTERNAL,
    UNKNOWN, or an error too big for its trailers."""
    server_errors = []
    tried = 0
    for method, field, request in extreme_requests():
        tried += 1
        name = f"/{method.containing_service.full_name}/{method.name}"
        try:
            if method.server_streaming:  # its first answer, or its end: a stream may follow on
                stream = channel.unary_stream(name)(request.SerializeToString(), timeout=1)
                async for _ in stream:
                    break
                stream.cancel()
            else:
                await channel.unary_unary(name)(request.SerializeToString(), timeout=30)
        except grpc.aio.AioRpcError as error:
            followed_on = method.server_streaming and error.code() == DEADLINE_EXCEEDED
            if error.code() not in CALLER_ERRORS and not followed_on:
                server_errors.append((method.name, field, error.code(), error.details()))

    assert tried > 1_000
    assert server_errors == []
