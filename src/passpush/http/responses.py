"""Each HTTP response leaves in one system call.

uvicorn writes a response's headers, then its body: two `send`s, and on loopback each wakes
the client and runs its TCP receive path on the sender's CPU. During a device registration
burst they were a quarter of an HTTP process's time (py-spy, 2026-12-03). The writes of one
turn of the event loop are joined and sent at its end.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose transport joins the writes of one loop turn."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_JoinedWrites(transport))  # type: ignore[arg-type]


class _JoinedWrites:
    """A transport whose writes go out together once the loop's turn ends; anything else
    passes through (a close first sends what is pending)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending and not self._transport.is_closing():
            data = b"".join(self._pending)
            self._pending.clear()
            self._transport.write(data)
        self._pending.clear()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
