"""The HTTP server's listening sockets."""

from __future__ import annotations

import asyncio
import socket

from passpush.http.sockets import inherited_listener, tcp_listener


async def _nodelay_of_accepted(listener: socket.socket) -> int:
    """TCP_NODELAY of a connection asyncio accepted on `listener` (as uvicorn's are)."""
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
    try:
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):
            nodelay = await accepted
        writer.close()
        return nodelay
    finally:
        server.close()


async def test_connections_accepted_on_a_listener_send_without_delay() -> None:
    """asyncio turns Nagle's algorithm off only for sockets that say they are TCP, and
    socket.create_server's say protocol 0: every response written in two parts (uvicorn
    writes the headers, then the body) then waited for the client's delayed ACK, 40 ms."""
    nodelay = await _nodelay_of_accepted(tcp_listener("127.0.0.1", 0))
    assert nodelay != 0


async def test_a_listener_handed_down_by_descriptor_sends_without_delay() -> None:
    parent = tcp_listener("127.0.0.1", 0)
    child = inherited_listener(parent.detach())
    assert await _nodelay_of_accepted(child) != 0
