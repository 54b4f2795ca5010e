"""`passpush serve` runs the shim on PASSPUSH_HTTP_ADDRESS and stops it on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from passpush.fakes.apns import FakeApns
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from apple_passes import AppleCerts, pass_document, pass_files, unzip, verified_pass
from processes import (
    PASSPUSH,
    Launcher,
    ServerProcess,
    free_port,
    passpush_env,
    run,
)
from shim_auth import basic
from support import TOPIC, World, make_key, upsert, wait_terminal


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


# Most tests here run on SQLite alone: none of them depends on the database (the startup
# checks of signing material and the PassKit URL run before it is opened, the HTTP address is
# bound the same way on either, and the shim's and the PassKit routes' reads and writes are
# tested on both in-process), and each costs a `passpush serve` of several seconds. The HTTP
# processes, which read the database from processes of their own, run on both.
on_sqlite_alone = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@on_sqlite_alone
async def test_serve_answers_airship_requests_on_its_http_address(
    launch: Launcher, database_url: str
) -> None:
    http_address = f"127.0.0.1:{free_port()}"
    server = await launch(HTTP_ADDRESS=http_address)
    key = await make_key(database_url, "demo")
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


@on_sqlite_alone
async def test_serve_exits_when_the_http_address_is_taken(
    launch: Launcher, database_url: str, tmp_path: Path
) -> None:
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


def signing_files(certs: AppleCerts, directory: Path) -> dict[str, str]:
    """The server's signing settings: the key in the certificate's file, as Apple exports."""
    directory.mkdir()
    (directory / "pass.pem").write_text(certs.certificate_pem + certs.private_key_pem)
    (directory / "wwdr.pem").write_text(certs.wwdr_certificate_pem)
    return {
        "APPLE_SIGNING_CERT": str(directory / "pass.pem"),
        "APPLE_SIGNING_WWDR": str(directory / "wwdr.pem"),
    }


@on_sqlite_alone
async def test_serve_signs_with_its_own_material_for_its_public_passkit_url(
    launch: Launcher, database_url: str, tmp_path: Path, apple_certs: AppleCerts
) -> None:
    http_address = f"127.0.0.1:{free_port()}"
    server = await launch(
        HTTP_ADDRESS=http_address,
        PASSKIT_PREFIX="/wallet",
        PASSKIT_URL="https://passes.example.com/wallet/",
        **signing_files(apple_certs, tmp_path / "signing"),
    )
    key = await make_key(database_url, "demo")
    async with server.channel(key) as channel:
        passes = passes_pb2_grpc.PassServiceStub(channel)
        await World(passes, project_id="demo").apple_template("t1")  # no material of its own
        await passes.UpsertPass(upsert(id="p1", template_id="t1"))
        await passes.SetPassContent(
            ppb.SetPassContentRequest(
                pass_id="p1", pass_json=json.dumps(pass_document()).encode(), files=pass_files()
            )
        )
        issued = await passes.GetPassPackage(ppb.GetPassPackageRequest(pass_id="p1"))
    document = await verified_pass(issued.pkpass, apple_certs, tmp_path / "issued")
    auth = {"Authorization": f"ApplePass {document['authenticationToken']}"}

    async with httpx.AsyncClient(base_url=f"http://{http_address}", timeout=30) as client:
        await wait_http(client)
        fetched = await client.get(f"/wallet/v1/passes/{TOPIC}/p1", headers=auth)
        default_prefix = await client.get(f"/passkit/v1/passes/{TOPIC}/p1", headers=auth)

    assert document["webServiceURL"] == "https://passes.example.com/wallet"
    assert fetched.status_code == 200, fetched.text
    await verified_pass(fetched.content, apple_certs, tmp_path / "fetched")
    assert default_prefix.status_code == 404
    await server.stop()


@on_sqlite_alone
async def test_serve_exits_when_its_signing_material_does_not_fit_together(
    launch: Launcher, database_url: str, tmp_path: Path, apple_certs: AppleCerts
) -> None:
    settings = signing_files(apple_certs, tmp_path / "signing")
    (tmp_path / "signing" / "wwdr.pem").write_text(apple_certs.root_certificate_pem)
    env = passpush_env(
        database_url,
        tmp_path,
        GRPC_ADDRESS=f"127.0.0.1:{free_port()}",
        HTTP_ADDRESS=f"127.0.0.1:{free_port()}",
        APNS_ENDPOINT=launch.fake_apns.endpoint,
        APNS_CA_FILE=str(launch.fake_apns.tls.ca_file),
        **settings,
    )

    result = await run(PASSPUSH, "serve", env=env, seconds=30)

    assert result.returncode == 2, result.output
    assert "wwdr_certificate_pem: did not issue the certificate" in result.stderr
    assert "Traceback" not in result.output


@on_sqlite_alone
async def test_serve_warns_when_passes_name_a_web_service_that_is_not_https(
    launch: Launcher,
) -> None:
    plain = await launch()  # PASSPUSH_PASSKIT_URL unset: http://{HTTP address}/passkit
    secure = await launch(PASSKIT_URL="https://passes.example.com/passkit")

    def warnings(server: ServerProcess) -> list[str]:
        return [line for line in server.log().splitlines() if " WARNING " in line]

    (warning,) = [line for line in warnings(plain) if "PASSPUSH_PASSKIT_URL" in line]
    assert f"http://{plain.env['PASSPUSH_HTTP_ADDRESS']}/passkit" in warning
    assert "https://" in warning
    assert not [line for line in warnings(secure) if "PASSPUSH_PASSKIT_URL" in line]


async def test_http_processes_serve_devices_and_the_parent_records_their_fetches(
    launch: Launcher, database_url: str, apple_certs: AppleCerts
) -> None:
    """By default the HTTP side runs in processes of its own, at a lower priority; a
    device's registration there is written (by the parent on SQLite, by the child on
    PostgreSQL) and answered as new or not, and its fetch reaches the ticket (the parent
    records it); and killing the parent takes them down too, so the port is
    free for the next start."""
    http_address = f"127.0.0.1:{free_port()}"
    server = await launch(HTTP_ADDRESS=http_address, HTTP_PROCESSES="2")
    key = await make_key(database_url, "demo")
    device = "6b2f0d6b1c0e4d6f9a1b2c3d4e5f6a7b"
    async with server.channel(key) as channel:
        passes = passes_pb2_grpc.PassServiceStub(channel)
        notifications = notifications_pb2_grpc.NotificationServiceStub(channel)
        await passes.CreateTemplate(
            ppb.CreateTemplateRequest(
                template_id="t1",
                template=ppb.Template(
                    project_id="demo",
                    platform=ppb.PLATFORM_APPLE,
                    pass_type_identifier=TOPIC,
                    apple_signing=apple_certs.proto(),
                ),
            )
        )
        await passes.UpsertPass(upsert(id="p1", template_id="t1"))
        await passes.SetPassContent(
            ppb.SetPassContentRequest(
                pass_id="p1", pass_json=json.dumps(pass_document()).encode(), files=pass_files()
            )
        )
        issued = await passes.GetPassPackage(ppb.GetPassPackageRequest(pass_id="p1"))
        held = json.loads(unzip(issued.pkpass)["pass.json"])
        auth = {"Authorization": f"ApplePass {held['authenticationToken']}"}
        registrations = f"/passkit/v1/devices/{device}/registrations/{TOPIC}"
        async with httpx.AsyncClient(base_url=f"http://{http_address}", timeout=30) as client:
            await wait_http(client)
            registered, again_registered = [
                await client.post(f"{registrations}/p1", json={"pushToken": token}, headers=auth)
                for token in ("d0" * 32, "d1" * 32)
            ]
            tag = (await client.get(registrations)).json()["lastUpdated"]
            ticket = await notifications.Send(
                npb.SendRequest(target=npb.Target(pass_id="p1"), content=npb.Content(body="Hi"))
            )
            await wait_terminal(notifications, ticket.id)
            asked = await client.get(registrations, params={"passesUpdatedSince": tag})
            fetched = await client.get(f"/passkit/v1/passes/{TOPIC}/p1", headers=auth)
        counted = await wait_fetched(notifications, ticket.id)
    children = child_pids(server.pid)
    policies = [os.sched_getscheduler(pid) for pid in children]

    server.kill_now()
    await server.kill()
    again = await launch(HTTP_ADDRESS=http_address, HTTP_PROCESSES="2")

    assert (registered.status_code, again_registered.status_code) == (201, 200)
    assert asked.json()["serialNumbers"] == ["p1"]
    assert fetched.status_code == 200
    assert counted.counts.fetched == 1
    assert len(children) == 2
    # PASSPUSH_HTTP_NICE's default: they run when nothing else wants the CPU.
    assert policies == [os.SCHED_IDLE, os.SCHED_IDLE]
    assert again.running
    assert not set(children) & set(child_pids(again.pid))


async def wait_fetched(
    notifications: notifications_pb2_grpc.NotificationServiceStub, ticket_id: int
) -> npb.Ticket:
    async with asyncio.timeout(15):
        while True:
            ticket = await notifications.GetTicket(npb.GetTicketRequest(id=ticket_id))
            if ticket.counts.fetched:
                return ticket
            await asyncio.sleep(0.05)


def child_pids(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def _connections_by_process(port: int) -> Counter[int]:
    """How many established connections to `port` each process holds (ss, from iproute2)."""
    listing = await run("ss", "-Htnp", "state", "established", f"( sport = :{port} )")
    return Counter(int(pid) for pid in re.findall(r"pid=(\d+)", listing.stdout))


@on_sqlite_alone
async def test_http_processes_take_connections_opened_one_after_another_in_turn(
    launch: Launcher,
) -> None:
    """Each HTTP process holds its half of the open connections, however few they are: a
    load balancer's, or a load client's 16 keep-alive connections. Hashed over the
    processes by the kernel (SO_REUSEPORT), 16 went 11 to 5 in one device-pull run, whose
    last third ran on one core while the other idled."""
    port = free_port()
    await launch(HTTP_ADDRESS=f"127.0.0.1:{port}", HTTP_PROCESSES="2")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        await wait_http(client)
    connections = []
    try:
        for _ in range(100):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            connections.append(writer)
            writer.write(f"GET /passkit/v1/devices/d/registrations/{TOPIC} HTTP/1.1\r\n".encode())
            writer.write(b"Host: passpush\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 204")
        held = await _connections_by_process(port)
    finally:
        for writer in connections:
            writer.close()
    assert sorted(held.values()) == [50, 50], held  # hashed: exactly 50 each by chance 8%


@on_sqlite_alone
async def test_http_processes_share_a_burst_of_connections_and_no_second_server_joins_them(
    launch: Launcher, database_url: str, tmp_path: Path
) -> None:
    """32 keep-alive connections opened at once (a load client's, or devices after a push)
    spread over both HTTP processes: on one shared socket the first process to wake took
    them all (the device-pull benchmark: one process at 5.2 s of CPU, the other at 0.4 s).
    And the port stays theirs: a second `passpush serve` on it fails."""
    port = free_port()
    server = await launch(HTTP_ADDRESS=f"127.0.0.1:{port}", HTTP_PROCESSES="2")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        await wait_http(client)

    async def ask() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /passkit/v1/devices/d/registrations/{TOPIC} HTTP/1.1\r\n".encode())
        writer.write(b"Host: passpush\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 204")
        return reader, writer

    connections = await asyncio.gather(*(ask() for _ in range(32)))
    held = await _connections_by_process(port)
    for _, writer in connections:
        writer.close()
    env = passpush_env(
        database_url,
        tmp_path,
        GRPC_ADDRESS=f"127.0.0.1:{free_port()}",
        HTTP_ADDRESS=f"127.0.0.1:{port}",
        HTTP_PROCESSES="2",
        APNS_ENDPOINT=launch.fake_apns.endpoint,
        APNS_CA_FILE=str(launch.fake_apns.tls.ca_file),
    )
    second = await run(PASSPUSH, "serve", env=env, seconds=60)

    children = child_pids(server.pid)
    assert sorted(held) == sorted(children), held
    assert min(held.values()) >= 4, held  # 16 each on average; under 4 by chance: p < 3e-6
    assert second.returncode != 0, second.output
    assert "HTTP" in second.stderr
