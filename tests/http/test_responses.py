"""Each HTTP response leaves the server in one system call."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from passpush.http.responses import CoalescingHttpToolsProtocol


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello"})


class _Socket(asyncio.Transport):
    """What the connection's socket is sent: one entry a system call."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )


async def test_a_response_is_sent_once_headers_and_body_together() -> None:
    """uvicorn writes the headers, then the body: two sends, and on loopback each wakes the
    client and runs its TCP receive path on the server's CPU."""
    config = uvicorn.Config(_app, log_config=None, access_log=False)
    protocol = CoalescingHttpToolsProtocol(config, ServerState(), {})
    sock = _Socket()
    protocol.connection_made(sock)

    protocol.data_received(b"GET / HTTP/1.1\r\nhost: passpush\r\n\r\n")
    for _ in range(5):  # the app's task, then the end of its turn
        await asyncio.sleep(0)

    [response] = sock.sent
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"\r\n\r\nhello")

    # A connection closed with a response pending sends it first.
    protocol.data_received(b"GET / HTTP/1.1\r\nhost: passpush\r\nconnection: close\r\n\r\n")
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(sock.sent) == 2 and sock.sent[1].endswith(b"hello")
    assert sock.closed
