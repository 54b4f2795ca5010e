"""A fake APNs: a real HTTP/2-over-TLS server on loopback that answers like Apple.

It speaks the provider API that passpush uses (`POST /3/device/{token}` with `apns-topic`),
records every push it receives, and answers errors or never answers on demand, so tests can
drive the real APNs client over a real socket. It also fails the way Apple's service does
now and then: an outage (connections refused), a share of 429/500/503 answers and a share
of dropped connections (`faults`, `outage`), counting pushes per token so that a test sees
what reached each device and what reached it twice.

Run it standalone with `python -m passpush.fakes.apns --port 2197 --dir var/fake-apns`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from passpush.fakes import standalone
from passpush.fakes.tls import TlsBundle, make_tls_bundle

logger = logging.getLogger(__name__)

ANY_TOKEN = "*"
"""Pass to `FakeApns.respond` to program the answer for every token without its own rule."""

MAX_CONCURRENT_STREAMS = 1000  # what APNs advertises
MAX_PAYLOAD_BYTES = 4096  # APNs' limit for a regular push
# The transient errors Apple answers, as it words them; `faults` picks among them.
TRANSIENT_ERRORS = (
    (503, "ServiceUnavailable"),
    (429, "TooManyRequests"),
    (500, "InternalServerError"),
)
# A dropped connection is cut this long after its last answers at the latest, if the
# client does not acknowledge the PING that follows them sooner.
_DROP_AFTER_SECONDS = 1.0
_DEVICE_PATH = "/3/device/"


@dataclass(frozen=True)
class ReceivedPush:
    """One request the fake received, recorded whatever it answered."""

    device_token: str
    topic: str | None
    payload: bytes
    headers: dict[str, str]  # every request header, pseudo-headers (":path", ...) included
    apns_id: str  # the request's apns-id, or the one the fake made up when it had none
    client_cert_uid: str | None  # UID of the client certificate (certificate auth)
    authorization: str | None  # the authorization header (token auth): "bearer <jwt>"
    received_at: float  # time.time() when the request ended


@dataclass
class _ProgrammedAnswer:
    status: int
    reason: str
    remaining: int | None  # answers left before 200 again; None: for ever


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str = ""


class FakeApns:
    """A fake APNs server. Start it, point the client at `endpoint` trusting `tls.ca_file`."""

    def __init__(self, tls: TlsBundle, host: str = "127.0.0.1", port: int = 0) -> None:
        self.tls = tls
        self.host = host
        self.received: list[ReceivedPush] = []
        # False answers with a fresh apns-id, to prove a client matches answers by stream.
        self.echo_apns_id = True
        self.answer_delay = 0.0  # seconds each answer is held back: a slow APNs
        # The most pushes whose answer was held back at once, across connections: how many
        # a client kept in flight, seen from APNs's side.
        self.most_unanswered = 0
        self.pushes: Counter[str] = Counter()  # pushes received, per device token
        self.delivered: Counter[str] = Counter()  # 200 answers sent, per device token
        # Pushes to a token that had been answered 200 already. The fake never loses an
        # answer it sent (a dropped connection is cut only once the client has read them),
        # so each of these is the client pushing again what was delivered.
        self.duplicates = 0
        self._requested_port = port
        self._port = port
        self._programmed: dict[str, _ProgrammedAnswer] = {}
        self._hung_tokens: set[str] = set()
        self._error_share = 0.0
        self._drop_share = 0.0
        self._random = random.Random()
        self._reopening: asyncio.Task[None] | None = None
        self._push_arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: set[_FakeApnsConnection] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _FakeApnsConnection(self),
            self.host,
            self._port,
            ssl=self._ssl_context(),
        )
        self._port = int(self._server.sockets[0].getsockname()[1])  # the same after an outage

    async def stop(self) -> None:
        if self._reopening is not None:
            self._reopening.cancel()
            self._reopening = None
        if self._server is None:
            return
        self._server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.close()
        if connections:  # let the TLS shutdowns finish, but never wait on a silent peer
            await asyncio.wait([connection.closed for connection in connections], timeout=1.0)
        for connection in list(self._connections):
            connection.abort()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the fake APNs is not started")
        return self._port

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # -- programming answers -----------------------------------------------------------------

    def respond(self, token: str, status: int, reason: str, times: int | None = None) -> None:
        """Answer pushes to token with status and reason: always, or for the next `times` ones.

        token may be ANY_TOKEN, which applies to tokens that have no rule of their own.
        """
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for always)")
        self._programmed[token] = _ProgrammedAnswer(status, reason, times)

    def hang(self, token: str) -> None:
        """Never answer pushes to token (they are still recorded)."""
        self._hung_tokens.add(token)

    def faults(self, *, errors: float = 0.0, drops: float = 0.0, seed: int | None = None) -> None:
        """From now on answer a share `errors` of pushes with a transient error (429, 500 or
        503, as Apple words them), and drop the connection at a share `drops` of pushes: that
        push and any that follow on the connection are never answered, and the connection is
        cut once the client has read the answers sent before it. Programmed answers
        (`respond`, `hang`) come first."""
        if not (0.0 <= errors <= 1.0 and 0.0 <= drops <= 1.0):
            raise ValueError("shares are between 0 and 1")
        self._error_share, self._drop_share = errors, drops
        self._random = random.Random(seed)

    async def outage(self, seconds: float | None) -> None:
        """Go down as in an outage: every connection is cut and new ones are refused, for
        `seconds` (None: until `end_outage`). Pushes in flight are never answered."""
        if self._reopening is not None:
            self._reopening.cancel()
            self._reopening = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for connection in list(self._connections):
            connection.drop()
        if seconds is not None:
            self._reopening = asyncio.create_task(self._reopen_after(seconds))

    async def end_outage(self) -> None:
        """Listen again at once, on the same port."""
        if self._reopening is not None:
            self._reopening.cancel()
            self._reopening = None
        if self._server is None:
            await self.start()

    async def _reopen_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._reopening = None
        await self.start()

    def reset(self) -> None:
        """Forget received pushes, counts, faults and programmed answers."""
        self.received.clear()
        self.pushes.clear()
        self.delivered.clear()
        self.duplicates = 0
        self._programmed.clear()
        self._hung_tokens.clear()
        self._error_share = self._drop_share = 0.0
        self.echo_apns_id = True
        self.answer_delay = 0.0
        self.most_unanswered = 0

    # -- inspecting what arrived -------------------------------------------------------------

    def tokens(self) -> list[str]:
        """Device tokens of the received pushes, in arrival order."""
        return [push.device_token for push in self.received]

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedPush]:  # noqa: ASYNC109
        """Wait until at least count pushes were received; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self._push_arrived.clear()
                await self._push_arrived.wait()
        return self.received

    # -- internals ---------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.tls.ca_file)
        context.load_cert_chain(self.tls.server_cert_file, self.tls.server_key_file)
        # Optional, so token auth and the no-auth client connect too; a certificate the CA
        # signed is verified and its UID recorded.
        context.verify_mode = ssl.CERT_OPTIONAL
        context.set_alpn_protocols(["h2"])
        return context

    def _record(self, push: ReceivedPush) -> None:
        self.received.append(push)
        self.pushes[push.device_token] += 1
        if self.delivered[push.device_token]:
            self.duplicates += 1
        self._push_arrived.set()

    def _held_back(self) -> None:
        unanswered = sum(len(connection._answers_due) for connection in self._connections)
        self.most_unanswered = max(self.most_unanswered, unanswered)

    def _drops_connection(self) -> bool:
        return self._drop_share > 0 and self._random.random() < self._drop_share

    def _receive(self, push: ReceivedPush, method: str | None, path: str) -> _Answer | None:
        """Record a push and choose its answer (None: never answer)."""
        self._record(push)
        answer = self._choose_answer(push, method, path)
        logger.info(
            "push to %s… topic=%s: %s",
            push.device_token[:8],
            push.topic,
            "no answer (hung)" if answer is None else f"{answer.status} {answer.reason}".strip(),
        )
        return answer

    def _choose_answer(self, push: ReceivedPush, method: str | None, path: str) -> _Answer | None:
        if push.device_token in self._hung_tokens:
            return None
        # The request checks APNs makes before looking at the token.
        if method != "POST":
            return _Answer(405, "MethodNotAllowed")
        if not path.startswith(_DEVICE_PATH):
            return _Answer(404, "BadPath")
        if not push.device_token:
            return _Answer(400, "MissingDeviceToken")
        if not push.topic:
            return _Answer(400, "MissingTopic")
        if not push.payload:
            return _Answer(400, "PayloadEmpty")
        if len(push.payload) > MAX_PAYLOAD_BYTES:
            return _Answer(413, "PayloadTooLarge")

        rule = push.device_token if push.device_token in self._programmed else ANY_TOKEN
        programmed = self._programmed.get(rule)
        if programmed is None:
            if self._error_share > 0 and self._random.random() < self._error_share:
                return _Answer(*self._random.choice(TRANSIENT_ERRORS))
            return _Answer(200)
        if programmed.remaining is not None:
            programmed.remaining -= 1
            if programmed.remaining == 0:
                del self._programmed[rule]
        return _Answer(programmed.status, programmed.reason)


@dataclass
class _IncomingRequest:
    headers: dict[str, str]
    body: bytearray


class _FakeApnsConnection(asyncio.Protocol):
    """One client connection: an h2 server state machine fed by the TLS transport."""

    def __init__(self, fake: FakeApns) -> None:
        self._fake = fake
        self._conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self._conn.local_settings = Settings(
            client=False,
            initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS},
        )
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._client_cert_uid: str | None = None
        self._requests: dict[int, _IncomingRequest] = {}
        # Error bodies waiting for the client to open its flow-control window.
        self._unsent_bodies: dict[int, bytes] = {}
        self._dropping = False  # answers nothing more; cut once the client read the rest
        self._answers_due: set[int] = set()  # streams whose answer is held back

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            logger.warning("closing a connection that did not negotiate ALPN h2")
            self._transport.close()
            return
        self._client_cert_uid = _certificate_uid(transport.get_extra_info("peercert"))
        self._fake._connections.add(self)
        self._conn.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fake._connections.discard(self)
        self.closed.set_result(None)

    def close(self) -> None:
        """Say goodbye (GOAWAY) and close."""
        if self._transport is None or self._transport.is_closing():
            return
        with contextlib.suppress(ProtocolError):  # the HTTP/2 connection may be over already
            self._conn.close_connection()
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def drop(self) -> None:
        """Answer nothing more and cut the connection (no GOAWAY) as soon as the client has
        read the answers sent so far: it acknowledges a PING sent after them."""
        if self._dropping or self._transport is None or self._transport.is_closing():
            return
        self._dropping = True
        with contextlib.suppress(ProtocolError):
            self._conn.ping(b"dropping")
        self._flush()
        asyncio.get_running_loop().call_later(_DROP_AFTER_SECONDS, self.abort)

    def data_received(self, data: bytes) -> None:
        try:
            events = self._conn.receive_data(data)
        except ProtocolError:
            logger.warning("closing a connection after an HTTP/2 protocol error", exc_info=True)
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._requests[event.stream_id] = _IncomingRequest(
                    {_text(name): _text(value) for name, value in event.headers}, bytearray()
                )
            elif isinstance(event, DataReceived):
                request = self._requests.get(event.stream_id)
                if request is not None:
                    request.body += event.data
                # Hand the window back, or a client with large bodies would stall.
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                self._on_request_complete(event.stream_id)
            elif isinstance(event, StreamReset):
                self._requests.pop(event.stream_id, None)
                self._unsent_bodies.pop(event.stream_id, None)
                self._answers_due.discard(event.stream_id)
            elif isinstance(event, WindowUpdated):
                self._send_unsent_bodies()
            elif isinstance(event, PingAckReceived) and self._dropping:
                self.abort()
                return
            elif isinstance(event, ConnectionTerminated):
                self.close()
        self._flush()

    def _on_request_complete(self, stream_id: int) -> None:
        request = self._requests.pop(stream_id, None)
        if request is None:
            return
        headers = request.headers
        path = headers.get(":path", "")
        apns_id = headers.get("apns-id") or str(uuid.uuid4())
        push = ReceivedPush(
            device_token=path.removeprefix(_DEVICE_PATH) if path.startswith(_DEVICE_PATH) else "",
            topic=headers.get("apns-topic"),
            payload=bytes(request.body),
            headers=headers,
            apns_id=apns_id,
            client_cert_uid=self._client_cert_uid,
            authorization=headers.get("authorization"),
            received_at=time.time(),
        )
        if self._dropping or self._fake._drops_connection():
            self._fake._record(push)  # arrived, and never answered
            self.drop()
            return
        answer = self._fake._receive(push, headers.get(":method"), path)
        if answer is None:
            return  # hung: the stream stays open until the client resets it
        answered_id = apns_id if self._fake.echo_apns_id else str(uuid.uuid4())
        if self._fake.answer_delay > 0:
            self._answers_due.add(stream_id)
            self._fake._held_back()
            asyncio.get_running_loop().call_later(
                self._fake.answer_delay, self._answer_late, stream_id, push, answer, answered_id
            )
            return
        self._answer(stream_id, push, answer, answered_id)

    def _answer_late(
        self, stream_id: int, push: ReceivedPush, answer: _Answer, answered_id: str
    ) -> None:
        if stream_id not in self._answers_due or self._dropping:
            return  # the client gave the push up, or the connection is going
        self._answers_due.discard(stream_id)
        self._answer(stream_id, push, answer, answered_id)
        self._flush()

    def _answer(
        self, stream_id: int, push: ReceivedPush, answer: _Answer, answered_id: str
    ) -> None:
        response_headers = [(":status", str(answer.status)), ("apns-id", answered_id)]
        if answer.status == 200:
            # Apple answers success with headers alone; a DATA frame would confuse clients.
            self._conn.send_headers(stream_id, response_headers, end_stream=True)
            self._fake.delivered[push.device_token] += 1
            return
        error: dict[str, Any] = {"reason": answer.reason}
        if answer.status == 410:
            error["timestamp"] = int(time.time() * 1000)
        body = json.dumps(error).encode()
        response_headers += [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
        ]
        self._conn.send_headers(stream_id, response_headers)
        self._unsent_bodies[stream_id] = body
        self._send_unsent_bodies()

    def _send_unsent_bodies(self) -> None:
        """Send what the client's flow-control windows allow of the waiting error bodies."""
        for stream_id, body in list(self._unsent_bodies.items()):
            while body:
                window = self._conn.local_flow_control_window(stream_id)
                size = min(window, self._conn.max_outbound_frame_size, len(body))
                if size <= 0:
                    break
                chunk, body = body[:size], body[size:]
                self._conn.send_data(stream_id, chunk, end_stream=not body)
            if body:
                self._unsent_bodies[stream_id] = body
            else:
                del self._unsent_bodies[stream_id]

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _certificate_uid(peer_certificate: dict[str, Any] | None) -> str | None:
    """The UID attribute of a verified client certificate's subject, if any."""
    for relative_name in (peer_certificate or {}).get("subject", ()):
        for attribute, value in relative_name:
            if attribute in ("userId", "UID"):
                return str(value)
    return None


async def start_bundled_fake(directory: Path) -> FakeApns:
    """Start a fake APNs on a free loopback port with fresh TLS material written to directory.

    The server uses it when no APNs credentials are configured: point the APNs client at
    `fake.endpoint`, trusting `fake.tls.ca_file`.
    """
    fake = FakeApns(make_tls_bundle(directory))
    await fake.start()
    return fake


async def _serve(host: str, port: int, directory: Path) -> None:
    bundle = make_tls_bundle(directory)
    async with FakeApns(bundle, host, port) as fake:
        print(f"fake APNs listening on {fake.endpoint}, CA at {bundle.ca_file}", flush=True)
        await asyncio.Event().wait()  # until interrupted


def main(argv: list[str] | None = None) -> None:
    standalone.run(
        argv,
        prog="python -m passpush.fakes.apns",
        description="Run a fake APNs (HTTP/2 over TLS) that accepts every push and logs it.",
        port=2197,
        directory=Path("var/fake-apns"),
        directory_help="directory for the generated CA and server certificate",
        serve=_serve,
    )


if __name__ == "__main__":
    main()
