"""`passpush serve` serves Prometheus metrics on PASSPUSH_METRICS_ADDRESS, and they move with
the calls and deliveries; the outbox's depth is read into its gauge."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.delivery.worker import WorkerSettings
from passpush.domain.clock import utcnow
from passpush.domain.outcomes import RetryPolicy
from passpush.fakes.apns import FakeApns
from passpush.outbox.depth import outbox_depth
from passpush.service.outbox_depth import OutboxDepth
from passpush.store.connectors.session import run_on_session
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from processes import PASSPUSH, Launcher, create_key, free_port, passpush_env, run
from support import World, wait_terminal

NOTIFICATIONS = "passpush.v1.NotificationService"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def launch(database_url: str, fake_apns: FakeApns, tmp_path: Path) -> AsyncIterator[Launcher]:
    async with Launcher(database_url, fake_apns, tmp_path) as launcher:
        yield launcher


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape_until(
    client: httpx.AsyncClient, name: str, wanted: float, seconds: float = 10.0, **labels: str
) -> Samples:
    """Scrapes until the sample has the wanted value (a subscriber's server side starts
    after the client's call does)."""
    async with asyncio.timeout(seconds):
        while True:
            samples = await scrape(client)
            if value(samples, name, **labels) == wanted:
                return samples
            await asyncio.sleep(0.05)


async def test_metrics_count_calls_deliveries_retries_and_subscribers(
    launch: Launcher, database_url: str, fake_apns: FakeApns, tmp_path: Path
) -> None:
    metrics_address = f"127.0.0.1:{free_port()}"
    server = await launch(METRICS_ADDRESS=metrics_address)
    key = await create_key(database_url, tmp_path, "acme")
    async with (
        server.channel(key) as channel,
        httpx.AsyncClient(base_url=f"http://{metrics_address}", timeout=10) as client,
    ):
        before = await scrape(client)
        world = World(passes_pb2_grpc.PassServiceStub(channel))
        await world.apple_template("t1")
        for pass_id in ("delivered", "gone", "busy"):
            await world.pass_(pass_id, "t1")
        (gone,) = world.devices["gone"]
        (busy,) = world.devices["busy"]
        fake_apns.respond(gone, 410, "Unregistered")
        fake_apns.respond(busy, 503, "ServiceUnavailable", times=1)  # then 200
        notifications = notifications_pb2_grpc.NotificationServiceStub(channel)
        for pass_id in ("delivered", "gone", "busy"):
            ticket = await notifications.Send(
                npb.SendRequest(target=npb.Target(pass_id=pass_id), content=npb.Content(body="Hi"))
            )
            await wait_terminal(notifications, ticket.id)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await notifications.Send(npb.SendRequest(content=npb.Content(body="no target")))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # A subscriber counts while its stream is open.
        events = notifications.StreamDeliveryEvents(npb.StreamDeliveryEventsRequest())
        subscribers = "passpush_event_stream_subscribers"
        await scrape_until(client, subscribers, 1, stream="delivery_events")
        events.cancel()
        samples = await scrape_until(client, subscribers, 0, stream="delivery_events")

    send = {"grpc_service": NOTIFICATIONS, "grpc_method": "Send"}
    assert value(samples, "passpush_grpc_server_handled_total", **send, grpc_code="OK") == 3
    assert (
        value(samples, "passpush_grpc_server_handled_total", **send, grpc_code="INVALID_ARGUMENT")
        == 1
    )
    assert value(samples, "passpush_grpc_server_handling_seconds_count", **send) == 4
    assert value(samples, "passpush_grpc_server_handling_seconds_sum", **send) > 0
    assert (
        value(
            samples,
            "passpush_grpc_server_handled_total",
            grpc_service=NOTIFICATIONS,
            grpc_method="StreamDeliveryEvents",
            grpc_code="CANCELLED",
        )
        == 1
    )
    deliveries = "passpush_deliveries_total"
    assert value(samples, deliveries, platform="apple", outcome="delivered") == 2
    assert value(samples, deliveries, platform="apple", outcome="failed") == 1
    assert value(samples, "passpush_delivery_retries_total", platform="apple") == 1
    # Four pushes: one each, and the busy device's second.
    apns = "passpush_apns_request_duration_seconds"
    assert value(samples, f"{apns}_count") - value(before, f"{apns}_count") == 4
    assert value(samples, f"{apns}_bucket", le="+Inf") == 4
    # Read at start: nothing was pending then.
    for state in ("due", "leased", "retrying"):
        outbox = (
            "passpush_outbox_deliveries",
            frozenset({"platform": "apple", "state": state}.items()),
        )
        assert samples[outbox] == 0
    await server.stop()


@contextlib.contextmanager
def socket_listening() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


# On SQLite alone: the address is bound before the database is opened (it is not even
# migrated here).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_serve_exits_when_the_metrics_address_is_taken(
    database_url: str, fake_apns: FakeApns, tmp_path: Path
) -> None:
    with socket_listening() as port:
        env = passpush_env(
            database_url,
            tmp_path,
            GRPC_ADDRESS=f"127.0.0.1:{free_port()}",
            HTTP_ADDRESS=f"127.0.0.1:{free_port()}",
            METRICS_ADDRESS=f"127.0.0.1:{port}",
        )
        result = await run(PASSPUSH, "serve", env=env, seconds=30)

    assert result.returncode == 2, result.output
    assert f"cannot serve metrics on PASSPUSH_METRICS_ADDRESS 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.output


@pytest.fixture
def worker_settings() -> WorkerSettings:
    # One delivery in hand at a time; a retry waits a minute: the states below stay put.
    return WorkerSettings(
        batch_size=1,
        max_in_flight=1,
        poll_interval=0.05,
        retry=RetryPolicy(backoff_base=60.0, backoff_cap=60.0),
    )


async def test_the_outbox_gauge_counts_due_leased_and_retrying_deliveries(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    sessions: async_sessionmaker[AsyncSession],
    fake_apns: FakeApns,
) -> None:
    world = World(passes)
    await world.apple_template("t1")
    for pass_id in ("retrying", "leased", "due"):
        await world.pass_(pass_id, "t1")
    fake_apns.respond(world.devices["retrying"][0], 503, "ServiceUnavailable")
    fake_apns.hang(world.devices["leased"][0])

    async def send(pass_id: str) -> None:
        await notifications.Send(
            npb.SendRequest(target=npb.Target(pass_id=pass_id), content=npb.Content(body="Hi"))
        )

    async def depth_becomes(wanted: Mapping[str, int]) -> None:
        async with asyncio.timeout(10):
            while True:
                async with sessions() as session:
                    depth = await run_on_session(session, outbox_depth(utcnow()))
                if {s: n for (p, s), n in depth.items() if p == "apple"} == wanted:
                    return
                await asyncio.sleep(0.05)

    await send("retrying")
    await depth_becomes({"due": 0, "leased": 0, "retrying": 1})
    await send("leased")  # the worker's one place, taken until APNs answers
    await fake_apns.wait_for(2)
    await send("due")
    await depth_becomes({"due": 1, "leased": 1, "retrying": 1})

    await OutboxDepth(sessions).refresh()

    gauge = {
        (platform, state): REGISTRY.get_sample_value(
            "passpush_outbox_deliveries", {"platform": platform, "state": state}
        )
        for platform in ("apple", "google")
        for state in ("due", "leased", "retrying")
    }
    assert gauge == {
        ("apple", "due"): 1,
        ("apple", "leased"): 1,
        ("apple", "retrying"): 1,
        ("google", "due"): 0,
        ("google", "leased"): 0,
        ("google", "retrying"): 0,
    }
