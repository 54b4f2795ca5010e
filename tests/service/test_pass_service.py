"""PassService: what the notifier knows about passes, read back as written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from support import World, rich_error, token, upsert


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await world.apple_template("loyalty")
    return world


async def test_upsert_creates_then_updates_by_id_or_external_id(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    created = await passes.UpsertPass(
        upsert(template_id="loyalty", external_id="m-1", tags=["b", "a", "a"], group_tags=["g"])
    )
    assert created.id and created.serial_number == created.id
    assert list(created.tags) == ["a", "b"]
    assert created.status == ppb.PASS_STATUS_ACTIVE

    by_external = await passes.UpsertPass(
        upsert(template_id="loyalty", external_id="m-1", status=ppb.PASS_STATUS_EXPIRED)
    )
    assert by_external.id == created.id
    assert by_external.status == ppb.PASS_STATUS_EXPIRED
    assert list(by_external.tags) == []  # tags are replaced as a whole

    by_id = await passes.UpsertPass(upsert(id=created.id, template_id="loyalty", tags=["c"]))
    assert (by_id.id, list(by_id.tags), by_id.external_id) == (created.id, ["c"], "m-1")
    assert by_id.update_tag > created.update_tag


async def test_list_passes_pages_through_every_pass_once(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    for i in range(7):
        await world.pass_(f"p{i}", "loyalty", devices=0, tags=(f"t{i}",))

    seen, token_ = [], ""
    while True:
        page = await passes.ListPasses(
            ppb.ListPassesRequest(template_id="loyalty", page_size=3, page_token=token_)
        )
        seen += [(p.id, tuple(p.tags)) for p in page.passes]
        token_ = page.next_page_token
        if not token_:
            break

    assert seen == [(f"p{i}", (f"t{i}",)) for i in range(7)]


async def test_templates_are_read_and_listed(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    await world.apple_template("tickets", topic="pass.com.example.tickets")

    got = await passes.GetTemplate(ppb.GetTemplateRequest(id="tickets"))
    listed = await passes.ListTemplates(ppb.ListTemplatesRequest(project_id="acme"))

    assert got.pass_type_identifier == "pass.com.example.tickets"
    assert [t.id for t in listed.templates] == ["loyalty", "tickets"]
    assert listed.next_page_token == ""


async def test_import_streams_many_passes_and_reports_failures(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    await world.pass_("existing", "loyalty", devices=0)

    async def requests() -> AsyncIterator[ppb.ImportPassesRequest]:
        yield ppb.ImportPassesRequest(**{"pass": ppb.Pass(id="existing", template_id="loyalty")})
        for i in range(5):
            yield ppb.ImportPassesRequest(**{"pass": ppb.Pass(id=f"n{i}", template_id="loyalty")})
        yield ppb.ImportPassesRequest(**{"pass": ppb.Pass(id="bad", template_id="nope")})
        yield ppb.ImportPassesRequest(**{"pass": ppb.Pass(template_id="")})

    summary = await passes.ImportPasses(requests())

    assert (summary.created, summary.updated, summary.failed) == (5, 1, 2)
    assert [f.index for f in summary.failures] == [6, 7]
    assert "template" in summary.failures[0].message
    assert (await passes.GetPass(ppb.GetPassRequest(id="n4"))).template_id == "loyalty"


async def test_import_counts_a_pass_with_bad_text_or_status_as_failed_and_goes_on(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    async def requests() -> AsyncIterator[ppb.ImportPassesRequest]:
        yield ppb.ImportPassesRequest(**{"pass": ppb.Pass(id="n0", template_id="loyalty")})
        yield ppb.ImportPassesRequest(
            **{"pass": ppb.Pass(id="nul", template_id="loyalty", tags=["a\x00b"])}
        )
        yield ppb.ImportPassesRequest(
            **{"pass": ppb.Pass(id="s99", template_id="loyalty", status=99)}  # type: ignore[arg-type]
        )
        yield ppb.ImportPassesRequest(**{"pass": ppb.Pass(id="n1", template_id="loyalty")})

    summary = await passes.ImportPasses(requests())

    assert (summary.created, summary.failed) == (2, 2)
    assert [f.index for f in summary.failures] == [1, 2]
    assert "pass.tags[0]" in summary.failures[0].message
    assert "pass.status" in summary.failures[1].message


async def test_an_import_stream_with_bytes_that_are_no_message_is_invalid_argument(
    world: World, channel: grpc.aio.Channel
) -> None:
    good = ppb.ImportPassesRequest(**{"pass": ppb.Pass(id="n0", template_id="loyalty")})
    import_passes = channel.stream_unary("/passpush.v1.PassService/ImportPasses")

    async def requests() -> AsyncIterator[bytes]:
        yield good.SerializeToString()
        yield b"\x0a\x05\x0a\x03\xff\xfe\xfd"  # pass { id: <not UTF-8> }

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await import_passes(requests())

    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations == ["request"]


async def test_a_device_registers_on_apple_passes_only(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    """Google Wallet has no devices to push to: registering one is FAILED_PRECONDITION."""
    await world.google_template("offers")
    await world.google_pass("g1", "offers")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await passes.RegisterDevice(
            ppb.RegisterDeviceRequest(
                pass_id="g1", device_library_identifier="d1", push_token=token(7)
            )
        )

    error = rich_error(raised.value)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_AN_APPLE_PASS")


async def test_devices_register_reregister_and_unregister(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    await world.pass_("p1", "loyalty", devices=0)
    request = ppb.RegisterDeviceRequest(
        pass_id="p1", device_library_identifier="d1", push_token=token(7)
    )
    first = await passes.RegisterDevice(request)
    again = await passes.RegisterDevice(request)
    assert (first.pass_id, again.device_library_identifier) == ("p1", "d1")

    unregister = ppb.UnregisterDeviceRequest(pass_id="p1", device_library_identifier="d1")
    await passes.UnregisterDevice(unregister)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await passes.UnregisterDevice(unregister)
    assert rich_error(raised.value).code == grpc.StatusCode.NOT_FOUND


async def test_campaign_members_are_counted_once(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    for pass_id in ("p1", "p2"):
        await world.pass_(pass_id, "loyalty", devices=0)
    campaign = await passes.CreateCampaign(
        ppb.CreateCampaignRequest(campaign=ppb.Campaign(project_id="acme", name="Spring"))
    )
    assert campaign.notification_limit == 3  # the default cap

    await passes.AddCampaignMembers(
        ppb.AddCampaignMembersRequest(campaign_id=campaign.id, pass_ids=["p1", "p2"])
    )
    again = await passes.AddCampaignMembers(
        ppb.AddCampaignMembersRequest(campaign_id=campaign.id, pass_ids=["p2", "p1"])
    )
    assert again.member_count == 2
