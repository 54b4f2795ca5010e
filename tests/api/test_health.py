"""Health: the standard service's Check and List, and the HTTP server's /healthz and
/readyz, follow whether the database can be reached and written.

The outages are real: PostgreSQL behind a loopback proxy that is shut (every connection
cut, new ones refused) and opened again; a SQLite file made immutable with chattr.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import make_url

from passpush.api.server import SERVICE_NAMES
from passpush.app import Application
from passpush.fakes.apns import FakeApns
from passpush.http.app import HttpServer, create_app
from passpush.store.db import make_engine
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from processes import Launcher, create_key, free_port
from support import TOPIC, channel_with_key, upsert

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NAMES = ("", *SERVICE_NAMES)


async def test_list_answers_every_service_and_its_status(server: Application) -> None:
    async with channel_with_key(server.port, None) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest())

    statuses = {name: response.status for name, response in answer.statuses.items()}
    assert statuses == {name: SERVING for name in NAMES}


class DatabaseDoor:
    """A loopback TCP proxy in front of PostgreSQL: shut, it cuts every connection through
    it and refuses new ones (the database is unreachable); opened, it listens again on the
    same port."""

    def __init__(self, database_url: str) -> None:
        self._upstream = make_url(database_url)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        through = self._upstream.set(host="127.0.0.1", port=self.port)
        return through.render_as_string(hide_password=False)

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def shut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        self._server = None

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        host, port = self._upstream.host or "127.0.0.1", self._upstream.port or 5432
        server, to_server = await asyncio.open_connection(host, port)
        self._writers |= {to_client, to_server}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
            sink.transport.abort()

        await asyncio.gather(pipe(client, to_server), pipe(server, to_client))


Outage = tuple[str, Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]


@pytest.fixture
async def outage(database_url: str) -> AsyncIterator[Outage]:
    """The URL the server uses, and how to take its database away and give it back."""
    if database_url.startswith("postgresql"):
        door = DatabaseDoor(database_url)
        await door.open()
        yield door.url, door.shut, door.open
        return
    database = Path(database_url.removeprefix("sqlite+aiosqlite:///"))
    # The write-ahead log too: the connections open already write there, not to the file.
    files = [str(database), str(database.with_name(database.name + "-wal"))]

    async def chattr(flag: str) -> None:
        done = await asyncio.to_thread(
            subprocess.run, ["chattr", flag, *files], capture_output=True, text=True
        )
        if done.returncode:
            pytest.skip(f"chattr {flag} needs root (CAP_LINUX_IMMUTABLE): {done.stderr}")

    try:
        yield database_url, lambda: chattr("+i"), lambda: chattr("-i")
    finally:
        await asyncio.to_thread(subprocess.run, ["chattr", "-i", *files], check=False)


async def _becomes(
    channel: grpc.aio.Channel, http: httpx.AsyncClient, status: int, seconds: float = 20.0
) -> None:
    """Waits until Check of every service, List and /readyz all say `status`."""
    health = health_pb2_grpc.HealthStub(channel)
    ready = 200 if status == SERVING else 503
    seen: object = None
    try:
        async with asyncio.timeout(seconds):
            while True:
                checks = [
                    (await health.Check(health_pb2.HealthCheckRequest(service=name))).status
                    for name in NAMES
                ]
                listed = await health.List(health_pb2.HealthListRequest())
                readyz = await http.get("/readyz")
                seen = (checks, {n: s.status for n, s in listed.statuses.items()}, readyz)
                if (
                    checks == [status] * len(NAMES)
                    and {s.status for s in listed.statuses.values()} == {status}
                    and readyz.status_code == ready
                ):
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"health never became {status}: {seen}") from None


async def test_health_and_readyz_follow_the_database_going_away_and_coming_back(
    outage: Outage,
) -> None:
    url, take_away, give_back = outage
    engine = make_engine(url)
    server = Application(engine, None, readiness_interval=0.1)
    http = HttpServer(
        create_app(f"127.0.0.1:{server.port}", server.passkit, ready=lambda: server.serving),
        "127.0.0.1:0",
    )
    await http.start()
    not_yet = server.serving
    try:
        await server.start()
        async with (
            channel_with_key(server.port, None) as channel,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http.port}") as client,
        ):
            await _becomes(channel, client, SERVING)
            await take_away()
            await _becomes(channel, client, NOT_SERVING)
            alive_during = (await client.get("/healthz")).status_code
            await give_back()
            await _becomes(channel, client, SERVING)
    finally:
        await http.stop(grace=1.0)
        await server.stop(grace=1.0)
        await engine.dispose()

    assert not_yet is False  # not ready before the gRPC server has started
    assert alive_during == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_http_processes_readyz_follows_the_servers_health(
    outage: Outage, fake_apns: FakeApns, tmp_path: Path
) -> None:
    """`passpush serve` with an HTTP process: the parent tells it over their pipe whether
    the gRPC server serves, and its /readyz says so."""
    url, take_away, give_back = outage
    http_address = f"127.0.0.1:{free_port()}"
    async with Launcher(url, fake_apns, tmp_path) as launch:
        server = await launch(HTTP_ADDRESS=http_address, HTTP_PROCESSES="1")
        async with (
            grpc.aio.insecure_channel(server.address) as channel,
            httpx.AsyncClient(base_url=f"http://{http_address}") as client,
        ):
            await _becomes(channel, client, SERVING)
            await take_away()
            await _becomes(channel, client, NOT_SERVING)
            await give_back()
            await _becomes(channel, client, SERVING)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_registration_the_parent_cannot_write_is_unavailable_then_written(
    outage: Outage, fake_apns: FakeApns, tmp_path: Path
) -> None:
    """An HTTP process hands its devices' registrations to the parent, which writes them:
    while the database cannot be written the device is answered 503 (it registers again
    later, as Apple's devices do), and once it can, 201, then 200 for the same one."""
    url, take_away, give_back = outage
    http_address = f"127.0.0.1:{free_port()}"
    registration = f"/passkit/v1/devices/{'d' * 32}/registrations/{TOPIC}/p1"
    auth = {"Authorization": "ApplePass " + "a" * 32}
    async with Launcher(url, fake_apns, tmp_path) as launch:
        server = await launch(HTTP_ADDRESS=http_address, HTTP_PROCESSES="1")
        key = await create_key(url, tmp_path, "demo")
        async with server.channel(key) as channel:
            passes = passes_pb2_grpc.PassServiceStub(channel)
            await passes.CreateTemplate(
                ppb.CreateTemplateRequest(
                    template_id="t1",
                    template=ppb.Template(
                        project_id="demo",
                        platform=ppb.PLATFORM_APPLE,
                        pass_type_identifier=TOPIC,
                    ),
                )
            )
            await passes.UpsertPass(
                upsert(id="p1", template_id="t1", authentication_token="a" * 32)
            )
        async with httpx.AsyncClient(base_url=f"http://{http_address}", timeout=30) as client:
            await take_away()
            refused = await client.post(registration, json={"pushToken": "d0" * 32}, headers=auth)
            await give_back()
            written = await client.post(registration, json={"pushToken": "d0" * 32}, headers=auth)
            again = await client.post(registration, json={"pushToken": "d1" * 32}, headers=auth)

    assert refused.status_code == 503
    assert "Traceback" not in refused.text
    assert (written.status_code, again.status_code) == (201, 200)
