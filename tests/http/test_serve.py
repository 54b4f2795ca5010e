"""`passpush serve` runs the shim on PASSPUSH_HTTP_ADDRESS and stops it on SIGTERM."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from passpush.fakes.apns import FakeApns
from passpush.v1 import passes_pb2_grpc

from processes import PASSPUSH, Launcher, create_key, free_port, passpush_env, run
from shim_auth import basic
from support import World


@pytest.fixture
async def launch(database_url: str, fake_apns: FakeApns, tmp_path: Path) -> AsyncIterator[Launcher]:
    """Starts `passpush serve` processes; at teardown each must stop cleanly on SIGTERM."""
    async with Launcher(database_url, fake_apns, tmp_path) as launcher:
        yield launcher


async def wait_http(client: httpx.AsyncClient, seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while True:
            try:
                await client.get("/openapi.json")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)


async def test_serve_answers_airship_requests_on_its_http_address(
    launch: Launcher, database_url: str, tmp_path: Path
) -> None:
    http_address = f"127.0.0.1:{free_port()}"
    server = await launch(HTTP_ADDRESS=http_address)
    key = await create_key(database_url, tmp_path, "demo")
    async with server.channel(key) as channel:
        world = World(passes_pb2_grpc.PassServiceStub(channel), project_id="demo")
        await world.apple_template("t1")
        await world.pass_("p1", "t1")

    async with httpx.AsyncClient(base_url=f"http://{http_address}", timeout=30) as client:
        await wait_http(client)
        response = await client.post(
            "/v1/pass/p1/notify", json={"value": "Hello"}, headers={"Authorization": basic(key)}
        )
        docs = await client.get("/docs")

    assert response.status_code == 200, response.text
    assert isinstance(response.json()["ticketId"], int)
    assert docs.status_code == 200
    await server.stop()  # SIGTERM stops both servers, exit code 0


async def test_serve_exits_when_the_http_address_is_taken(
    launch: Launcher, database_url: str, tmp_path: Path
) -> None:
    await launch()  # migrates nothing itself: the Launcher's database is migrated already
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = passpush_env(
            database_url,
            tmp_path,
            GRPC_ADDRESS=f"127.0.0.1:{free_port()}",
            HTTP_ADDRESS=f"127.0.0.1:{port}",
            APNS_ENDPOINT=launch.fake_apns.endpoint,
            APNS_CA_FILE=str(launch.fake_apns.tls.ca_file),
        )

        result = await run(PASSPUSH, "serve", env=env, seconds=30)

    assert result.returncode != 0, result.output
    assert "HTTP" in result.stderr
    assert "Traceback" not in result.output
