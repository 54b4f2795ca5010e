"""Passing database trouble (lost connections, a full disk, a read-only file) answers
UNAVAILABLE, turns health NOT_SERVING while it lasts, and leaves nothing broken after it.

The faults are real: PostgreSQL's own pg_terminate_backend, a small tmpfs filled up, a
database file made immutable with chattr (the tests run as root, so chmod would not do).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import event, make_url, text

from passpush.api.server import SERVICE_NAMES
from passpush.app import Application
from passpush.delivery.apple.gateway import ApnsGateway
from passpush.delivery.worker import WorkerSettings
from passpush.http.app import HttpServer, create_app
from passpush.store.connectors import connect, connect_standalone
from passpush.store.connectors.connector import Query, Steps
from passpush.store.db import make_engine, make_sessions
from passpush.store.faults import DATABASE_ERRORS, is_passing_trouble, write_check
from passpush.store.passkit import oldest_open_write
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from support import TOPIC, World, channel_with_key, rich_error, wait_terminal

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Words of the drivers and of the faults that must not reach a caller.
DRIVER_WORDS = ("sqlite", "asyncpg", "postgres", "disk", "readonly", "connection", "Traceback")


def _send(request_id: str, pass_id: str = "p0") -> npb.SendRequest:
    return npb.SendRequest(
        target=npb.Target(pass_id=pass_id), content=npb.Content(body="Hi"), request_id=request_id
    )


async def _outcome(
    notifications: notifications_pb2_grpc.NotificationServiceStub, request_id: str
) -> str:
    """ "OK", or the status code's name and the ErrorInfo reason of a failed Send."""
    try:
        await notifications.Send(_send(request_id))
    except grpc.aio.AioRpcError as error:
        assert not any(w in (error.details() or "") for w in DRIVER_WORDS), error.details()
        return f"{error.code().name} {rich_error(error).reason}"
    return "OK"


async def _health_becomes(channel: grpc.aio.Channel, status: int, seconds: float = 30.0) -> None:
    """Waits until the whole server and each passpush service report `status`."""
    health = health_pb2_grpc.HealthStub(channel)
    names = ("", *SERVICE_NAMES)
    seen: list[int] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                seen = [
                    (await health.Check(health_pb2.HealthCheckRequest(service=n))).status
                    for n in names
                ]
                if seen == [status] * len(names):
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"health never became {status} for all of {names}: {seen}") from None


# -- PostgreSQL drops every connection -------------------------------------------------------


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await world.apple_template("loyalty")
    await world.pass_("p0", "loyalty")
    return world


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_sends_after_postgresql_drops_every_connection_never_answer_internal(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    database_url: str,
) -> None:
    """After PostgreSQL ends all of the server's connections, the next Sends succeed; the
    first may answer UNAVAILABLE (retryable), none answers INTERNAL."""
    # Several pooled connections, all of which the server will find dead.
    await asyncio.gather(*(notifications.Send(_send(f"warm-{i}")) for i in range(30)))
    assert await _end_every_connection(database_url) >= 2

    outcomes = [await _outcome(notifications, f"after-{i}") for i in range(20)]

    assert outcomes[1:] == ["OK"] * 19, outcomes
    assert outcomes[0] in ("OK", "UNAVAILABLE DATABASE_UNAVAILABLE"), outcomes


async def _end_every_connection(database_url: str) -> int:
    """PostgreSQL ends every connection to the test database but the one asking."""
    admin = make_engine(database_url)
    try:
        async with admin.connect() as connection:
            ended = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
    finally:
        await admin.dispose()
    return int(ended)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_device_reads_after_postgresql_drops_every_connection_never_answer_500(
    world: World, server: Application, database_url: str
) -> None:
    """The PassKit web service reads on connections of its own: after PostgreSQL ends them
    all, a device's next questions are all answered. A read that finds its connection lost
    is read again on a new one (each stale connection used to answer one 503)."""
    http = HttpServer(create_app(f"127.0.0.1:{server.port}", server.passkit), "127.0.0.1:0")
    await http.start()
    serials = f"/passkit/v1/devices/phone-1/registrations/{TOPIC}"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http.port}") as client:
            # Several connections of the read pool, all of which the server will end.
            warm = await asyncio.gather(*(client.get(serials) for _ in range(20)))
            assert await _end_every_connection(database_url) >= 2
            after = [await client.get(serials) for _ in range(20)]
    finally:
        await http.stop(grace=1.0)

    assert {answer.status_code for answer in warm} == {204}
    assert [answer.status_code for answer in after] == [204] * 20, [a.text for a in after]


# Seconds a close from PostgreSQL's side is held back at most: the test lets the closes go
# when it is done, and this bound only keeps a test gone wrong from waiting for ever.
HOLD_CLOSE_AT_MOST = 60.0


class _ClosesHeldBack:
    """The database's URL through a loopback proxy that passes bytes both ways but holds
    back a close from PostgreSQL's side until the test is done with it: a connection the
    server ended then has the server's last word (its FATAL error) but not its end, as
    between two reads. (A close held for a fixed time, 5 s, let the end arrive before the
    test's next step on a loaded machine, and the step found a closed connection instead.)
    Each held close still goes at HOLD_CLOSE_AT_MOST: a query sent just before that last
    word arrived would otherwise wait for an answer for ever."""

    def __init__(self, database_url: str) -> None:
        self._target = make_url(database_url)
        self._held: list[asyncio.StreamWriter] = []
        self._server_ends = 0  # connections whose last word from PostgreSQL is passed on
        self._ended = asyncio.Condition()
        self.url = ""

    async def server_ended(self, count: int) -> None:
        """Returns once PostgreSQL's last word on `count` connections is passed on."""
        async with asyncio.timeout(10), self._ended:
            await self._ended.wait_for(lambda: self._server_ends >= count)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()

    async def _end_later(
        self, server: asyncio.StreamReader, to_client: asyncio.StreamWriter
    ) -> None:
        await self._pipe(server, to_client)
        async with self._ended:
            self._server_ends += 1
            self._ended.notify_all()
        await asyncio.sleep(HOLD_CLOSE_AT_MOST)
        to_client.close()

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        self._held.append(to_client)
        server, to_server = await asyncio.open_connection(self._target.host, self._target.port)
        with contextlib.suppress(ConnectionError):
            await asyncio.gather(self._pipe(client, to_server), self._end_later(server, to_client))
        to_server.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_ClosesHeldBack]:
        proxy = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]
        self.url = self._target.set(host="127.0.0.1", port=port).render_as_string(
            hide_password=False
        )
        try:
            yield self
        finally:
            proxy.close()
            for to_client in self._held:  # now the ends arrive: nothing waits for them
                to_client.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_connection_whose_end_has_not_arrived_yet_is_passing_trouble(
    database_url: str,
) -> None:
    """PostgreSQL's error for a connection it ends can come before the end itself: a call
    in between finds asyncpg waiting out that error. That is a lost connection like any
    other (it was a 500 in CI): a read is read again on a new connection; a transaction,
    which may have written, is passing trouble (UNAVAILABLE, 503) and the next call gets a
    new connection."""
    async with _ClosesHeldBack(database_url).running() as proxy:
        engine = make_engine(proxy.url)
        reads, transactions = connect_standalone(engine), connect(engine)
        try:
            await reads.run(oldest_open_write)
            await transactions.run(write_check)
            ended = await _end_every_connection(database_url)
            assert ended >= 2
            await proxy.server_ended(ended)
            await reads.run(oldest_open_write)
            with pytest.raises(DATABASE_ERRORS) as raised:
                await transactions.run(write_check)
            assert is_passing_trouble(raised.value), repr(raised.value)
            await transactions.run(write_check)
        finally:
            reads.close()
            transactions.close()
    await engine.dispose()  # once the proxy has passed every end on


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_send_whose_connection_is_ended_mid_transaction_answers_unavailable(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    database_url: str,
) -> None:
    """A Send whose connection PostgreSQL ends while its transaction runs answers
    UNAVAILABLE, with no driver text; the next Send succeeds."""
    blocker = make_engine(database_url)
    try:
        async with blocker.begin() as connection:
            # Holding p0's row stops the Send at its pass update, its transaction open.
            await connection.execute(
                text("SELECT 1 FROM passes WHERE project_id = 'acme' AND id = 'p0' FOR UPDATE")
            )
            send = asyncio.create_task(_outcome(notifications, "cut-off"))
            ended = 0
            async with asyncio.timeout(10):
                while not ended:
                    await asyncio.sleep(0.01)
                    # pg_stat_activity is read once a transaction unless told otherwise.
                    await connection.execute(text("SELECT pg_stat_clear_snapshot()"))
                    ended = await connection.scalar(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                        )
                    )
            outcome = await send
    finally:
        await blocker.dispose()

    assert outcome == "UNAVAILABLE DATABASE_UNAVAILABLE"
    assert await _outcome(notifications, "next") == "OK"


# -- SQLite on a disk that fills up ----------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs of its own, to fill up: a real full disk."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)]
    mounted = subprocess.run(mount, capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root (CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # Lazy: detached now even if a file on it were still open, freed when closed.
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def _empty_the_wal(database: Path) -> None:
    """Checkpoints the WAL and truncates it to nothing. A full disk refuses only writes that
    need new space: after a checkpoint SQLite writes the WAL from its start again, and a
    loaded run's first Sends on a "full" disk went into the frames already there."""
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as connection:
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0, "a reader kept the WAL from being truncated"


def _fill(disk: Path) -> Path:
    """Fills `disk` up with one file, to its last page; removing that file frees the space
    again. (Filled in 64 KiB writes alone, up to 64 KiB stayed free: room for a few Sends'
    WAL frames, which then succeeded on a "full" disk in a loaded run.)"""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as file:  # unbuffered: nothing left to flush at close
        for size in (65536, 4096, 1):
            try:
                while True:
                    file.write(b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
    return filler


@pytest.fixture
async def server_on_small_disk(
    small_disk: Path,
    sqlite_template: Path,
    apns_gateway: ApnsGateway,
    worker_settings: WorkerSettings,
) -> AsyncIterator[Application]:
    path = small_disk / "passpush.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    server = Application(engine, apns_gateway, worker_settings=worker_settings)
    await server.start()
    try:
        yield server
    finally:
        (small_disk / "filler").unlink(missing_ok=True)  # if the test ended with the disk full
        await server.stop(grace=1.0)
        await engine.dispose()


async def test_a_full_disk_answers_unavailable_and_sends_resume_once_space_is_back(
    server_on_small_disk: Application, small_disk: Path
) -> None:
    """While the disk is full, Sends answer UNAVAILABLE, the PassKit web service 503, and
    health NOT_SERVING; once space is back, health is SERVING and Sends succeed, without a
    restart."""
    server = server_on_small_disk
    _, key = await server.keys.create_key("acme", "tests", ["all"], create_project=True)
    http = HttpServer(create_app(f"127.0.0.1:{server.port}", server.passkit), "127.0.0.1:0")
    await http.start()
    async with (
        channel_with_key(server.port, key) as channel,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{http.port}") as client,
    ):
        try:
            notifications = notifications_pb2_grpc.NotificationServiceStub(channel)
            world = World(passes_pb2_grpc.PassServiceStub(channel))
            await world.apple_template("loyalty")
            await world.pass_("p0", "loyalty")
            token = await _authentication_token(small_disk / "passpush.db", "p0")
            assert await _outcome(notifications, "before") == "OK"

            _empty_the_wal(small_disk / "passpush.db")  # then every write needs new space
            filler = _fill(small_disk)
            during = [await _outcome(notifications, f"during-{i}") for i in range(5)]
            registration = await client.post(
                f"/passkit/v1/devices/phone-2/registrations/{TOPIC}/p0",
                json={"pushToken": "ab" * 32},
                headers={"Authorization": f"ApplePass {token}"},
            )
            await _health_becomes(channel, NOT_SERVING)

            filler.unlink()
            await _health_becomes(channel, SERVING)
            after = [await _outcome(notifications, f"after-{i}") for i in range(5)]
            ticket = await notifications.Send(_send("last"))
            done = await wait_terminal(notifications, ticket.id)
        finally:
            await http.stop(grace=1.0)

    assert during == ["UNAVAILABLE DATABASE_UNAVAILABLE"] * 5
    assert registration.status_code == 503, registration.text
    assert registration.json()["reason"] == "DATABASE_UNAVAILABLE"
    assert not any(w in registration.text for w in DRIVER_WORDS), registration.text
    assert after == ["OK"] * 5
    assert done.state == npb.TICKET_STATE_SUCCEEDED


async def _authentication_token(database: Path, pass_id: str) -> str:
    """The pass's ApplePass token, as a device reads it from the pass."""
    engine = make_engine(f"sqlite+aiosqlite:///{database}")
    try:
        async with engine.connect() as connection:
            token = await connection.scalar(
                text("SELECT authentication_token FROM passes WHERE id = :id"), {"id": pass_id}
            )
    finally:
        await engine.dispose()
    assert isinstance(token, str)
    return token


# -- SQLite with a database file that cannot be written -------------------------------------


@pytest.fixture
def database_files(database_url: str) -> Iterator[list[Path]]:
    """The SQLite database file and its write-ahead log, to make immutable with chattr (so
    read-only even for root); mutable again at the end whatever happens."""
    database = Path(database_url.removeprefix("sqlite+aiosqlite:///"))
    files = [database, database.with_name(database.name + "-wal")]
    try:
        yield files
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], check=False)


async def _chattr(flag: str, files: list[Path]) -> str:
    """Sets or clears a file attribute; what chattr said if it could not."""
    process = await asyncio.create_subprocess_exec(
        "chattr",
        flag,
        *map(str, files),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return output.decode().strip() or f"exit {process.returncode}" if process.returncode else ""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sends_recover_once_a_read_only_database_file_is_writable_again(
    world: World,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    channel: grpc.aio.Channel,
    database_files: list[Path],
) -> None:
    """While the database cannot be written, Sends answer UNAVAILABLE and health says
    NOT_SERVING; once it can, health says SERVING and Sends succeed, without a restart
    (a connection opened meanwhile would stay read-only for good: the server reopens it)."""
    # The write-ahead log too: the connections open already write there, not to the file.
    refused = await _chattr("+i", database_files)
    if refused:
        pytest.skip(f"chattr +i needs root (CAP_LINUX_IMMUTABLE): {refused}")
    during = [await _outcome(notifications, f"during-{i}") for i in range(3)]
    await _health_becomes(channel, NOT_SERVING)

    assert not await _chattr("-i", database_files)
    await _health_becomes(channel, SERVING)
    after = [await _outcome(notifications, f"after-{i}") for i in range(5)]

    assert during == ["UNAVAILABLE DATABASE_UNAVAILABLE"] * 3
    assert after == ["OK"] * 5


@pytest.fixture
async def read_only_at_start(database_files: list[Path]) -> list[Path]:
    """The database file made read-only before the server opens its connections."""
    refused = await _chattr("+i", database_files[:1])  # no write-ahead log yet
    if refused:
        pytest.skip(f"chattr +i needs root (CAP_LINUX_IMMUTABLE): {refused}")
    return database_files


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_server_started_on_a_read_only_database_serves_once_it_is_writable(
    read_only_at_start: list[Path], server: Application
) -> None:
    """Every connection the server opened while the file was read-only is reopened once it
    failed: the server serves once the file is writable, with no restart."""
    async with channel_with_key(server.port, None) as anonymous:
        await _health_becomes(anonymous, NOT_SERVING)
        assert not await _chattr("-i", read_only_at_start)
        await _health_becomes(anonymous, SERVING)

    # Keys, projects, passes (SQLAlchemy's connection) and a Send (the direct one).
    _, key = await server.keys.create_key("acme", "tests", ["all"], create_project=True)
    async with channel_with_key(server.port, key) as channel:
        world = World(passes_pb2_grpc.PassServiceStub(channel))
        await world.apple_template("loyalty")
        await world.pass_("p0", "loyalty")
        notifications = notifications_pb2_grpc.NotificationServiceStub(channel)
        assert await _outcome(notifications, "first") == "OK"


async def test_a_task_cancelled_inside_a_sqlite_transaction_leaves_the_write_lock_free(
    tmp_path: Path,
) -> None:
    """A caller's deadline, or a stop at shutdown, cancels whatever task runs a query. Cancelled
    while aiosqlite's thread ran a statement, SQLAlchemy closes the connection, but the
    statement that the cancelled task's traceback still holds kept the closed connection alive
    in the middle of its transaction: SQLite's write lock stayed taken, and every other writer
    waited out its busy timeout (the scheduler's task, kept after its stop, held it for good)."""
    import sqlite3
    import threading

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'locks.db'}")
    entered, release = threading.Event(), threading.Event()

    def pause() -> int:  # runs on aiosqlite's thread, inside the transaction
        entered.set()
        release.wait(10)
        return 1

    @event.listens_for(engine.sync_engine, "connect")
    def _add_pause(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function("pause", 0, pause)

    sessions = make_sessions(engine)
    async with sessions.begin() as session:
        await session.execute(text("CREATE TABLE t (x INTEGER)"))

    async def write_then_pause() -> None:
        async with sessions.begin() as session:
            await session.execute(text("INSERT INTO t VALUES (1)"))
            await session.execute(text("SELECT pause()"))

    task = asyncio.create_task(write_then_pause())
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    try:
        other = sqlite3.connect(tmp_path / "locks.db", timeout=5, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # "database is locked" after 5 s when it leaked
        assert other.execute("SELECT count(*) FROM t").fetchone() == (0,)  # rolled back
        other.execute("ROLLBACK")
        other.close()
        async with sessions.begin() as session:  # and the pool gives a working connection
            await session.execute(text("INSERT INTO t VALUES (2)"))
    finally:
        await engine.dispose()


_A_MOMENT = text("SELECT pg_sleep(0.2)")


def _a_moment() -> Steps[None]:
    yield Query(_A_MOMENT)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_after_postgresql_ends_every_connection_one_transaction_is_unavailable_at_most(
    database_url: str,
) -> None:
    """A connection found lost means the server most likely ended the pool's others too,
    whose ends may not have arrived: each would fail one more caller (all four did). The
    first loss replaces every pooled connection opened before it."""
    async with _ClosesHeldBack(database_url).running() as proxy:
        engine = make_engine(proxy.url)
        transactions = connect(engine)
        try:
            # Four at once: four connections in the pool.
            await asyncio.gather(*(transactions.run(_a_moment) for _ in range(4)))
            ended = await _end_every_connection(database_url)
            assert ended >= 4
            await proxy.server_ended(ended)
            outcomes = []
            for _ in range(4):
                try:
                    await transactions.run(write_check)
                    outcomes.append("ok")
                except DATABASE_ERRORS:
                    outcomes.append("unavailable")
                if len(outcomes) == 1:
                    replaced_from = asyncio.get_running_loop().time()
            # Each stale connection is ended at once, not politely: SQLAlchemy's polite close
            # waits up to 2 s for an end that never comes (6 s for these three).
            replacing = asyncio.get_running_loop().time() - replaced_from
        finally:
            transactions.close()
    await engine.dispose()
    assert outcomes[1:] == ["ok"] * 3, outcomes
    assert replacing < 2.0, f"{replacing:.1f} s to replace three stale connections"
