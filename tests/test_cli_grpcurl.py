"""The real `passpush` process, driven from outside: the console script, grpcurl, SIGTERM.

Each test starts `passpush serve` as a subprocess on a free port, against the test database
and the fake APNs running in this test process, and talks to it the way an engineer would:
with grpcurl and server reflection, no proto files. Every server a test starts must stop on
SIGTERM with exit code 0; its log is printed when a test fails.

Everything here waits with asyncio (never a blocking subprocess call): the fake APNs answers
from this process's event loop. The process helpers live in tests/processes.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select

from passpush.fakes.apns import FakeApns
from passpush.store.db import make_engine
from passpush.store.models import DeliveryRow, DeviceRegistrationRow
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from processes import (
    PASSPUSH,
    Launch,
    Launcher,
    ServerProcess,
    call,
    create_key,
    free_port,
    grpcurl,
    passpush_env,
    poll_terminal,
    run,
)
from support import TOPIC, World, make_key, wait_terminal

SHUTDOWN_GRACE = 2.0  # PASSPUSH_SHUTDOWN_GRACE for the graceful-shutdown test
DEVICE_TOKEN = "0123456789abcdef" * 4

# grpcurl exits with 64 + the gRPC status code when the call fails.
GRPCURL_INVALID_ARGUMENT = 64 + grpc.StatusCode.INVALID_ARGUMENT.value[0]
GRPCURL_UNAUTHENTICATED = 64 + grpc.StatusCode.UNAUTHENTICATED.value[0]


@pytest.fixture
async def launch(database_url: str, fake_apns: FakeApns, tmp_path: Path) -> AsyncIterator[Launcher]:
    """Starts `passpush serve` processes; at teardown each still running must stop cleanly."""
    async with Launcher(database_url, fake_apns, tmp_path) as launcher:
        yield launcher


@pytest.fixture
async def live_server(launch: Launch) -> ServerProcess:
    return await launch()


@pytest.fixture
async def demo_key(database_url: str) -> str:
    """A key for project "demo", written in this process (the walk-through makes its own with
    the CLI, as the docs say; a CLI process costs seconds)."""
    return await make_key(database_url, "demo")


# The tests of the CLI, grpcurl and serve's settings run on SQLite alone: what they check is
# the same on either database and each costs `passpush` processes of seconds. Those whose
# subject is the database (leases handed back at SIGTERM) run on both.
on_sqlite_alone = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# -- the console script: migrate, and serve on an unmigrated database ------------------------


def _schema(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    with sqlite3.connect(path) as db:
        objects = db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
        versions = [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]
    return objects, versions


async def test_migrate_creates_the_schema_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    env = passpush_env(f"sqlite+aiosqlite:///{path}", tmp_path)

    first = await run(PASSPUSH, "migrate", env=env)
    assert first.returncode == 0, first.output
    assert "up to date" in first.stdout
    schema, versions = _schema(path)
    assert {"tickets", "deliveries", "device_registrations"} <= {name for name, _ in schema}
    assert len(versions) == 1

    second = await run(PASSPUSH, "migrate", env=env)
    assert second.returncode == 0, second.output
    assert _schema(path) == (schema, versions)


async def test_serve_on_an_unmigrated_database_exits_and_says_to_migrate(tmp_path: Path) -> None:
    env = passpush_env(
        f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}",
        tmp_path,
        GRPC_ADDRESS=f"127.0.0.1:{free_port()}",
        HTTP_ADDRESS=f"127.0.0.1:{free_port()}",
    )

    result = await run(PASSPUSH, "serve", env=env, seconds=30)

    assert result.returncode != 0, result.output
    assert "passpush migrate" in result.stderr
    assert "Traceback" not in result.output


# -- grpcurl against the running server ------------------------------------------------------


# Reflection answers from the server's descriptors and never reads the database.
@on_sqlite_alone
async def test_grpcurl_lists_the_services_by_reflection(live_server: ServerProcess) -> None:
    result = await grpcurl(live_server.address, "list")

    assert result.returncode == 0, result.output
    assert set(result.stdout.split()) == {
        "passpush.v1.AdminService",
        "passpush.v1.NotificationService",
        "passpush.v1.PassService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }


@on_sqlite_alone
async def test_grpcurl_describes_every_notification_rpc(live_server: ServerProcess) -> None:
    result = await grpcurl(live_server.address, "describe", "passpush.v1.NotificationService")

    assert result.returncode == 0, result.output
    rpcs = {
        line.split()[1] for line in result.stdout.splitlines() if line.strip().startswith("rpc ")
    }
    assert rpcs == {
        "Send",
        "Delete",
        "Schedule",
        "Cancel",
        "GetScheduled",
        "ListScheduled",
        "GetTicket",
        "WatchTicket",
        "StreamDeliveryEvents",
    }


@on_sqlite_alone
async def test_the_walkthrough_with_grpcurl(
    live_server: ServerProcess, fake_apns: FakeApns, database_url: str, tmp_path: Path
) -> None:
    """The grpcurl steps of README.md and docs/walkthrough.md: a key made with the CLI, a
    template, a pass, a device, a Send to the template, and the ticket SUCCEEDED with the push
    at the fake APNs."""
    demo_key = await create_key(database_url, tmp_path, "demo")
    address = live_server.address
    passes = "passpush.v1.PassService"
    notifications = "passpush.v1.NotificationService"

    template = await call(
        address,
        f"{passes}/CreateTemplate",
        {
            "template_id": "loyalty",
            "template": {
                "project_id": "demo",
                "platform": "PLATFORM_APPLE",
                "pass_type_identifier": TOPIC,
            },
        },
        demo_key,
    )
    assert template["id"] == "loyalty"
    pass_ = await call(
        address,
        f"{passes}/UpsertPass",
        {
            "pass": {
                "id": "pass-1",
                "template_id": "loyalty",
                "external_id": "member-1",
                "tags": ["gold"],
            }
        },
        demo_key,
    )
    assert pass_["id"] == "pass-1"
    await call(
        address,
        f"{passes}/RegisterDevice",
        {"pass_id": "pass-1", "device_library_identifier": "device-1", "push_token": DEVICE_TOKEN},
        demo_key,
    )
    sent = await call(
        address,
        f"{notifications}/Send",
        {
            "target": {"template": {"template_id": "loyalty"}},
            "content": {"header": "Offer", "body": "20% off today"},
        },
        demo_key,
    )
    assert sent["operation"] == "OPERATION_SEND"

    ticket = await poll_terminal(address, sent["id"], demo_key)

    assert ticket["state"] == "TICKET_STATE_SUCCEEDED", ticket
    counts = {name: int(value) for name, value in ticket["counts"].items()}
    assert counts == {
        "total": 1,
        "pending": 0,
        "delivered": 1,
        "failed": 0,
        "skipped": 0,
        "delivered_without_alert": 0,
        "fetched": 0,  # no device fetched the pass (none asked)
    }
    assert [(p.device_token, p.topic, p.payload) for p in fake_apns.received] == [
        (DEVICE_TOKEN, TOPIC, b"{}")
    ]


@on_sqlite_alone
async def test_grpcurl_shows_an_invalid_argument_and_the_field(
    live_server: ServerProcess, demo_key: str
) -> None:
    request = {"target": {"template": {"template_id": "loyalty"}}, "content": {"body": ""}}

    result = await grpcurl(
        "-d",
        json.dumps(request),
        live_server.address,
        "passpush.v1.NotificationService/Send",
        key=demo_key,
    )

    assert result.returncode == GRPCURL_INVALID_ARGUMENT, result.output
    assert "Code: InvalidArgument" in result.output
    assert "content.body" in result.output


# -- graceful shutdown: accepted work survives a restart -------------------------------------


async def _deliveries(database_url: str, ticket_id: int) -> list[tuple[str, str | None, str]]:
    """(state, lease owner, push token) of each delivery of a ticket, read from the database."""
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(DeliveryRow.state, DeliveryRow.lease_owner, DeviceRegistrationRow.push_token)
                .join(
                    DeviceRegistrationRow, DeviceRegistrationRow.id == DeliveryRow.registration_id
                )
                .where(DeliveryRow.ticket_id == ticket_id)
            )
            return [(row.state, row.lease_owner, row.push_token) for row in rows]
    finally:
        await engine.dispose()


async def test_sigterm_with_a_push_in_flight_exits_cleanly_and_loses_nothing(
    launch: Launch, database_url: str, fake_apns: FakeApns, demo_key: str
) -> None:
    server = await launch(SHUTDOWN_GRACE=str(SHUTDOWN_GRACE))
    async with server.channel(demo_key) as channel:
        world = World(passes_pb2_grpc.PassServiceStub(channel), project_id="demo")
        await world.apple_template("loyalty")
        await world.pass_("p1", "loyalty", devices=3)
        hung = world.devices["p1"][0]
        fake_apns.hang(hung)
        ticket = await notifications_pb2_grpc.NotificationServiceStub(channel).Send(
            npb.SendRequest(
                target=npb.Target(template=npb.TemplateRef(template_id="loyalty")),
                content=npb.Content(body="Closing soon"),
            )
        )
        await fake_apns.wait_for(3, timeout=10)  # all pushed; the one to `hung` never answered

    took = await server.stop()

    assert took < SHUTDOWN_GRACE + 5, f"SIGTERM took {took:.1f}s:\n{server.log()}"
    # Each delivery is either recorded or handed back: none is left leased to the dead process.
    deliveries = await _deliveries(database_url, ticket.id)
    assert sorted(t for _, _, t in deliveries) == world.tokens_of("p1")
    for state, lease_owner, push_token in deliveries:
        assert state == "delivered" or (state == "pending" and lease_owner is None), (
            f"{push_token}: {state}, leased to {lease_owner}"
        )
    handed_back = sorted(t for state, _, t in deliveries if state == "pending")
    assert handed_back == [hung]  # the answered pushes were recorded before stopping

    fake_apns.reset()  # the device answers now
    restarted = await launch()
    async with restarted.channel(demo_key) as channel:
        notifications = notifications_pb2_grpc.NotificationServiceStub(channel)
        done = await wait_terminal(notifications, ticket.id, seconds=30)

    assert done.state == npb.TICKET_STATE_SUCCEEDED, done
    assert (done.counts.total, done.counts.delivered, done.counts.pending) == (3, 3, 0)
    # After the restart exactly the handed-back deliveries were pushed, each once.
    assert sorted(fake_apns.tokens()) == handed_back


async def _send_to_both_wallets(server: ServerProcess, key: str) -> tuple[npb.Ticket, npb.Ticket]:
    """An Apple Send and a Google Send, each to one pass; both tickets once terminal."""
    async with server.channel(key) as channel:
        world = World(passes_pb2_grpc.PassServiceStub(channel), project_id="demo")
        await world.apple_template("loyalty")
        await world.pass_("p1", "loyalty")
        await world.google_template("offers")
        await world.google_pass("g1", "offers")
        notifications = notifications_pb2_grpc.NotificationServiceStub(channel)
        tickets = []
        for pass_id in ("p1", "g1"):
            accepted = await notifications.Send(
                npb.SendRequest(
                    target=npb.Target(pass_id=pass_id), content=npb.Content(body="Hello")
                )
            )
            tickets.append(await wait_terminal(notifications, accepted.id, seconds=30))
    return tickets[0], tickets[1]


# No APNs endpoint, CA or credentials: the server knows of no APNs but Apple's.
NO_APNS = {"APNS_ENDPOINT": "", "APNS_CA_FILE": ""}


@on_sqlite_alone
async def test_serve_without_credentials_fails_deliveries_naming_the_missing_settings(
    launch: Launcher, demo_key: str
) -> None:
    """Without credentials for a wallet and without --fakes, its deliveries fail with a
    reason that names the settings to set; nothing is reported delivered."""
    server = await launch(**NO_APNS)
    apple, google = await _send_to_both_wallets(server, demo_key)

    assert (apple.state, apple.counts.delivered, apple.counts.failed) == (
        npb.TICKET_STATE_FAILED,
        0,
        1,
    ), apple
    assert "PASSPUSH_APNS_CERT" in apple.errors[0].reason
    assert "PASSPUSH_APNS_KEY_FILE" in apple.errors[0].reason
    assert (google.state, google.counts.delivered, google.counts.failed) == (
        npb.TICKET_STATE_FAILED,
        0,
        1,
    ), google
    assert "PASSPUSH_GOOGLE_CREDENTIALS" in google.errors[0].reason
    assert launch.fake_apns.tokens() == []
    log = server.log()
    assert "pushing to the bundled fake" not in log
    assert "sending to the bundled fake" not in log
    assert "PASSPUSH_APNS_CERT" in log
    assert "PASSPUSH_GOOGLE_CREDENTIALS" in log


@on_sqlite_alone
@pytest.mark.parametrize("how", ["--fakes", "PASSPUSH_FAKES=1"])
async def test_serve_with_fakes_sends_to_the_bundled_fakes(
    launch: Launcher, demo_key: str, how: str
) -> None:
    """`serve --fakes` (what `make run` runs) or PASSPUSH_FAKES=1: the wallets without
    credentials get the bundled fakes, and the log warns that nothing leaves the machine."""
    if how == "--fakes":
        server = await launch("--fakes", **NO_APNS)
    else:
        server = await launch(**NO_APNS, FAKES="1")
    apple, google = await _send_to_both_wallets(server, demo_key)

    assert (apple.state, apple.counts.delivered) == (npb.TICKET_STATE_SUCCEEDED, 1), apple
    assert (google.state, google.counts.delivered) == (npb.TICKET_STATE_SUCCEEDED, 1), google
    assert launch.fake_apns.tokens() == []  # the bundled fake took it, not the test's
    log = server.log()
    assert "pushing to the bundled fake APNs" in log
    assert "sending to the bundled fake Google Wallet API" in log
    assert "addMessage loyaltyObject " in log


async def test_serve_refuses_apples_apns_without_credentials(tmp_path: Path) -> None:
    """Apple's APNs named without a certificate or key: serve exits at once, saying what is
    missing, rather than failing each push later."""
    env = passpush_env(
        f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}",
        tmp_path,
        GRPC_ADDRESS=f"127.0.0.1:{free_port()}",
        HTTP_ADDRESS=f"127.0.0.1:{free_port()}",
        APNS_ENDPOINT="api.push.apple.com:443",
    )
    assert (await run(PASSPUSH, "migrate", env=env)).returncode == 0

    result = await run(PASSPUSH, "serve", env=env, seconds=30)

    assert result.returncode == 2, result.output
    assert "needs credentials" in result.stderr
    assert "Traceback" not in result.output


# -- API keys from the CLI ------------------------------------------------------------------


@on_sqlite_alone
async def test_calls_need_a_key_and_a_revoked_key_stops_working(
    launch: Launch, demo_key: str, database_url: str, tmp_path: Path
) -> None:
    live_server = await launch(KEY_CACHE_SECONDS="1")
    method = "passpush.v1.PassService/ListTemplates"
    without = await grpcurl("-d", "{}", live_server.address, method)
    assert without.returncode == GRPCURL_UNAUTHENTICATED, without.output
    assert "Code: Unauthenticated" in without.output
    assert (await grpcurl("-d", "{}", live_server.address, method, key=demo_key)).returncode == 0

    env = passpush_env(database_url, tmp_path)
    key_id = demo_key.partition(".")[0]
    listed = await run(PASSPUSH, "keys", "list", "--project", "demo", env=env)
    assert key_id in listed.stdout and demo_key not in listed.output
    revoked = await run(PASSPUSH, "keys", "revoke", key_id, env=env)
    assert revoked.returncode == 0, revoked.output

    # The server trusted the key it read for PASSPUSH_KEY_CACHE_SECONDS (1 s here); a CLI
    # revocation reaches it within that time.
    deadline = time.monotonic() + 1 + 5
    while True:
        after = await grpcurl("-d", "{}", live_server.address, method, key=demo_key)
        if after.returncode != 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert after.returncode == GRPCURL_UNAUTHENTICATED, after.output
    assert "API_KEY_REVOKED" in after.output


@on_sqlite_alone
async def test_keys_create_refuses_unknown_scopes_and_if_none_creates_once(
    database_url: str, tmp_path: Path
) -> None:
    env = passpush_env(database_url, tmp_path)
    bad = await run(PASSPUSH, "keys", "create", "--project", "p", "--scopes", "root", env=env)
    assert bad.returncode != 0 and "unknown scope 'root'" in bad.output
    assert "Traceback" not in bad.output

    create = (PASSPUSH, "keys", "create", "--project", "demo", "--scopes", "wnot", "--if-none")
    first = await run(*create, env=env)
    second = await run(*create, env=env)
    assert first.stdout.strip().splitlines()[-1].startswith("ppk_")
    assert second.returncode == 0 and "ppk_" not in second.stdout


# -- send --watch and watch: the CLI as a client of a running server --------------------------


@on_sqlite_alone
async def test_send_watch_shows_progress_and_a_summary_and_watch_replays_it(
    live_server: ServerProcess, demo_key: str, fake_apns: FakeApns, tmp_path: Path
) -> None:
    async with live_server.channel(demo_key) as channel:
        world = World(passes_pb2_grpc.PassServiceStub(channel), project_id="demo")
        await world.apple_template("loyalty")
        for i in range(3):
            await world.pass_(f"p{i}", "loyalty")
    fake_apns.respond(world.devices["p2"][0], 400, "BadDeviceToken")
    env = {"PASSPUSH_API_KEY": demo_key, "PATH": os.environ["PATH"]}
    connection = ("--address", live_server.address)
    send = ("send", *connection, "--template", "loyalty", "--header", "News", "--body", "Hi")

    sent = await run(PASSPUSH, *send, "--watch", env=env)

    assert sent.returncode == 1, sent.output  # a delivery failed
    lines = sent.stdout.strip().splitlines()
    ticket_id = int(lines[0].split()[1].rstrip(":"))
    assert lines[0] == f"ticket {ticket_id}: 3 deliveries"
    assert any(line.startswith("[") and "/3" in line for line in lines[1:-1]), lines
    assert lines[-1] == (
        f"ticket {ticket_id} PARTIALLY_FAILED: 3 total, 2 delivered, 1 failed, 0 skipped, "
        "0 fetched; errors: BadDeviceToken x1"
    )
    watched = await run(PASSPUSH, "watch", *connection, str(ticket_id), env=env)
    assert watched.returncode == 1 and watched.stdout.strip().splitlines()[-1] == lines[-1]

    quiet = await run(PASSPUSH, "send", *connection, "--pass", "p0", "--body", "x", env=env)
    assert quiet.returncode == 0 and quiet.stdout.strip().endswith(": 1 deliveries")
    no_key = await run(PASSPUSH, "watch", *connection, str(ticket_id), env={"PATH": env["PATH"]})
    assert no_key.returncode == 2 and "PASSPUSH_API_KEY" in no_key.stderr
    unknown = await run(PASSPUSH, "watch", *connection, "987654", env=env)
    assert unknown.returncode == 2 and "NOT_FOUND" in unknown.stderr


@on_sqlite_alone
async def test_failures_exports_a_tickets_failed_deliveries_as_csv(
    live_server: ServerProcess, demo_key: str, fake_apns: FakeApns
) -> None:
    async with live_server.channel(demo_key) as channel:
        world = World(passes_pb2_grpc.PassServiceStub(channel), project_id="demo")
        await world.apple_template("loyalty")
        for i in range(3):
            await world.pass_(f"p{i}", "loyalty")
        fake_apns.respond(world.devices["p1"][0], 400, "BadDeviceToken")
        ticket = await notifications_pb2_grpc.NotificationServiceStub(channel).Send(
            npb.SendRequest(
                target=npb.Target(template=npb.TemplateRef(template_id="loyalty")),
                content=npb.Content(body="Hi"),
            )
        )
    env = {"PASSPUSH_API_KEY": demo_key, "PATH": os.environ["PATH"]}
    connection = ("--address", live_server.address)

    exported = await run(PASSPUSH, "failures", *connection, str(ticket.id), "--csv", env=env)

    assert exported.returncode == 1, exported.output  # there were failures
    header, *rows = exported.stdout.strip().splitlines()
    assert header == (
        "ticket_id,pass_id,platform,device_library_identifier,google_object_id,reason,"
        "attempt,event_time"
    )
    assert len(rows) == 1 and rows[0].startswith(f"{ticket.id},p1,APPLE,")
    assert ",BadDeviceToken,1," in rows[0]
    readable = await run(PASSPUSH, "failures", *connection, str(ticket.id), env=env)
    assert readable.stdout.strip().splitlines()[-1] == "1 failed deliveries"
