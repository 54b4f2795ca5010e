"""Shared fixtures: real databases (SQLite and PostgreSQL), a real fake APNs, a real server."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from passpush.app import Application
from passpush.delivery.apple.gateway import ApnsConfig, ApnsGateway
from passpush.delivery.worker import WorkerSettings
from passpush.fakes.apns import FakeApns
from passpush.fakes.tls import TlsBundle, make_tls_bundle
from passpush.store import migrate
from passpush.store.db import asyncpg_dsn, make_engine, make_sessions
from passpush.store.models import Base
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from apple_passes import AppleCerts, make_signing
from support import TEARDOWN_SECONDS, channel_with_key, within

# The PostgreSQL server to create throwaway test databases on (these machines run one).
POSTGRES_ADMIN_URL = os.environ.get(
    "PASSPUSH_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies: migrating once is faster."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated, dropped at the end."""
    name = f"passpush_test_{uuid.uuid4().hex[:12]}"
    admin = asyncpg_dsn(POSTGRES_ADMIN_URL)

    async def admin_sql(sql: str) -> None:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    # A commit need not wait for the disk: the tests kill passpush, never PostgreSQL, and
    # each commit's flush cost a write-heavy fixture (80 RPCs) two to three seconds.
    asyncio.run(admin_sql(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database: each test that uses it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "passpush.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")

    async def empty() -> None:
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await connection.execute(EMPTY_POSTGRES)
        finally:
            await connection.close()

    asyncio.run(empty())
    return url


# DELETE, not TRUNCATE: a TRUNCATE of the 19 tables makes new files for each table and index
# and took 0.24 s per test against 0.3 ms for DELETE of what one test leaves. Children first
# (foreign keys); the sequences restart as TRUNCATE ... RESTART IDENTITY did.
EMPTY_POSTGRES = "; ".join(
    [
        "BEGIN",
        *(f'DELETE FROM "{table.name}"' for table in reversed(Base.metadata.sorted_tables)),
        "SELECT setval(c.oid, 1, false) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'S' AND n.nspname = current_schema()",
        "COMMIT",
    ]
)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url)
    yield engine
    await within(TEARDOWN_SECONDS, "engine.dispose()", engine.dispose())


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessions(engine)


@pytest.fixture(scope="session")
def apple_certs() -> AppleCerts:
    """Pass signing material for TOPIC under a test root CA, made once per session."""
    return make_signing()


@pytest.fixture
def tls(tmp_path: Path) -> TlsBundle:
    return make_tls_bundle(tmp_path / "tls")


@pytest.fixture
async def fake_apns(tls: TlsBundle) -> AsyncIterator[FakeApns]:
    async with FakeApns(tls) as fake:
        yield fake


@pytest.fixture
async def apns_gateway(fake_apns: FakeApns) -> AsyncIterator[ApnsGateway]:
    gateway = ApnsGateway(
        ApnsConfig(endpoint=fake_apns.endpoint, ca_file=str(fake_apns.tls.ca_file))
    )
    yield gateway
    await within(TEARDOWN_SECONDS, "the APNs gateway's close()", gateway.close())


@pytest.fixture
def worker_settings() -> WorkerSettings:
    return WorkerSettings(poll_interval=0.05)


@pytest.fixture
async def server(
    engine: AsyncEngine,
    apns_gateway: ApnsGateway,
    worker_settings: WorkerSettings,
) -> AsyncIterator[Application]:
    """passpush with every role in this process, serving gRPC on a free port."""
    server = Application(engine, apns_gateway, worker_settings=worker_settings)
    await server.start()
    yield server
    try:
        await within(TEARDOWN_SECONDS, "the server's stop()", server.stop(grace=1.0))
    finally:
        # After a stop() that hung, the gRPC server must still stop before the loop closes:
        # grpc.aio's clean-up at exit otherwise waits for it forever. Once stopped, a no-op.
        if server.grpc is not None:
            await server.grpc.stop(0)


PROJECT = "acme"


@pytest.fixture
async def api_key(server: Application) -> str:
    """A key with every scope for project "acme", which it creates."""
    _, plaintext = await server.keys.create_key(PROJECT, "tests", ["all"], create_project=True)
    return plaintext


@pytest.fixture
async def channel(server: Application, api_key: str) -> AsyncIterator[grpc.aio.Channel]:
    async with channel_with_key(server.port, api_key) as channel:
        yield channel


@pytest.fixture
def notifications(channel: grpc.aio.Channel) -> notifications_pb2_grpc.NotificationServiceStub:
    return notifications_pb2_grpc.NotificationServiceStub(channel)


@pytest.fixture
def passes(channel: grpc.aio.Channel) -> passes_pb2_grpc.PassServiceStub:
    return passes_pb2_grpc.PassServiceStub(channel)
