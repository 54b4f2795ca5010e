"""ApnsGateway against the fake APNs: real HTTP/2 over TLS on loopback, no mocks.

The four `test_pitfall_*` tests pin down the fixes of aioapns 4.0 (delivery/apple/protocol.py).
Each runs twice: through passpush's gateway, and through plain aioapns (its own pool and client
protocol, pointed at the fake), where it is an expected failure (strict: it must fail, and
with the exception named), so that the suite shows each test catches its defect.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aioapns.common import NotificationRequest
from aioapns.connection import APNsKeyConnectionPool, APNsTLSClientProtocol
from aioapns.exceptions import ConnectionClosed
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import passpush.fakes.apns as fake_apns_module
from passpush.delivery.apple.gateway import ApnsConfig, ApnsGateway, PushOutcome
from passpush.fakes.apns import ANY_TOKEN, FakeApns, start_bundled_fake
from passpush.fakes.tls import make_client_certificate, make_tls_bundle

PASS_TYPE_ID = "pass.example"

MakeGateway = Callable[..., ApnsGateway]


def device_token(number: int) -> str:
    """A token shaped like Apple's (64 hex digits) whose first 8, the logged part, are unique."""
    return f"{number:08x}" + "ab" * 28


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeApns]:
    async with FakeApns(make_tls_bundle(tmp_path / "tls")) as fake:
        yield fake


@pytest.fixture
async def make_gateway(fake: FakeApns) -> AsyncIterator[MakeGateway]:
    """Gateways to the fake (no client auth unless credentials are given), closed afterwards."""
    gateways: list[ApnsGateway] = []

    def make(**config: Any) -> ApnsGateway:
        gateway = ApnsGateway(
            ApnsConfig(endpoint=fake.endpoint, ca_file=str(fake.tls.ca_file), **config)
        )
        gateways.append(gateway)
        return gateway

    yield make
    for gateway in gateways:
        await gateway.close()


class PlainAioapns:
    """aioapns 4.0 as it ships, pushing as ApnsGateway does: its key pool and its client protocol,
    told where the fake is the way aioapns reads it (class attributes of its protocol class)."""

    def __init__(self, fake: FakeApns, key_file: Path, max_connections: int = 4) -> None:
        host, _, port = fake.endpoint.rpartition(":")

        class PlainProtocolToTheFake(APNsTLSClientProtocol):
            APNS_SERVER = host
            APNS_PORT = int(port)

        context = ssl.create_default_context(cafile=str(fake.tls.ca_file))
        context.set_alpn_protocols(["h2"])
        # Named as ApnsGateway's pool, so that `connections` reads either.
        self._pool = APNsKeyConnectionPool(
            key_file.read_text(),
            key_id="KEY1234567",
            team_id="TEAM123456",
            topic=PASS_TYPE_ID,
            max_connections=max_connections,
            ssl_context=context,
        )
        self._pool.protocol_class = PlainProtocolToTheFake

    async def push(self, device_token: str, topic: str) -> PushOutcome:
        # On a connection of the pool and not re-sent, as ApnsGateway pushes (the pool's own
        # send_notification re-sends on a new connection what a broken one lost).
        request = NotificationRequest(device_token, {}, apns_topic=topic)
        connection = await self._pool.acquire()
        try:
            result = await connection.send_notification(request)
        except ConnectionClosed:
            return PushOutcome(0, "ConnectionLost")
        return PushOutcome(int(result.status), result.description or "")

    async def close(self) -> None:
        self._pool.close()


PASSPUSH = "passpush"
PLAIN_AIOAPNS = "plain aioapns"


@pytest.fixture
async def make_client(
    request: pytest.FixtureRequest, fake: FakeApns, make_gateway: MakeGateway, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Clients of the fake for a pitfall test: passpush's gateway, or plain aioapns (which has
    no request timeout: `request_timeout` is passpush's alone)."""
    if request.param == PASSPUSH:
        yield make_gateway
        return
    key_file = tmp_path / "AuthKey_KEY1234567.p8"
    write_p8_key(key_file)
    clients: list[PlainAioapns] = []

    def make(max_connections: int = 4, request_timeout: float | None = None) -> PlainAioapns:
        clients.append(PlainAioapns(fake, key_file, max_connections))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


def on_passpush_and_plain_aioapns(defect: str, raises: type[BaseException]) -> pytest.MarkDecorator:
    """Runs a pitfall test through passpush's gateway and through plain aioapns, where it must
    fail with `raises` because of `defect`."""
    plain = pytest.mark.xfail(strict=True, raises=raises, reason=f"aioapns 4.0 {defect}")
    return pytest.mark.parametrize(
        "make_client", [PASSPUSH, pytest.param(PLAIN_AIOAPNS, marks=plain)], indirect=True
    )


def connections(client: ApnsGateway | PlainAioapns) -> list[Any]:
    """The client's open aioapns connections (client protocol instances)."""
    assert client._pool is not None, "the client has not pushed yet"
    return list(client._pool.connections)


def per_request_state(connection: Any) -> dict[str, int]:
    """The containers a connection holds that are not empty, by attribute name, with their sizes.

    Whatever a protocol calls its per-request bookkeeping (aioapns: requests, request_streams,
    request_statuses; WalletApnsProtocol: exchanges), it is a container on the connection: this
    measures either protocol, and any bookkeeping added later under a new name.
    """
    return {
        name: len(value)
        for name, value in vars(connection).items()
        if isinstance(value, dict | list | set | deque) and value
    }


async def test_push_is_delivered_with_topic_and_empty_json_payload(
    fake: FakeApns, make_gateway: MakeGateway
) -> None:
    outcome = await make_gateway().push(device_token(1), PASS_TYPE_ID)

    assert outcome == PushOutcome(200, "")
    assert outcome.delivered
    [push] = fake.received
    assert push.device_token == device_token(1)
    assert push.topic == PASS_TYPE_ID
    assert push.payload == b"{}"
    assert push.headers[":method"] == "POST"
    assert push.headers[":path"] == f"/3/device/{device_token(1)}"
    assert "apns-push-type" not in push.headers
    assert push.apns_id == push.headers["apns-id"]
    assert push.authorization is None
    assert push.client_cert_uid is None


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, "BadDeviceToken"),
        (400, "DeviceTokenNotForTopic"),
        (403, "InvalidProviderToken"),
        (410, "Unregistered"),
        (413, "PayloadTooLarge"),
        (429, "TooManyRequests"),
        (500, "InternalServerError"),
        (503, "ServiceUnavailable"),
    ],
)
async def test_error_answers_are_returned_as_they_are(
    fake: FakeApns, make_gateway: MakeGateway, status: int, reason: str
) -> None:
    fake.respond(device_token(7), status, reason)

    outcome = await make_gateway().push(device_token(7), PASS_TYPE_ID)

    assert outcome == PushOutcome(status, reason)
    assert not outcome.delivered
    assert fake.tokens() == [device_token(7)]  # recorded whatever the answer


async def test_a_programmed_answer_can_be_limited_to_the_next_pushes(
    fake: FakeApns, make_gateway: MakeGateway
) -> None:
    fake.respond(device_token(3), 429, "TooManyRequests", times=2)
    gateway = make_gateway()

    outcomes = [await gateway.push(device_token(3), PASS_TYPE_ID) for _ in range(3)]

    assert outcomes == [PushOutcome(429, "TooManyRequests")] * 2 + [PushOutcome(200, "")]


async def test_the_fake_answers_missing_topic_like_apple(
    fake: FakeApns, make_gateway: MakeGateway
) -> None:
    outcome = await make_gateway().push(device_token(1), "")

    assert outcome == PushOutcome(400, "MissingTopic")


async def test_certificate_auth_presents_the_pass_type_id_certificate(
    fake: FakeApns, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    cert_file = make_client_certificate(fake.tls, tmp_path / "client", PASS_TYPE_ID)

    outcome = await make_gateway(cert_file=str(cert_file)).push(device_token(1), PASS_TYPE_ID)

    assert outcome == PushOutcome(200, "")
    [push] = fake.received
    assert push.client_cert_uid == PASS_TYPE_ID
    assert push.authorization is None


def write_p8_key(key_file: Path) -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key written as an APNs .p8 file."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return key


async def test_token_auth_sends_a_jwt_signed_with_the_p8_key(
    fake: FakeApns, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    key_file = tmp_path / "AuthKey_KEY1234567.p8"
    key = write_p8_key(key_file)
    gateway = make_gateway(key_file=str(key_file), key_id="KEY1234567", team_id="TEAM123456")

    outcome = await gateway.push(device_token(1), PASS_TYPE_ID)

    assert outcome == PushOutcome(200, "")
    [push] = fake.received
    assert push.authorization is not None
    scheme, token = push.authorization.split(" ")
    assert scheme == "bearer"
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "KEY1234567", "typ": "JWT"}
    claims = jwt.decode(token, key.public_key(), algorithms=["ES256"])
    assert claims["iss"] == "TEAM123456"
    assert abs(claims["iat"] - time.time()) < 60
    assert push.client_cert_uid is None


async def test_500_concurrent_pushes_complete(fake: FakeApns, make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    tokens = [device_token(number) for number in range(500)]

    async with asyncio.timeout(20):
        outcomes = await asyncio.gather(*(gateway.push(token, PASS_TYPE_ID) for token in tokens))

    assert outcomes == [PushOutcome(200, "")] * 500
    assert sorted(fake.tokens()) == sorted(tokens)
    assert {push.payload for push in fake.received} == {b"{}"}


async def test_only_the_headers_that_repeat_are_indexed_in_hpack(
    fake: FakeApns, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    key_file = tmp_path / "AuthKey.p8"
    write_p8_key(key_file)
    gateway = make_gateway(key_file=str(key_file), key_id="K", team_id="T", max_connections=1)

    for number in range(50):
        assert await gateway.push(device_token(number), PASS_TYPE_ID) == PushOutcome(200, "")

    # Each push's path (its token) and apns-id would only push the JWT out of the table.
    [connection] = connections(gateway)
    indexed = [name for name, _ in connection.conn.encoder.header_table.dynamic_entries]
    assert sorted(indexed) == [b"apns-topic", b"authorization", b"host"]


async def test_pushes_spread_over_connections_opened_as_the_load_grows(
    fake: FakeApns, make_gateway: MakeGateway
) -> None:
    gateway = make_gateway(max_connections=4)
    assert await gateway.push(device_token(0), PASS_TYPE_ID) == PushOutcome(200, "")
    assert len(connections(gateway)) == 1  # no connection opened ahead of need

    tokens = [device_token(number) for number in range(1, 401)]
    for token in tokens:
        fake.hang(token)  # all in flight at once
    pushes = [asyncio.create_task(gateway.push(token, PASS_TYPE_ID)) for token in tokens]
    await fake.wait_for(1 + len(tokens))

    in_flight = sorted(len(connection.exchanges) for connection in connections(gateway))
    assert in_flight == [100, 100, 100, 100]
    await gateway.close()
    assert {(await push).reason for push in pushes} == {"ConnectionLost"}


async def test_when_no_other_connection_opens_pushes_go_on_over_the_open_one(
    fake: FakeApns, make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = make_gateway(max_connections=2)
    assert await gateway.push(device_token(0), PASS_TYPE_ID) == PushOutcome(200, "")
    assert fake._server is not None
    fake._server.close()  # takes no new connection; the open one goes on

    tokens = [device_token(number) for number in range(1, 201)]
    # A guard against a hang, not a speed bar: 200 pushes through the in-process fake took
    # over 5 s in a loaded CI run.
    async with asyncio.timeout(60):
        outcomes = await asyncio.gather(*(gateway.push(token, PASS_TYPE_ID) for token in tokens))

    assert outcomes == [PushOutcome(200, "")] * 200
    assert len(connections(gateway)) == 1
    # Tried once, not again for every push while the others carry many.
    assert caplog.text.count("could not open another APNs connection") == 1


async def test_plain_aioapns_pushes_to_the_fake(fake: FakeApns, tmp_path: Path) -> None:
    """The plain aioapns client of the pitfall tests works: there, they fail by the defects."""
    key_file = tmp_path / "AuthKey.p8"
    write_p8_key(key_file)
    client = PlainAioapns(fake, key_file)
    try:
        async with asyncio.timeout(5):
            delivered = await client.push(device_token(1), PASS_TYPE_ID)
            fake.respond(device_token(2), 410, "Unregistered")
            refused = await client.push(device_token(2), PASS_TYPE_ID)
    finally:
        await client.close()

    assert (delivered, refused) == (PushOutcome(200, ""), PushOutcome(410, "Unregistered"))
    assert fake.tokens() == [device_token(1), device_token(2)]


@on_passpush_and_plain_aioapns(
    "acknowledges no DATA: past a 64 KB window of error bodies the connection stalls or breaks",
    (TimeoutError, AssertionError),
)
async def test_pitfall_a_error_bodies_do_not_freeze_the_connection(
    fake: FakeApns, make_client: Callable[..., Any]
) -> None:
    # 2,000 error bodies are ~100 KB, past the 64 KB window a client must hand back.
    fake.respond(ANY_TOKEN, 410, "Unregistered")
    client = make_client(max_connections=1)
    tokens = [device_token(number) for number in range(2000)]

    # A frozen connection fails either way: by this bound, or as pushes lost when aioapns'
    # idle close (10 s) ends it. The bound only keeps a loaded machine from failing the fix.
    async with asyncio.timeout(30):
        outcomes = await asyncio.gather(*(client.push(token, PASS_TYPE_ID) for token in tokens))

    assert outcomes == [PushOutcome(410, "Unregistered")] * 2000
    assert len(connections(client)) == 1


@on_passpush_and_plain_aioapns(
    "matches answers by apns-id: none is matched", (TimeoutError, AssertionError)
)
async def test_pitfall_b_answers_are_matched_by_stream_not_by_apns_id(
    fake: FakeApns, make_client: Callable[..., Any]
) -> None:
    fake.echo_apns_id = False  # every answer carries an apns-id the client never sent
    tokens = [device_token(number) for number in range(200)]
    expected = {}
    for number, token in enumerate(tokens):
        if number % 3 == 0:
            fake.respond(token, 400, "BadDeviceToken")
            expected[token] = PushOutcome(400, "BadDeviceToken")
        else:
            expected[token] = PushOutcome(200, "")
    client = make_client()

    async with asyncio.timeout(5):
        outcomes = await asyncio.gather(*(client.push(token, PASS_TYPE_ID) for token in tokens))

    assert dict(zip(tokens, outcomes, strict=True)) == expected


@on_passpush_and_plain_aioapns("keeps an entry per push answered", AssertionError)
async def test_pitfall_c_answered_pushes_leave_no_bookkeeping(
    fake: FakeApns, make_client: Callable[..., Any]
) -> None:
    tokens = [device_token(number) for number in range(300)]
    for token in tokens[::3]:
        fake.respond(token, 410, "Unregistered")
    for token in tokens[1::3]:
        fake.respond(token, 400, "BadDeviceToken")
    client = make_client(max_connections=1)

    async with asyncio.timeout(5):
        outcomes = await asyncio.gather(*(client.push(token, PASS_TYPE_ID) for token in tokens))

    assert {outcome.status for outcome in outcomes} == {200, 400, 410}
    [connection] = connections(client)
    assert per_request_state(connection) == {}  # nothing kept of 300 pushes answered


@on_passpush_and_plain_aioapns("has no request timeout: a push waits for ever", TimeoutError)
async def test_pitfall_d_an_unanswered_push_times_out_and_frees_its_stream(
    fake: FakeApns, make_client: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    hung_token = device_token(0xDEAD)
    fake.hang(hung_token)
    client = make_client(max_connections=1, request_timeout=0.5)
    caplog.set_level(logging.DEBUG)

    started = time.monotonic()
    async with asyncio.timeout(3):
        hung, answered = await asyncio.gather(
            client.push(hung_token, PASS_TYPE_ID), client.push(device_token(1), PASS_TYPE_ID)
        )
    elapsed = time.monotonic() - started

    assert hung == PushOutcome(0, "Timeout")
    assert answered == PushOutcome(200, "")
    assert 0.5 <= elapsed < 2
    [connection] = connections(client)
    assert per_request_state(connection) == {}
    assert connection.free_channels._value == connection.free_channels.bound  # slot given back
    # The connection keeps working after the timeout.
    assert await client.push(device_token(2), PASS_TYPE_ID) == PushOutcome(200, "")
    assert connections(client) == [connection]
    assert hung_token[:8] in caplog.text
    assert hung_token not in caplog.text  # never a full device token in logs


async def test_a_lost_connection_ends_pushes_in_flight_as_connection_lost(
    fake: FakeApns, make_gateway: MakeGateway
) -> None:
    fake.hang(device_token(1))
    gateway = make_gateway()
    push = asyncio.create_task(gateway.push(device_token(1), PASS_TYPE_ID))
    await fake.wait_for(1)

    await fake.stop()

    async with asyncio.timeout(5):
        assert await push == PushOutcome(0, "ConnectionLost")


async def test_an_unreachable_endpoint_is_connection_lost(tmp_path: Path) -> None:
    bundle = make_tls_bundle(tmp_path)
    async with FakeApns(bundle) as fake:
        endpoint = fake.endpoint  # a port that was just freed
    gateway = ApnsGateway(ApnsConfig(endpoint=endpoint, ca_file=str(bundle.ca_file)))
    try:
        assert await gateway.push(device_token(1), PASS_TYPE_ID) == PushOutcome(0, "ConnectionLost")
    finally:
        await gateway.close()


async def test_an_endpoint_that_never_answers_the_handshake_is_connection_lost_in_time(
    tmp_path: Path,
) -> None:
    """An APNs that takes connections and then says nothing (a network black hole) costs a
    push its request timeout, not the minute of asyncio's TLS handshake timeout."""
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    bundle = make_tls_bundle(tmp_path)
    gateway = ApnsGateway(
        ApnsConfig(endpoint=f"127.0.0.1:{port}", ca_file=str(bundle.ca_file), request_timeout=0.5)
    )
    try:
        async with asyncio.timeout(30):  # half the handshake timeout, 60 times the request's
            outcome = await gateway.push(device_token(1), PASS_TYPE_ID)
        assert outcome == PushOutcome(0, "ConnectionLost")
    finally:
        await gateway.close()
        silent.close()


async def test_the_bundled_fake_takes_pushes_without_credentials(tmp_path: Path) -> None:
    fake = await start_bundled_fake(tmp_path / "fake-apns")
    gateway = ApnsGateway(ApnsConfig(endpoint=fake.endpoint, ca_file=str(fake.tls.ca_file)))
    try:
        assert await gateway.push(device_token(1), PASS_TYPE_ID) == PushOutcome(200, "")
        assert fake.tokens() == [device_token(1)]
    finally:
        await gateway.close()
        await fake.stop()


async def test_the_fake_runs_standalone_and_logs_short_tokens(tmp_path: Path) -> None:
    source_root = Path(fake_apns_module.__file__).parents[2]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "passpush.fakes.apns",
        "--port",
        "0",
        "--dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(source_root), *sys.path])},
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(20):
            banner = (await process.stdout.readline()).decode()
        assert banner.startswith("fake APNs listening on 127.0.0.1:")
        assert banner.rstrip().endswith(f"CA at {tmp_path / 'ca.pem'}")
        endpoint = banner.split()[4].rstrip(",")
        gateway = ApnsGateway(ApnsConfig(endpoint=endpoint, ca_file=str(tmp_path / "ca.pem")))
        try:
            assert await gateway.push(device_token(0xBEEF), PASS_TYPE_ID) == PushOutcome(200, "")
        finally:
            await gateway.close()
    finally:
        process.terminate()
        _, log = await process.communicate()
    assert device_token(0xBEEF)[:8] in log.decode()
    assert device_token(0xBEEF) not in log.decode()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ApnsConfig(), "needs credentials"),
        (ApnsConfig(endpoint="api.sandbox.push.apple.com:443"), "needs credentials"),
        (ApnsConfig(key_file="AuthKey.p8", key_id="KEY1234567"), "together"),
        (
            ApnsConfig(cert_file="c.pem", key_file="k.p8", key_id="K", team_id="T"),
            "not both",
        ),
        (ApnsConfig(endpoint="localhost"), "host:port"),
        (ApnsConfig(endpoint="localhost:2197", max_connections=0), "max_connections"),
    ],
)
def test_a_bad_configuration_fails_fast(config: ApnsConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ApnsGateway(config)


def test_a_key_that_cannot_sign_fails_fast(tmp_path: Path) -> None:
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_text("not a key")

    with pytest.raises(ValueError, match="cannot sign"):
        ApnsGateway(ApnsConfig(key_file=str(key_file), key_id="K", team_id="T"))
