"""A caller's bad input fails that caller's call alone."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from passpush.app import Application
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from support import World, channel_with_key, rich_error, seed_apple_passes

INNOCENT = 300
POISONED = 300


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await world.apple_template("loyalty")
    await world.pass_("p1", "loyalty")
    return world


async def test_nul_sends_of_one_project_cost_no_other_projects_send(
    world: World,
    server: Application,
    database_url: str,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
) -> None:
    """Sends whose body holds a NUL (which PostgreSQL text cannot store), interleaved with
    another project's one-pass Sends so that they would share group commits, are each refused
    with INVALID_ARGUMENT, and every other Send gets its ticket."""
    _, beta_key = await server.keys.create_key("beta", "tests", ["all"], create_project=True)
    await seed_apple_passes(
        database_url, "beta", "beta-t", INNOCENT, new_template_topic="pass.com.example.beta"
    )
    poisoned = npb.SendRequest(
        target=npb.Target(pass_id="p1"), content=npb.Content(body="broken \x00 body")
    )

    async with channel_with_key(server.port, beta_key) as beta_channel:
        beta = notifications_pb2_grpc.NotificationServiceStub(beta_channel)
        calls = []
        for i in range(max(INNOCENT, POISONED)):
            if i < POISONED:
                calls.append(notifications.Send(poisoned))
            if i < INNOCENT:
                innocent = npb.SendRequest(
                    target=npb.Target(pass_id=f"beta-t-{i}"), content=npb.Content(body="hi")
                )
                calls.append(beta.Send(innocent))
        answers = await asyncio.gather(*calls, return_exceptions=True)

    tickets = [a for a in answers if isinstance(a, npb.Ticket)]
    errors = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(tickets) == INNOCENT, [e.code() for e in errors][:5]
    assert all(t.project_id == "beta" and t.counts.total == 1 for t in tickets)
    assert len(errors) == POISONED
    for error in errors:
        refused = rich_error(error)
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.field_violations == ["content.body"]
