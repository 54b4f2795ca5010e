"""The aioapns fix: aioapns 4.0's HTTP/2 client protocol with its defects for a wallet sender
mended, in one subclass (`WalletApnsProtocol`).

aioapns brings TLS, token (JWT) auth and a connection pool; its protocol acknowledges no
received DATA, matches answers by `apns-id`, keeps every request's entry and has no timeout.
Each fix has a test in tests/delivery/apple/test_apns.py that also runs against plain aioapns,
where it is expected to fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aioapns.common import NotificationRequest, NotificationResult
from aioapns.connection import APNsTLSClientProtocol
from aioapns.exceptions import ConnectionClosed
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

logger = logging.getLogger(__name__)


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
    Subclasses set APNS_SERVER, APNS_PORT and REQUEST_TIMEOUT (see `protocol_class_for`).
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
            # No answer came (timeout, cancellation, failed send): forget the exchange and give
            # up its stream, so the server stops working on it and the slot can be reused. An
            # answered exchange was forgotten when its answer completed (c).
            if not exchange.answer.done() or exchange.answer.cancelled():
                self.exchanges.pop(stream_id, None)
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
        exchange = self.exchanges.pop(stream_id, None)  # c: nothing kept of an answered push
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


def protocol_class_for(host: str, port: int, timeout: float) -> type[WalletApnsProtocol]:
    # aioapns reads where to connect from class attributes of its protocol class.
    class ConfiguredWalletApnsProtocol(WalletApnsProtocol):
        APNS_SERVER = host
        APNS_PORT = port
        REQUEST_TIMEOUT = timeout

    return ConfiguredWalletApnsProtocol
