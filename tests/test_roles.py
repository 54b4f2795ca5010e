"""`passpush serve --role api|worker`: the API and the delivery worker in processes of their own.

Real `passpush serve` processes (tests/processes.py) on one database, pushing to the fake
APNs of this test process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from passpush.fakes.apns import FakeApns
from passpush.store.db import is_sqlite
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc

from processes import PASSPUSH, Launcher, ServerProcess, create_key, passpush_env, run
from support import TOPIC, seed_apple_passes, wait_terminal

PROJECT = "roles"
TEMPLATE = "members"
# Workers that would look at the outbox by themselves only after this long: a push sooner
# than that came of the API process's wake-up.
SLOW_POLL = {"WORKER_POLL_SECONDS": "60"}


@pytest.fixture
async def launch(database_url: str, fake_apns: FakeApns, tmp_path: Path) -> AsyncIterator[Launcher]:
    async with Launcher(database_url, fake_apns, tmp_path) as launcher:
        yield launcher


@pytest.fixture
async def key(database_url: str, tmp_path: Path) -> str:
    return await create_key(database_url, tmp_path, PROJECT)


@pytest.fixture
async def tokens(database_url: str) -> list[str]:
    """Two passes of an Apple template (TEMPLATE-0, TEMPLATE-1), a device each."""
    return await seed_apple_passes(database_url, PROJECT, TEMPLATE, 2, new_template_topic=TOPIC)


async def send(api: ServerProcess, key: str, pass_id: str) -> npb.Ticket:
    async with api.channel(key) as channel:
        stub = notifications_pb2_grpc.NotificationServiceStub(channel)
        request = npb.SendRequest(
            target=npb.Target(pass_id=pass_id), content=npb.Content(body="Doors open at six")
        )
        ticket: npb.Ticket = await stub.Send(request, timeout=10)
        return ticket


async def terminal(api: ServerProcess, key: str, ticket_id: int, seconds: float) -> npb.Ticket:
    async with api.channel(key) as channel:
        stub = notifications_pb2_grpc.NotificationServiceStub(channel)
        return await wait_terminal(stub, ticket_id, seconds=seconds)


async def test_an_api_process_and_a_worker_process_deliver_a_send_at_once_and_stop_cleanly(
    launch: Launcher, key: str, tokens: list[str], fake_apns: FakeApns, database_url: str
) -> None:
    """The API process wakes the worker process: the push does not wait for the worker's
    poll. On SIGTERM each exits 0 within its grace; the worker leaves no socket behind."""
    api = await launch("--role", "api", SHUTDOWN_GRACE="5")
    worker = await launch("--role", "worker", SHUTDOWN_GRACE="5", **SLOW_POLL)

    ticket = await send(api, key, f"{TEMPLATE}-0")
    done = await terminal(api, key, ticket.id, seconds=10)
    stopped = await asyncio.gather(worker.stop(), api.stop())  # each asserts exit code 0

    assert (done.state, done.counts.delivered) == (npb.TICKET_STATE_SUCCEEDED, 1)
    assert fake_apns.tokens() == [tokens[0]]
    assert all(seconds < 5 for seconds in stopped), stopped
    assert "Traceback" not in worker.log() + api.log()
    if is_sqlite(database_url):
        sockets = Path(f"{make_url(database_url).database}-wakeups")
        assert await asyncio.to_thread(lambda: list(sockets.glob("*.sock"))) == []


async def test_a_send_accepted_while_no_worker_runs_is_delivered_once_one_starts(
    launch: Launcher, key: str, tokens: list[str], fake_apns: FakeApns
) -> None:
    api = await launch("--role", "api")
    ticket = await send(api, key, f"{TEMPLATE}-1")
    assert ticket.state == npb.TICKET_STATE_PENDING  # accepted: committed, not yet pushed

    await launch("--role", "worker", **SLOW_POLL)  # it looks at the outbox when it starts
    done = await terminal(api, key, ticket.id, seconds=10)

    assert (done.state, done.counts.delivered) == (npb.TICKET_STATE_SUCCEEDED, 1)
    assert fake_apns.tokens() == [tokens[1]]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_role_that_is_none_exits_2_with_one_line(database_url: str, tmp_path: Path) -> None:
    env = passpush_env(database_url, tmp_path)
    result = await run(PASSPUSH, "serve", "--role", "everything", env=env)
    from_env = await run(PASSPUSH, "serve", env={**env, "PASSPUSH_ROLE": "workers"})

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "passpush: --role must be one of api, worker, all, got 'everything'"
    ]
    assert from_env.returncode == 2
    assert from_env.stderr.splitlines() == [
        "passpush: PASSPUSH_ROLE must be one of api, worker, all, got 'workers'"
    ]
