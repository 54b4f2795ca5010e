"""The APNs gateway: sends Apple Wallet pass pushes through aioapns.

aioapns 4.0 brings the connection pool, TLS and token (JWT) auth; its client protocol has
defects that bite a wallet sender, fixed in `WalletApnsProtocol` below. The gateway returns
APNs' answer as it is: retrying 429/5xx and lost connections is the delivery worker's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aioapns.common import NotificationRequest, NotificationResult
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsBaseConnectionPool,
    APNsTLSClientProtocol,
    AuthorizationHeaderProvider,
    JWTAuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed
from aioapns.exceptions import ConnectionError as ApnsConnectError
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError
from hpack import Encoder, NeverIndexedHeaderTuple
from hpack.struct import HeaderWeaklyTyped

from passpush.metrics import APNS_SECONDS

logger = logging.getLogger(__name__)

TIMEOUT = "Timeout"
CONNECTION_LOST = "ConnectionLost"

# Pushes in flight on every connection before the pool opens another (up to max_connections):
# h2's cost per push grows with the streams open on its connection.
SPREAD_ABOVE_IN_FLIGHT = 50
RETRY_SPREADING_AFTER = 10.0  # seconds, after failing to open another connection


@dataclass(frozen=True)
class ApnsConfig:
    """Where APNs is and how to authenticate.

    Neither credential means no client auth, which only a non-Apple endpoint (the bundled fake)
    accepts; against Apple's hosts the gateway refuses it at once.
    """

    endpoint: str = "api.push.apple.com:443"  # host:port ([v6]:port)
    ca_file: str | None = None  # CA bundle to trust instead of the system's (tests, fakes)
    cert_file: str | None = None  # PEM certificate + key: Pass Type ID certificate auth
    key_file: str | None = None  # .p8 key: token auth, with key_id and team_id
    key_id: str | None = None
    team_id: str | None = None
    max_connections: int = 4
    request_timeout: float = 10.0  # seconds, per push, from sending to APNs' answer


@dataclass(frozen=True)
class PushOutcome:
    """APNs' answer to one push."""

    status: int  # HTTP status from APNs; 0 when no answer came (connection lost, timeout)
    reason: str  # APNs' reason ("BadDeviceToken", ...); "" on 200; TIMEOUT / CONNECTION_LOST

    @property
    def delivered(self) -> bool:
        return self.status == 200


class ApnsRequestTimeout(Exception):
    """APNs did not answer a push within the request timeout."""


@dataclass
class _Exchange:
    """One push in flight on one HTTP/2 stream."""

    notification_id: str
    answer: asyncio.Future[NotificationResult]
    status: str = ""
    body: bytearray = field(default_factory=bytearray)


class WalletApnsProtocol(APNsTLSClientProtocol):
    """aioapns' client protocol with the 4.0 defects that bite a wallet sender fixed.

    a. Received DATA is acknowledged, so error bodies do not use up the flow-control window
       (~1,285 `410 Unregistered` answers froze a plain aioapns connection).
    b. Answers are matched by stream, not by the `apns-id` header the server sends back.
    c. An exchange is forgotten once answered (plain aioapns kept every `request_streams` entry).
    d. Each push has a timeout; a push that times out resets its stream and frees its slot.
    Also: an answer body is read whole across DATA frames (plain aioapns parses each frame as
    JSON, and a body split at a flow-control window edge crashed the connection), and a
    connection is not closed as idle while answers are due.
    Subclasses set APNS_SERVER, APNS_PORT and REQUEST_TIMEOUT (see `_protocol_class_for`).
    """

    REQUEST_TIMEOUT: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Our only per-request bookkeeping; aioapns' requests / request_streams /
        # request_statuses stay empty.
        self.exchanges: dict[int, _Exchange] = {}
        self.closed: asyncio.Future[None] = self.loop.create_future()  # done on connection_lost
        # We build every outbound header ourselves and read only :status and the body of an
        # answer: skip h2's per-header checks both ways, a good part of its cost per push.
        self.conn = H2Connection(
            config=H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
            )
        )
        self.conn.encoder = _EncoderWithoutHuffman()  # before any header: HPACK keeps state
        self._flush_scheduled = False

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        try:
            stream_id = await self.free_channels.acquire()
        except ProtocolError as error:  # stream ids used up: this connection is done
            self.close()
            raise ConnectionClosed("no stream id left on this connection") from error
        exchange = _Exchange(request.notification_id, self.loop.create_future())
        self.exchanges[stream_id] = exchange
        try:
            # No await between taking the stream id and sending: HTTP/2 needs ids in order.
            self.conn.send_headers(stream_id, self._request_headers(request))
            payload = json.dumps(request.message, ensure_ascii=False).encode()
            self.conn.send_data(stream_id, payload, end_stream=True)
            self._flush_soon()
            async with asyncio.timeout(self.REQUEST_TIMEOUT):
                return await exchange.answer
        except TimeoutError:
            raise ApnsRequestTimeout(f"no answer within {self.REQUEST_TIMEOUT} s") from None
        finally:
            # Still there: no answer came (timeout, cancellation, failed send). Give up the
            # stream so the server stops working on it and the slot can be reused.
            if self.exchanges.pop(stream_id, None) is not None:
                self._abandon_stream(stream_id)

    def _flush_soon(self) -> None:
        """One socket write per loop turn for all pushes queued in it, not one per push."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_queued)

    def _flush_queued(self) -> None:
        self._flush_scheduled = False
        if self.transport is not None and not self.transport.is_closing():
            self.flush()

    def _request_headers(self, request: NotificationRequest) -> list[HeaderWeaklyTyped]:
        # HPACK: the headers that differ on every push are never indexed, so the encoder's
        # table keeps the ones that repeat (host, topic, the JWT) and sends each as one byte.
        headers: list[HeaderWeaklyTyped] = [
            (":method", "POST"),
            (":scheme", "https"),
            NeverIndexedHeaderTuple(":path", f"/3/device/{request.device_token}"),
            ("host", self.APNS_SERVER),
            NeverIndexedHeaderTuple("apns-id", request.notification_id),
            ("apns-topic", request.apns_topic or self.apns_topic),
        ]
        if request.priority is not None:
            headers.append(("apns-priority", str(request.priority)))
        if request.push_type is not None:
            headers.append(("apns-push-type", request.push_type.value))
        if self.auth_provider is not None:
            headers.append(("authorization", self.auth_provider.get_header()))
        return headers

    def _abandon_stream(self, stream_id: int) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # connection_lost fails what is left
        with contextlib.suppress(ProtocolError):  # the stream may never have opened
            self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            self.flush()
        self.free_channels.release()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            logger.warning("closing an APNs connection after an HTTP/2 protocol error")
            self.close()
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                exchange = self.exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.status = dict(event.headers).get(b":status", b"").decode()
            elif isinstance(event, DataReceived):
                exchange = self.exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.body += event.data
                # Hand the window back, or the server stops sending after 64 KB of bodies.
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                self._on_answer_complete(event.stream_id)
            elif isinstance(event, StreamReset):
                self._on_stream_reset(event.stream_id)
            elif isinstance(event, RemoteSettingsChanged):
                self.on_remote_settings_changed(event.changed_settings)  # type: ignore[arg-type]
            elif isinstance(event, ConnectionTerminated):
                self.on_connection_terminated(event)
        if self.transport is not None and not self.transport.is_closing():
            self.flush()

    def _on_answer_complete(self, stream_id: int) -> None:
        exchange = self.exchanges.pop(stream_id, None)
        if exchange is None:
            return
        self.free_channels.release()
        reason, timestamp = _error_body(exchange.body)
        result = NotificationResult(exchange.notification_id, exchange.status, reason, timestamp)
        if not exchange.answer.done():
            exchange.answer.set_result(result)

    def _on_stream_reset(self, stream_id: int) -> None:
        exchange = self.exchanges.pop(stream_id, None)
        if exchange is None:
            return
        self.free_channels.release()
        if not exchange.answer.done():
            exchange.answer.set_exception(ConnectionClosed(f"APNs reset stream {stream_id}"))

    def refresh_inactivity_timer(self) -> None:
        # aioapns closes a connection 10 s after its last write even while answers are due,
        # which would turn a slow answer into a lost connection before its own timeout.
        if self.inactivity_timer:
            self.inactivity_timer.cancel()
        self.inactivity_timer = self.loop.call_later(self.INACTIVITY_TIME, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if self.exchanges:
            self.refresh_inactivity_timer()
        else:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)
        lost = ConnectionClosed(str(exc) if exc else "connection closed")
        exchanges, self.exchanges = self.exchanges, {}
        for exchange in exchanges.values():
            if not exchange.answer.done():
                exchange.answer.set_exception(lost)


class _EncoderWithoutHuffman(Encoder):
    """HPACK that sends literals as they are: Huffman-coding each push's token and apns-id in
    pure Python costs a tenth of a push's CPU, to save some 30 bytes."""

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        return super().add(to_add, sensitive, huffman=False)


def _error_body(body: bytearray) -> tuple[str | None, int | None]:
    """APNs' reason and timestamp from an answer body ({"reason": ..., "timestamp": ...})."""
    if not body:
        return None, None
    try:
        error = json.loads(body)
    except ValueError:
        logger.warning("APNs answered a body that is not JSON (%d bytes)", len(body))
        return None, None
    if not isinstance(error, dict):
        return None, None
    return error.get("reason"), error.get("timestamp")


def _protocol_class_for(host: str, port: int, timeout: float) -> type[WalletApnsProtocol]:
    # aioapns reads where to connect from class attributes of its protocol class.
    class ConfiguredWalletApnsProtocol(WalletApnsProtocol):
        APNS_SERVER = host
        APNS_PORT = port
        REQUEST_TIMEOUT = timeout

    return ConfiguredWalletApnsProtocol


class _ConnectionPool(APNsBaseConnectionPool):
    """aioapns' pool, connecting with our protocol class, TLS context and (optional) auth header.

    One pool serves all three modes: certificate auth lives in the TLS context, token auth in
    the header provider, and with neither (the bundled fake) connections carry no credential.
    aioapns' own pools cannot express the last one: each insists on a certificate or a key.
    """

    def __init__(
        self,
        protocol_class: type[WalletApnsProtocol],
        ssl_context: ssl.SSLContext,
        auth_provider: AuthorizationHeaderProvider | None,
        max_connections: int,
    ) -> None:
        super().__init__(max_connections=max_connections)
        self.protocol_class = protocol_class
        self._connect_timeout = protocol_class.REQUEST_TIMEOUT
        self.ssl_context = ssl_context
        self._auth_provider = auth_provider
        self._spread_again_at = 0.0  # loop time; later after opening a connection failed

    async def acquire(self) -> APNsBaseClientProtocol:
        """The connection with the fewest pushes in flight; first another, while all carry many.

        aioapns' own acquire fills one connection up to 1,000 streams before it opens the next,
        and once all are full polls every 10 ms, logging a warning each time. Here a push that
        finds every stream taken waits for one of its connection's (send_notification).
        """
        if self._wants_another_connection():
            async with self._lock:  # one connection opened at a time
                if self._wants_another_connection():
                    await self._open_another()
        return min(self._open_connections(), key=lambda c: (c.is_busy, len(c.exchanges)))

    def _open_connections(self) -> list[WalletApnsProtocol]:
        return [c for c in self.connections if isinstance(c, WalletApnsProtocol)]

    def _wants_another_connection(self) -> bool:
        connections = self._open_connections()
        if connections and self.loop.time() < self._spread_again_at:
            return False
        return len(connections) < self.max_connections and all(
            len(c.exchanges) >= SPREAD_ABOVE_IN_FLIGHT for c in connections
        )

    async def _open_another(self) -> None:
        try:
            connection = await self.create_connection()
        except Exception as error:
            if not self.connections:
                logger.error("could not connect to APNs: %r", error)
                raise ApnsConnectError() from error
            logger.warning("could not open another APNs connection, using the open ones: %r", error)
            # Not on every push meanwhile: they would queue behind failing connects.
            self._spread_again_at = self.loop.time() + RETRY_SPREADING_AFTER
            return
        self.connections.append(connection)
        logger.info("APNs connection opened (%d open)", len(self.connections))

    async def create_connection(self) -> APNsBaseClientProtocol:
        protocol_factory = partial(
            self.protocol_class,
            "",  # default topic: unused, every push names its own
            self.loop,
            self.discard_connection,  # type: ignore[arg-type]  # aioapns types it NoReturn
            self._auth_provider,
        )
        # Bounded like a push: an APNs that is unreachable without refusing (packets dropped,
        # a handshake never answered) would hold every push behind the pool's lock for the
        # OS's connect timeout or asyncio's minute of TLS handshake.
        async with asyncio.timeout(self._connect_timeout):
            _, protocol = await self.loop.create_connection(
                protocol_factory,
                host=self.protocol_class.APNS_SERVER,
                port=self.protocol_class.APNS_PORT,
                ssl=self.ssl_context,
            )
        return protocol


class ApnsGateway:
    """Sends Wallet pass pushes to APNs and reports each answer as a PushOutcome."""

    def __init__(self, config: ApnsConfig) -> None:
        if config.max_connections < 1:
            raise ValueError("APNs max_connections must be at least 1")
        if config.request_timeout <= 0:
            raise ValueError("APNs request_timeout must be positive")
        host, port = _parse_endpoint(config.endpoint)
        auth_provider = _token_auth(config)
        if config.cert_file is None and auth_provider is None and _is_apple(host):
            raise ValueError(
                f"APNs at {config.endpoint} needs credentials: a Pass Type ID certificate "
                "(cert_file) or a .p8 key (key_file, key_id, team_id)"
            )
        self._config = config
        self._protocol_class = _protocol_class_for(host, port, config.request_timeout)
        self._ssl_context = _ssl_context(config)
        self._auth_provider = auth_provider
        self._pool: _ConnectionPool | None = None  # made on first push, inside the running loop
        self._closed = False

    async def push(self, device_token: str, topic: str) -> PushOutcome:
        """Push the Wallet update to one device; APNs' answer, or status 0 when none came."""
        # A Wallet pass push is an empty JSON dictionary; the device then asks the PassKit web
        # service what changed. No apns-push-type or priority: Apple's defaults suit Wallet.
        request = NotificationRequest(device_token, {}, apns_topic=topic)
        short_token = device_token[:8]
        started = time.perf_counter()
        try:
            # Not pool.send_notification: it re-sends on a lost connection (up to 5 times,
            # sleeping 1 s); retrying is the delivery worker's call, made on the outcome.
            connection = await self._connection_pool().acquire()
            result = await connection.send_notification(request)
        except ApnsRequestTimeout:
            logger.warning(
                "APNs push to %s… got no answer within %s s",
                short_token,
                self._protocol_class.REQUEST_TIMEOUT,
            )
            return PushOutcome(0, TIMEOUT)
        except (ConnectionClosed, ApnsConnectError, ProtocolError) as error:
            logger.warning("APNs push to %s… got no answer: %r", short_token, error)
            return PushOutcome(0, CONNECTION_LOST)
        finally:
            APNS_SECONDS.observe(time.perf_counter() - started)
        return PushOutcome(int(result.status or 0), result.description or "")

    async def close(self) -> None:
        """Close the connections; pushes still in flight end as CONNECTION_LOST."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        closing = [c.closed for c in pool.connections if isinstance(c, WalletApnsProtocol)]
        pool.close()
        if closing:  # let the TLS shutdowns finish so no transport outlives the gateway
            await asyncio.wait(closing, timeout=1.0)

    def _connection_pool(self) -> _ConnectionPool:
        if self._closed:
            raise RuntimeError("the APNs gateway is closed")
        if self._pool is None:
            self._pool = _ConnectionPool(
                self._protocol_class,
                self._ssl_context,
                self._auth_provider,
                self._config.max_connections,
            )
        return self._pool


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, separator, port = endpoint.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ValueError(f"APNs endpoint must be host:port, got {endpoint!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _is_apple(host: str) -> bool:
    return host == "push.apple.com" or host.endswith(".push.apple.com")


def _ssl_context(config: ApnsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.ca_file)
    context.set_alpn_protocols(["h2"])
    if config.cert_file is not None:
        context.load_cert_chain(config.cert_file)  # certificate auth happens in the handshake
    return context


def _token_auth(config: ApnsConfig) -> AuthorizationHeaderProvider | None:
    """A JWT header provider for token auth, or None when no key is configured."""
    token_settings = (config.key_file, config.key_id, config.team_id)
    if all(setting is None for setting in token_settings):
        return None
    if any(setting is None for setting in token_settings):
        raise ValueError("APNs token auth needs key_file, key_id and team_id together")
    if config.cert_file is not None:
        raise ValueError("configure APNs certificate auth or token auth, not both")
    assert config.key_file is not None
    with open(config.key_file, encoding="ascii") as key_file:
        key = key_file.read()
    # One provider for all connections: APNs refuses tokens refreshed too often.
    provider: AuthorizationHeaderProvider = JWTAuthorizationHeaderProvider(
        key, config.key_id, config.team_id
    )
    try:
        provider.get_header()  # a bad key fails here, not on the first push
    except Exception as error:
        raise ValueError(f"APNs key {config.key_file} cannot sign tokens: {error}") from error
    return provider
