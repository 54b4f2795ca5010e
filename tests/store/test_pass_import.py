"""ImportPasses in batches: passes with their devices, upserted as UpsertPass and
RegisterDevice would, a refused pass never failing the others."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
import pytest

from passpush.fakes.apns import FakeApns
from passpush.service.passes import IMPORT_BATCH, MAX_IMPORT_ENTRIES
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from support import World, google_object_id, rich_error, token, upsert, wait_terminal


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await world.apple_template("loyalty")
    await world.google_template("offers")
    return world


def _request(devices: Sequence[tuple[str, str]] = (), **fields: object) -> ppb.ImportPassesRequest:
    return ppb.ImportPassesRequest(
        **{"pass": ppb.Pass(**fields)},  # type: ignore[arg-type]
        devices=[ppb.ImportedDevice(device_library_identifier=d, push_token=t) for d, t in devices],
    )


async def _import(
    passes: passes_pb2_grpc.PassServiceStub, requests: Sequence[ppb.ImportPassesRequest]
) -> ppb.ImportPassesResponse:
    async def stream() -> AsyncIterator[ppb.ImportPassesRequest]:
        for request in requests:
            yield request

    return await passes.ImportPasses(stream())


async def _pushed_tokens(
    notifications: notifications_pb2_grpc.NotificationServiceStub, fake_apns: FakeApns
) -> list[str]:
    sent = await notifications.Send(
        npb.SendRequest(
            target=npb.Target(template=npb.TemplateRef(template_id="loyalty")),
            content=npb.Content(body="Hello"),
        )
    )
    await wait_terminal(notifications, sent.id)
    return sorted(fake_apns.tokens())


async def test_an_import_registers_each_passs_devices_and_sends_reach_them(
    world: World,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
) -> None:
    count = IMPORT_BATCH + 5  # more than one batch
    requests = [
        _request([(f"phone-{n}", token(n))], id=f"p{n}", template_id="loyalty", tags=["all"])
        for n in range(count)
    ]
    requests[3] = _request(
        [("phone-3", token(3)), ("tablet-3", token(100_000))], id="p3", template_id="loyalty"
    )

    summary = await _import(passes, requests)

    assert (summary.created, summary.updated, summary.failed) == (count, 0, 0)
    assert await _pushed_tokens(notifications, fake_apns) == sorted(
        [token(n) for n in range(count)] + [token(100_000)]
    )


async def test_importing_again_updates_as_upsert_does(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    first = await _import(
        passes,
        [
            _request(id="a", template_id="loyalty", tags=["x", "y"], group_tags=["g"]),
            _request(template_id="loyalty", external_id="member-7", tags=["x"]),
        ],
    )
    before = await passes.GetPass(ppb.GetPassRequest(id="a"))

    again = await _import(
        passes,
        [
            _request(
                id="a",
                template_id="loyalty",
                tags=["z"],
                serial_number="S-1",
                status=ppb.PASS_STATUS_EXPIRED,
            ),
            _request(template_id="loyalty", external_id="member-7", tags=["w"]),
        ],
    )

    assert (first.created, again.created, again.updated, again.failed) == (2, 0, 2, 0)
    after = await passes.GetPass(ppb.GetPassRequest(id="a"))
    assert (list(after.tags), list(after.group_tags)) == (["z"], [])  # replaced as a whole
    assert (after.serial_number, after.status) == ("S-1", ppb.PASS_STATUS_EXPIRED)
    assert after.update_tag > before.update_tag
    listed = await passes.ListPasses(ppb.ListPassesRequest(template_id="loyalty"))
    member = next(p for p in listed.passes if p.external_id == "member-7")
    assert list(member.tags) == ["w"] and len(listed.passes) == 2


async def test_a_refused_pass_fails_alone_with_its_reason(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    await world.pass_("taken", "loyalty", devices=0)
    await passes.UpsertPass(
        ppb.UpsertPassRequest(**{"pass": ppb.Pass(template_id="loyalty", external_id="e-1")})
    )
    await world.apple_template("other")
    await _import(passes, [_request(id="elsewhere", template_id="other")])

    summary = await _import(
        passes,
        [
            _request(id="ok-0", template_id="loyalty"),
            _request(id="p1", template_id="nope"),  # no such template
            _request([("phone", "not-hex")], id="p2", template_id="loyalty"),  # bad token
            _request(id="p3", template_id="offers"),  # Google without an object id
            _request(  # devices on a Google pass
                [("phone", token(1))],
                id="p4",
                template_id="offers",
                google_object_id=google_object_id("p4"),
            ),
            _request(id="elsewhere", template_id="loyalty"),  # moves template
            _request(id="p6", template_id="loyalty", external_id="e-1"),  # external id taken
            _request(id="ok-7", template_id="loyalty"),
        ],
    )

    assert (summary.created, summary.updated, summary.failed) == (2, 0, 6)
    reasons = {f.index: f.message for f in summary.failures}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6]
    assert "template" in reasons[1]
    assert "devices[0].push_token" in reasons[2]
    assert "google_object_id" in reasons[3]
    assert "Apple" in reasons[4]
    assert "template_id" in reasons[5]
    assert "e-1" in reasons[6]
    for refused in ("p1", "p2", "p3", "p4", "p6"):
        listed = await passes.ListPasses(ppb.ListPassesRequest(template_id="loyalty"))
        assert refused not in {p.id for p in listed.passes}


async def test_the_same_pass_twice_in_one_import_ends_as_the_second_says(
    world: World,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
) -> None:
    summary = await _import(
        passes,
        [
            _request([("phone", token(1))], id="twice", template_id="loyalty", tags=["a"]),
            _request([("phone", token(2))], id="twice", template_id="loyalty", tags=["b"]),
        ],
    )

    assert (summary.created, summary.updated, summary.failed) == (1, 1, 0)
    got = await passes.GetPass(ppb.GetPassRequest(id="twice"))
    assert list(got.tags) == ["b"]
    assert await _pushed_tokens(notifications, fake_apns) == [token(2)]  # the token renewed


async def test_many_passes_to_a_message_are_numbered_in_the_order_they_come(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    def entry(**fields: object) -> ppb.ImportEntry:
        return ppb.ImportEntry(**{"pass": ppb.Pass(**fields)})  # type: ignore[arg-type]

    summary = await _import(
        passes,
        [
            ppb.ImportPassesRequest(
                **{"pass": ppb.Pass(id="first", template_id="loyalty")},  # type: ignore[arg-type]
                entries=[entry(id="e1", template_id="loyalty"), entry(id="e2", template_id="x")],
            ),
            ppb.ImportPassesRequest(entries=[entry(id="e3", template_id="x")]),
            ppb.ImportPassesRequest(),  # nothing in it
            _request(id="last", template_id="loyalty"),
        ],
    )

    assert (summary.created, summary.failed) == (3, 2)
    assert [f.index for f in summary.failures] == [2, 3]


async def test_a_message_with_more_passes_than_allowed_ends_the_import(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    too_many = ppb.ImportPassesRequest(
        entries=[
            ppb.ImportEntry(**{"pass": ppb.Pass(id=f"p{n}", template_id="loyalty")})  # type: ignore[arg-type]
            for n in range(MAX_IMPORT_ENTRIES + 1)
        ]
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _import(passes, [too_many])

    error = rich_error(raised.value)
    assert (error.code, error.field_violations) == (grpc.StatusCode.INVALID_ARGUMENT, ["entries"])


def _batch(requests: Sequence[ppb.ImportPassesRequest]) -> ppb.ImportPassesRequest:
    """The passes in one message, as an import sends them: read at once."""
    return ppb.ImportPassesRequest(
        entries=[
            ppb.ImportEntry(**{"pass": getattr(r, "pass")}, devices=r.devices)  # type: ignore[arg-type]
            for r in requests
        ]
    )


async def test_batches_written_side_by_side_keep_the_imports_order(
    world: World, passes: passes_pb2_grpc.PassServiceStub
) -> None:
    """On PostgreSQL two batches are written at once. A pass the later one names otherwise
    (by its external id, where the earlier named its id) still ends as the later says; a
    pass both name alike is written by one after the other; failures come in order."""
    await passes.UpsertPass(upsert(id="x", template_id="loyalty", external_id="ext-x"))
    before = (await passes.GetPass(ppb.GetPassRequest(id="x"))).update_tag

    first = [_request(id=f"a{n}", template_id="loyalty") for n in range(IMPORT_BATCH - 1)]
    first.append(_request(id="x", template_id="loyalty", serial_number="first"))
    refused = [_request(id=f"b{n}") for n in range(IMPORT_BATCH - 1)]  # no template: refused
    second = [
        _request(template_id="loyalty", external_id="ext-x", serial_number="second"),
        *refused,
    ]
    third = [_request(id="c", template_id="loyalty")]

    summary = await _import(passes, [_batch(first), _batch(second), *third])

    assert (summary.created, summary.updated) == (IMPORT_BATCH, 2)
    assert summary.failed == IMPORT_BATCH - 1
    assert [f.index for f in summary.failures] == list(
        range(IMPORT_BATCH + 1, IMPORT_BATCH + 1 + len(summary.failures))
    )
    x = await passes.GetPass(ppb.GetPassRequest(id="x"))
    assert x.serial_number == "second"
    assert x.update_tag > before

    # A new pass named alike (by id) in both: the second batch waits for the first.
    first = [_request(id=f"d{n}", template_id="loyalty") for n in range(IMPORT_BATCH - 1)]
    first.append(_request(id="y", template_id="loyalty", serial_number="first"))
    second = [_request(id="y", template_id="loyalty", serial_number="second"), *refused]
    await _import(passes, [_batch(first), _batch(second), *third])
    assert (await passes.GetPass(ppb.GetPassRequest(id="y"))).serial_number == "second"
