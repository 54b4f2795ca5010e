"""API keys, scopes and tenant isolation on every RPC."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.api.scopes import METHOD_SCOPES
from passpush.api.server import SERVICE_NAMES
from passpush.app import Application
from passpush.domain.auth import Scope
from passpush.domain.validation import SCOPES_MAX
from passpush.fakes.apns import FakeApns
from passpush.store.models import ApiKeyRow, Base
from passpush.v1 import admin_pb2 as apb
from passpush.v1 import admin_pb2_grpc, notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import passes_pb2 as ppb

from apple_passes import AppleCerts, pass_document, pass_files
from support import World, channel_with_key, rich_error, token, upsert, wait_terminal

OWNER = "acme"
STRANGER = "umbrella"


def _segment_criteria() -> struct_pb2.Struct:
    criteria = struct_pb2.Struct()
    criteria.update({"tag": "gold"})
    return criteria


async def _import(*passes: ppb.Pass) -> AsyncIterator[ppb.ImportPassesRequest]:
    for p in passes:
        yield ppb.ImportPassesRequest(**{"pass": p})


# Every passpush RPC: a request that the owner's key may make, and what a key of another
# project gets for it (NOT_FOUND: to it, the owner's data does not exist).
RPCS: dict[str, tuple[Callable[[], Any], grpc.StatusCode]] = {
    "NotificationService/Send": (
        lambda: npb.SendRequest(target=npb.Target(pass_id="p1"), content=npb.Content(body="hi")),
        grpc.StatusCode.NOT_FOUND,
    ),
    "NotificationService/Delete": (
        lambda: npb.DeleteRequest(target=npb.Target(tag=npb.TagRef(tag="gold"))),
        grpc.StatusCode.NOT_FOUND,
    ),
    "NotificationService/GetTicket": (
        lambda: npb.GetTicketRequest(id=1),
        grpc.StatusCode.NOT_FOUND,
    ),
    "NotificationService/Schedule": (
        lambda: npb.ScheduleRequest(
            target=npb.Target(pass_id="p1"),
            content=npb.Content(body="later"),
            send_time=_in_an_hour(),
        ),
        grpc.StatusCode.NOT_FOUND,
    ),
    # The id of the owner's schedule is put in by `_with_owned_ids`.
    "NotificationService/Cancel": (lambda: npb.CancelRequest(), grpc.StatusCode.NOT_FOUND),
    "NotificationService/GetScheduled": (
        lambda: npb.GetScheduledRequest(),
        grpc.StatusCode.NOT_FOUND,
    ),
    # Another project's key lists its own (no) schedules.
    "NotificationService/ListScheduled": (lambda: npb.ListScheduledRequest(), grpc.StatusCode.OK),
    # The owner's ticket 1 is done: its watch and its events end after what it has.
    "NotificationService/WatchTicket": (
        lambda: npb.WatchTicketRequest(id=1),
        grpc.StatusCode.NOT_FOUND,
    ),
    "NotificationService/StreamDeliveryEvents": (
        lambda: npb.StreamDeliveryEventsRequest(ticket_id=1),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/CreateProject": (
        lambda: ppb.CreateProjectRequest(project_id=OWNER),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    "PassService/CreateTemplate": (
        lambda: ppb.CreateTemplateRequest(
            template_id="t2",
            template=ppb.Template(
                project_id=OWNER, platform=ppb.PLATFORM_APPLE, pass_type_identifier="pass.a.b"
            ),
        ),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/GetTemplate": (
        lambda: ppb.GetTemplateRequest(id="loyalty"),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/ListTemplates": (
        lambda: ppb.ListTemplatesRequest(project_id=OWNER),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/UpsertPass": (
        lambda: upsert(id="p1", template_id="loyalty"),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/GetPass": (lambda: ppb.GetPassRequest(id="p1"), grpc.StatusCode.NOT_FOUND),
    "PassService/ListPasses": (
        lambda: ppb.ListPassesRequest(template_id="loyalty"),
        grpc.StatusCode.NOT_FOUND,
    ),
    # An import reports each pass it refuses in its answer, not as the call's status.
    "PassService/ImportPasses": (
        lambda: _import(ppb.Pass(id="p9", template_id="loyalty")),
        grpc.StatusCode.OK,
    ),
    "PassService/CreateSegment": (
        lambda: ppb.CreateSegmentRequest(
            segment=ppb.Segment(project_id=OWNER, criteria=_segment_criteria())
        ),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/CreateCampaign": (
        lambda: ppb.CreateCampaignRequest(campaign=ppb.Campaign(project_id=OWNER)),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/AddCampaignMembers": (
        lambda: ppb.AddCampaignMembersRequest(campaign_id="spring", pass_ids=["p1"]),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/CreateEntity": (
        lambda: ppb.CreateEntityRequest(entity=ppb.Entity(project_id=OWNER)),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/RegisterDevice": (
        lambda: ppb.RegisterDeviceRequest(
            pass_id="p1", device_library_identifier="d9", push_token=token(99)
        ),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/UnregisterDevice": (
        lambda: ppb.UnregisterDeviceRequest(pass_id="p1", device_library_identifier="p1-device-0"),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/SetPassContent": (
        lambda: ppb.SetPassContentRequest(
            pass_id="p1", pass_json=json.dumps(pass_document()).encode(), files=pass_files()
        ),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/GetPassPackage": (
        lambda: ppb.GetPassPackageRequest(pass_id="p1"),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/SetTemplateContent": (
        lambda: ppb.SetTemplateContentRequest(
            template_id="loyalty",
            pass_json=json.dumps(pass_document()).encode(),
            files=pass_files(),
        ),
        grpc.StatusCode.NOT_FOUND,
    ),
    "PassService/SetTemplateSigning": (
        lambda: ppb.SetTemplateSigningRequest(template_id="loyalty"),
        grpc.StatusCode.NOT_FOUND,
    ),
    # A key of another project creates and lists keys of its own project only.
    "AdminService/CreateApiKey": (
        lambda: apb.CreateApiKeyRequest(api_key=apb.ApiKey(scopes=["passes:read"])),
        grpc.StatusCode.OK,
    ),
    "AdminService/ListApiKeys": (lambda: apb.ListApiKeysRequest(), grpc.StatusCode.OK),
    "AdminService/RevokeApiKey": (
        lambda: apb.RevokeApiKeyRequest(id="owner-key-id"),  # replaced by the real id
        grpc.StatusCode.NOT_FOUND,
    ),
}
UNARY_STREAM = {"WatchTicket", "StreamDeliveryEvents"}


def _in_an_hour() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    return ts


def _with_owned_ids(rpc: str, request: Any, owned: dict[str, str]) -> Any:
    """The request, naming the owner's real key or schedule where it needs an id."""
    if rpc == "AdminService/RevokeApiKey":
        return apb.RevokeApiKeyRequest(id=owned["owner_key_id"])
    if rpc in ("NotificationService/Cancel", "NotificationService/GetScheduled"):
        request.id = owned["schedule_id"]
    return request


def test_every_rpc_has_a_scope_and_a_case_here() -> None:
    from passpush.v1 import admin_pb2, notifications_pb2, passes_pb2

    served = {
        f"/{service.full_name}/{method.name}"
        for module in (admin_pb2, notifications_pb2, passes_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        if service.full_name in SERVICE_NAMES
        for method in service.methods
    }
    assert served == set(METHOD_SCOPES)
    assert served == {f"/passpush.v1.{name}" for name in RPCS}


async def invoke(channel: grpc.aio.Channel, rpc: str, request: Any) -> Any:
    service, method = rpc.split("/")
    stub = {
        "NotificationService": notifications_pb2_grpc.NotificationServiceStub,
        "PassService": passes_pb2_grpc.PassServiceStub,
        "AdminService": admin_pb2_grpc.AdminServiceStub,
    }[service](channel)
    call = getattr(stub, method)
    if method in UNARY_STREAM:
        return [response async for response in call(request)]
    return await call(request)


async def status_of(channel: grpc.aio.Channel, rpc: str, request: Any) -> grpc.StatusCode:
    try:
        await invoke(channel, rpc, request)
    except grpc.aio.AioRpcError as error:
        rich_error(error)  # every refusal carries a rich status with an ErrorInfo
        return error.code()
    return grpc.StatusCode.OK


async def snapshot(sessions: async_sessionmaker[AsyncSession]) -> dict[str, list[Any]]:
    """Every row of every table: to show that a refused call changed nothing."""
    async with sessions() as session:
        return {
            table.name: sorted(map(repr, (await session.execute(select(table))).all()))
            for table in Base.metadata.sorted_tables
        }


class Keys:
    """Keys of the owner's project (every scope, revoked, one per missing scope) and another's."""

    def __init__(self, server: Application) -> None:
        self.server = server

    async def make(self, project: str, scopes: list[str]) -> str:
        _, plaintext = await self.server.keys.create_key(
            project, "matrix", scopes, create_project=True
        )
        return plaintext


@pytest.fixture
async def owned(
    server: Application,
    passes: passes_pb2_grpc.PassServiceStub,
    api_key: str,
    apple_certs: AppleCerts,
) -> dict[str, str]:
    """The owner's data (a template with signing material, passes, content, a device, a
    campaign, a ticket) and keys."""
    world = World(passes)
    await world.apple_template("loyalty")
    await world.pass_("p1", "loyalty", tags=("gold",))
    await passes.SetTemplateSigning(
        ppb.SetTemplateSigningRequest(template_id="loyalty", apple_signing=apple_certs.proto())
    )
    await passes.SetPassContent(RPCS["PassService/SetPassContent"][0]())
    await passes.CreateCampaign(
        ppb.CreateCampaignRequest(campaign_id="spring", campaign=ppb.Campaign(project_id=OWNER))
    )
    async with channel_with_key(server.port, api_key) as channel:
        stub = notifications_pb2_grpc.NotificationServiceStub(channel)
        sent = await stub.Send(
            npb.SendRequest(target=npb.Target(pass_id="p1"), content=npb.Content(body="x"))
        )
        await wait_terminal(stub, sent.id)
        scheduled = await stub.Schedule(
            npb.ScheduleRequest(
                target=npb.Target(pass_id="p1"),
                content=npb.Content(body="later"),
                send_time=_in_an_hour(),
            )
        )
    keys = Keys(server)
    revoked = await keys.make(OWNER, ["all"])
    await server.keys.revoke_key(OWNER, revoked.partition(".")[0])
    return {
        "owner": api_key,
        "revoked": revoked,
        "stranger": await keys.make(STRANGER, ["all"]),
        "owner_key_id": api_key.partition(".")[0],
        "schedule_id": scheduled.id,
    }


CREDENTIALS = {
    "no_key": (None, grpc.StatusCode.UNAUTHENTICATED),
    "malformed_key": ("not-a-key", grpc.StatusCode.UNAUTHENTICATED),
    "unknown_key": ("ppk_0000000000000000.secret", grpc.StatusCode.UNAUTHENTICATED),
}


async def test_every_rpc_refuses_bad_credentials_and_other_projects(
    owned: dict[str, str],
    server: Application,
    sessions: async_sessionmaker[AsyncSession],
    fake_apns: FakeApns,
) -> None:
    """Every RPC in turn on one server: a refusal changes nothing, so each RPC needs no
    world of its own (one each cost the suite a minute). Each wrong answer is named."""
    wrong: dict[str, str] = {}
    for rpc in RPCS:
        before = await snapshot(sessions)
        pushes = len(fake_apns.received)
        for case, problem in (await _refusals(rpc, owned, server)).items():
            wrong[f"{rpc} with {case}"] = problem
        after_refusals = await snapshot(sessions)
        after_refusals["api_keys"] = before["api_keys"] = []  # `lacking` was added on purpose
        if after_refusals != before:
            wrong[rpc] = "a refused call changed the database"
        if len(fake_apns.received) != pushes:
            wrong[rpc] = "a refused call pushed"
    assert wrong == {}


async def _refusals(rpc: str, owned: dict[str, str], server: Application) -> dict[str, str]:
    """The credentials `rpc` must refuse, and what is wrong with each answer it gave."""
    make_request, stranger_code = RPCS[rpc]

    def request() -> Any:
        return _with_owned_ids(rpc, make_request(), owned)

    wrong_key = "ppk_" + owned["owner"][4:20] + ".wrong-secret"
    scope = METHOD_SCOPES[f"/passpush.v1.{rpc}"]
    every_other_scope = [s.value for s in Scope if s is not scope]
    lacking = await Keys(server).make(OWNER, every_other_scope)
    cases = {
        **CREDENTIALS,
        "wrong_secret": (wrong_key, grpc.StatusCode.UNAUTHENTICATED),
        "revoked_key": (owned["revoked"], grpc.StatusCode.UNAUTHENTICATED),
        "wrong_scope": (lacking, grpc.StatusCode.PERMISSION_DENIED),
        "strangers_key": (owned["stranger"], stranger_code),
    }
    wrong = {}
    for case, (key, expected) in cases.items():
        async with channel_with_key(server.port, key) as channel:
            try:
                await invoke(channel, rpc, request())
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if case == "wrong_scope" and code == expected:
                    reason = rich_error(error).reason
                    named = _error_info(error).metadata["scope"]
                    if (reason, named) != ("MISSING_SCOPE", scope.value):
                        wrong[case] = f"{reason} naming {named}"
        if code != expected:
            wrong[case] = f"{code}, not {expected}"
    return wrong


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


@pytest.mark.parametrize("rpc", RPCS.keys())
async def test_the_owners_key_may_make_each_request(
    rpc: str, owned: dict[str, str], server: Application
) -> None:
    make_request, stranger_code = RPCS[rpc]
    request = _with_owned_ids(rpc, make_request(), owned)
    if rpc == "AdminService/RevokeApiKey":
        request = apb.RevokeApiKeyRequest(id=owned["revoked"].partition(".")[0])
    expected = {
        grpc.StatusCode.PERMISSION_DENIED: grpc.StatusCode.ALREADY_EXISTS,  # CreateProject
    }.get(stranger_code, grpc.StatusCode.OK)
    async with channel_with_key(server.port, owned["owner"]) as channel:
        assert await status_of(channel, rpc, request) == expected


async def test_the_strangers_import_creates_nothing_in_the_owners_template(
    owned: dict[str, str], server: Application
) -> None:
    async with channel_with_key(server.port, owned["stranger"]) as channel:
        stub = passes_pb2_grpc.PassServiceStub(channel)
        summary = await stub.ImportPasses(_import(ppb.Pass(id="p9", template_id="loyalty")))
    assert (summary.created, summary.failed) == (0, 1)
    assert "template 'loyalty' not found" in summary.failures[0].message


async def test_same_ids_in_two_projects_stay_apart(
    server: Application, api_key: str, fake_apns: FakeApns
) -> None:
    other_key = await Keys(server).make(STRANGER, ["all"])
    worlds = {}
    for project, key in ((OWNER, api_key), (STRANGER, other_key)):
        channel = channel_with_key(server.port, key)
        world = World(passes_pb2_grpc.PassServiceStub(channel), project_id=project)
        world._next_token = 1 if project == OWNER else 100  # distinct devices
        await world.apple_template("loyalty")  # the same template id in both projects
        await world.pass_("p1", "loyalty", tags=("gold",))
        await world.pass_("p2", "loyalty", tags=("gold",), devices=2)
        worlds[project] = (world, channel)

    owner_world, owner_channel = worlds[OWNER]
    notifications = notifications_pb2_grpc.NotificationServiceStub(owner_channel)
    for target in (
        npb.Target(tag=npb.TagRef(tag="gold")),
        npb.Target(template=npb.TemplateRef(template_id="loyalty")),
        npb.Target(pass_id="p2"),
    ):
        fake_apns.reset()
        sent = await notifications.Send(
            npb.SendRequest(target=target, content=npb.Content(body="x"))
        )
        ticket = await wait_terminal(notifications, sent.id)
        expected = (
            owner_world.tokens_of("p2") if target.pass_id else owner_world.tokens_of("p1", "p2")
        )
        assert sorted(fake_apns.tokens()) == expected, target
        assert ticket.project_id == OWNER

    stranger_passes = passes_pb2_grpc.PassServiceStub(worlds[STRANGER][1])
    untouched = await stranger_passes.GetPass(ppb.GetPassRequest(id="p1"))
    assert not untouched.HasField("notification")
    for _, channel in worlds.values():
        await channel.close()


async def test_the_database_holds_no_key_in_clear(
    server: Application, sessions: async_sessionmaker[AsyncSession], api_key: str
) -> None:
    async with channel_with_key(server.port, api_key) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        created = await admin.CreateApiKey(
            apb.CreateApiKeyRequest(api_key=apb.ApiKey(display_name="ci", scopes=["wnot"]))
        )
        listed = await admin.ListApiKeys(apb.ListApiKeysRequest())
    secrets = [key.partition(".")[2] for key in (api_key, created.key)]
    assert created.api_key.scopes == ["notifications:read", "notifications:write"]
    assert {k.id for k in listed.api_keys} == {api_key.partition(".")[0], created.api_key.id}

    async with sessions() as session:
        dump = ""
        for table in Base.metadata.sorted_tables:
            rows = (await session.execute(select(table))).all()
            dump += repr(rows)
        stored = (await session.scalars(select(ApiKeyRow))).all()
    assert len(stored) == 2
    for secret in secrets:
        assert secret not in dump
    assert all(len(row.secret_hash) == 64 and row.salt for row in stored)
    assert len({row.salt for row in stored}) == 2  # salted per key


async def test_a_key_revoked_through_the_api_stops_at_once_though_it_was_just_used(
    server: Application, api_key: str
) -> None:
    """Live keys are remembered between calls; RevokeApiKey forgets the key it revokes."""
    doomed = await Keys(server).make(OWNER, ["all"])
    async with channel_with_key(server.port, doomed) as channel:
        notifications = notifications_pb2_grpc.NotificationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await notifications.GetTicket(npb.GetTicketRequest(id=987654))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # the key works, and is cached
        async with channel_with_key(server.port, api_key) as admin_channel:
            admin = admin_pb2_grpc.AdminServiceStub(admin_channel)
            await admin.RevokeApiKey(apb.RevokeApiKeyRequest(id=doomed.partition(".")[0]))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await notifications.GetTicket(npb.GetTicketRequest(id=987654))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _error_info(refused.value).reason == "API_KEY_REVOKED"


async def test_a_key_with_more_scopes_than_its_limit_is_invalid_argument(
    server: Application, api_key: str
) -> None:
    async with channel_with_key(server.port, api_key) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await admin.CreateApiKey(
                apb.CreateApiKeyRequest(api_key=apb.ApiKey(scopes=["wnot"] * (SCOPES_MAX + 1)))
            )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"scopes: must have at most {SCOPES_MAX}" in (raised.value.details() or "")
