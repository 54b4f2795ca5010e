"""TLS on the server's ports: PASSPUSH_TLS_CERT and _KEY put gRPC and HTTP on TLS,
PASSPUSH_TLS_CLIENT_CA asks gRPC callers for a certificate; the CLI calls with --tls-ca.

The material is a throwaway CA made for each test (passpush.fakes.tls), with a server
certificate for localhost, 127.0.0.1 and ::1, and client certificates it issues.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from passpush.app import Application
from passpush.app.wallets import warn_if_plaintext
from passpush.cli import serve
from passpush.config import Settings
from passpush.domain.clock import utcnow
from passpush.fakes.apns import FakeApns
from passpush.fakes.tls import TlsBundle, make_client_certificate, make_tls_bundle
from passpush.http.app import HttpServer, create_app
from passpush.service.keys import KeyCore
from passpush.tls import TlsFiles, is_loopback, load_server_tls
from passpush.v1 import passes_pb2_grpc

from processes import GRPCURL, PASSPUSH, Launcher, free_port, run
from shim_auth import basic
from support import TOPIC, World, channel_with_key

SERVING = health_pb2.HealthCheckResponse.SERVING

# TLS is the transport's: it behaves alike on either database, so SQLite alone.
on_sqlite_alone = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _files(tls: TlsBundle, client_ca: bool = False) -> TlsFiles:
    return TlsFiles(
        str(tls.server_cert_file), str(tls.server_key_file), str(tls.ca_file) if client_ca else None
    )


def _client(tls: TlsBundle, certificate: Path | None = None) -> grpc.ChannelCredentials:
    """Trusts the throwaway CA; presents `certificate` (a PEM with its key) if given."""
    pem = certificate.read_bytes() if certificate else None
    return grpc.ssl_channel_credentials(tls.ca_file.read_bytes(), pem, pem)


async def _check(channel: grpc.aio.Channel) -> int:
    answer = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(answer.status)


@contextlib.asynccontextmanager
async def _tls_server(engine: AsyncEngine, files: TlsFiles) -> AsyncIterator[Application]:
    credentials = load_server_tls(files).grpc_credentials()
    server = Application(engine, None, credentials=credentials)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


@pytest.fixture
async def tls_server(engine: AsyncEngine, tls: TlsBundle) -> AsyncIterator[Application]:
    async with _tls_server(engine, _files(tls)) as server:
        yield server


@pytest.fixture
async def mtls_server(engine: AsyncEngine, tls: TlsBundle) -> AsyncIterator[Application]:
    """Callers must present a certificate of the throwaway CA."""
    async with _tls_server(engine, _files(tls, client_ca=True)) as server:
        yield server


# -- gRPC ------------------------------------------------------------------------------------


@on_sqlite_alone
async def test_a_secure_channel_trusting_the_ca_calls_and_a_plaintext_one_cannot(
    tls_server: Application, tls: TlsBundle
) -> None:
    address = f"localhost:{tls_server.port}"
    async with grpc.aio.secure_channel(address, _client(tls)) as secure:
        status = await _check(secure)
    async with grpc.aio.insecure_channel(address) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _check(plaintext)

    assert status == SERVING
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@on_sqlite_alone
async def test_with_a_client_ca_only_a_caller_with_its_certificate_gets_in(
    mtls_server: Application, tls: TlsBundle, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{mtls_server.port}"
    certificate = make_client_certificate(tls, tmp_path / "clients", "backend")
    stranger = make_client_certificate(make_tls_bundle(tmp_path / "other-ca"), tmp_path, "x")

    async with grpc.aio.secure_channel(address, _client(tls, certificate)) as admitted:
        status = await _check(admitted)
    for credentials in (_client(tls), _client(tls, stranger)):
        async with grpc.aio.secure_channel(address, credentials) as refused:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await _check(refused)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE

    assert status == SERVING


# -- HTTP ------------------------------------------------------------------------------------


@on_sqlite_alone
async def test_the_passkit_web_service_answers_over_https(
    tls_server: Application, tls: TlsBundle
) -> None:
    assert tls_server.local_target is not None  # the shim's way in: not over TLS
    http = HttpServer(
        create_app(tls_server.local_target, tls_server.passkit),
        "127.0.0.1:0",
        tls_files=(str(tls.server_cert_file), str(tls.server_key_file)),
    )
    await http.start()
    serials = f"/passkit/v1/devices/phone-1/registrations/{TOPIC}"
    try:
        verify = ssl.create_default_context(cafile=tls.ca_file)
        async with httpx.AsyncClient(verify=verify) as client:
            answer = await client.get(f"https://localhost:{http.port}{serials}")
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get(f"http://localhost:{http.port}{serials}")
    finally:
        await http.stop(grace=1.0)

    assert answer.status_code == 204  # no passes registered: answered, over HTTPS


# -- settings --------------------------------------------------------------------------------


def test_the_certificate_and_key_go_together() -> None:
    assert Settings.from_env({}).tls is None
    settings = Settings.from_env({"PASSPUSH_TLS_CERT": "/c.pem", "PASSPUSH_TLS_KEY": "/k.pem"})
    assert settings.tls == TlsFiles("/c.pem", "/k.pem")
    assert settings.passkit_url.startswith("https://")
    for alone in ("PASSPUSH_TLS_CERT", "PASSPUSH_TLS_KEY", "PASSPUSH_TLS_CLIENT_CA"):
        with pytest.raises(ValueError, match="PASSPUSH_TLS_CERT and PASSPUSH_TLS_KEY"):
            Settings.from_env({alone: "/x.pem"})


def test_a_wrong_file_is_named_with_its_setting(tls: TlsBundle, tmp_path: Path) -> None:
    other = make_tls_bundle(tmp_path / "other")
    cert, key, ca = str(tls.server_cert_file), str(tls.server_key_file), str(tls.ca_file)
    cases = {
        TlsFiles("/nowhere.pem", key): "PASSPUSH_TLS_CERT: cannot read /nowhere.pem",
        TlsFiles(key, key): "PASSPUSH_TLS_CERT: .* holds no PEM certificate",
        TlsFiles(cert, "/nowhere.pem"): "PASSPUSH_TLS_KEY: cannot read /nowhere.pem",
        TlsFiles(cert, cert): "PASSPUSH_TLS_KEY: .* holds no unencrypted PEM private key",
        TlsFiles(cert, str(other.server_key_file)): "PASSPUSH_TLS_KEY: .* is not the key of",
        TlsFiles(cert, key, "/nowhere.pem"): "PASSPUSH_TLS_CLIENT_CA: cannot read",
        TlsFiles(cert, key, key): "PASSPUSH_TLS_CLIENT_CA: .* holds no PEM certificate",
    }
    for files, message in cases.items():
        with pytest.raises(ValueError, match=message):
            load_server_tls(files)
    assert load_server_tls(TlsFiles(cert, key, ca)).client_ca == tls.ca_file.read_bytes()


def test_plaintext_on_an_address_others_reach_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    warn_if_plaintext(Settings(grpc_address="0.0.0.0:50051", http_address="127.0.0.1:8080"))
    warn_if_plaintext(Settings(http_address="[::]:8443", tls=TlsFiles("c.pem", "k.pem")))
    warn_if_plaintext(Settings())  # loopback, the default

    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "PASSPUSH_GRPC_ADDRESS is 0.0.0.0:50051"
    ]
    assert "TLS is off" in caplog.text


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1:1", "localhost:1", "[::1]:1", "127.0.0.2:1"]))
    assert not any(map(is_loopback, ["0.0.0.0:1", "[::]:1", ":1", "example.com:1", "10.0.0.1:1"]))


async def test_serve_with_an_unreadable_key_exits_naming_it(
    tls: TlsBundle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = TlsFiles(str(tls.server_cert_file), str(tmp_path / "missing-key.pem"))
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}", tls=files)

    status = await serve(settings)  # what `passpush serve` exits with

    assert status == 2
    assert "PASSPUSH_TLS_KEY: cannot read" in caplog.text
    assert not (tmp_path / "unused.db").exists()  # stopped before anything else


# -- `passpush serve` with TLS and client certificates, driven from outside -----------------


@on_sqlite_alone
async def test_serve_with_tls_and_client_certificates_end_to_end(
    database_url: str,
    sessions: async_sessionmaker[AsyncSession],
    fake_apns: FakeApns,
    tls: TlsBundle,
    tmp_path: Path,
) -> None:
    """gRPC with client certificates (grpcurl, the CLI), HTTPS on the HTTP process (the
    shim, which calls the gRPC server, and the PassKit web service)."""
    certificate = make_client_certificate(tls, tmp_path / "clients", "backend")
    http_address = f"127.0.0.1:{free_port()}"
    settings = {
        "TLS_CERT": str(tls.server_cert_file),
        "TLS_KEY": str(tls.server_key_file),
        "TLS_CLIENT_CA": str(tls.ca_file),
        "HTTP_ADDRESS": http_address,
        "HTTP_PROCESSES": "1",
    }
    _, key = await KeyCore(sessions, clock=utcnow).create_key(
        "demo", "tests", ["all"], create_project=True
    )
    cli = ("--address", "", "--key", key, "--tls-ca", str(tls.ca_file), "--pass", "p1")
    async with Launcher(database_url, fake_apns, tmp_path) as launch:
        server = await launch(credentials=_client(tls, certificate), **settings)
        cacert = ("-cacert", str(tls.ca_file))
        client_pem = ("-cert", str(certificate), "-key", str(certificate))
        listed = await run(GRPCURL, *cacert, *client_pem, server.address, "list")
        async with channel_with_key(server.port, key, _client(tls, certificate)) as channel:
            world = World(passes_pb2_grpc.PassServiceStub(channel), project_id="demo")
            await world.apple_template("t1")
            await world.pass_("p1", "t1")

        verify = ssl.create_default_context(cafile=tls.ca_file)
        async with httpx.AsyncClient(base_url=f"https://{http_address}", verify=verify) as http:
            shim = await http.post(
                "/v1/pass/p1/notify", json={"value": "Hi"}, headers={"Authorization": basic(key)}
            )
            device = await http.get(f"/passkit/v1/devices/phone-1/registrations/{TOPIC}")
            readyz = await http.get("/readyz")

        cli = ("--address", server.address, *cli[2:])
        sent = await run(PASSPUSH, "send", *cli, "--tls-cert", str(certificate), "--body", "Hi")

    assert listed.returncode == 0, listed.output
    assert "passpush.v1.NotificationService" in listed.stdout.split()
    assert shim.status_code == 200, shim.text  # the shim reached the gRPC server
    assert device.status_code == 204
    assert readyz.status_code == 200
    assert sent.returncode == 0, sent.output
    assert sent.stdout.startswith("ticket "), sent.output
