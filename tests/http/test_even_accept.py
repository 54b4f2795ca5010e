"""The HTTP processes' turns at one listening socket (http/even_accept.py), in one process:
a second process is played by a slot of the shared counts."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator

import pytest

from passpush.http.even_accept import ConnectionCounts, EvenAcceptor
from passpush.http.sockets import tcp_listener


class Accepted:
    """An acceptor in slot 0 whose process holds `held` connections already, handing
    them to asyncio as the HTTP server does; the TCP_NODELAY of each it served."""

    def __init__(self, counts: ConnectionCounts, held: int) -> None:
        self.listener = tcp_listener("127.0.0.1", 0)
        self.port = self.listener.getsockname()[1]
        self.nodelay: asyncio.Queue[int] = asyncio.Queue()
        serve = functools.partial(asyncio.get_running_loop().connect_accepted_socket, self._probe)
        self.acceptor = EvenAcceptor(self.listener, counts, 0, lambda: held, serve)

    def _probe(self) -> asyncio.Protocol:
        nodelay = self.nodelay

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                nodelay.put_nowait(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        return Probe()

    async def nodelay_of_one(self) -> int:
        """Starts accepting, connects once: the TCP_NODELAY of the connection served."""
        self.acceptor.start()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            async with asyncio.timeout(10):
                nodelay = await self.nodelay.get()
            writer.close()
            return nodelay
        finally:
            self.acceptor.close()
            self.listener.close()


@pytest.fixture
async def counts() -> AsyncIterator[ConnectionCounts]:
    shared = ConnectionCounts.create(2)
    yield shared
    shared.close()


async def test_a_connection_left_for_a_process_that_never_takes_it_is_taken_after_all(
    counts: ConnectionCounts,
) -> None:
    """The other process says it holds none, but is stuck (or busy for long): the one
    holding more leaves the connection to it, then takes it rather than strand it."""
    accepted = Accepted(counts, held=3)
    counts.set(1, 0)
    await accepted.nodelay_of_one()  # served, not left waiting for ever


async def test_connections_it_accepts_send_without_delay(counts: ConnectionCounts) -> None:
    """As for uvicorn's own servers (test_sockets.py): without TCP_NODELAY a response
    written in two parts waited for the client's delayed ACK, 40 ms."""
    assert await Accepted(counts, held=0).nodelay_of_one() != 0


def test_a_process_that_is_gone_is_never_the_one_with_fewest(counts: ConnectionCounts) -> None:
    counts.set(0, 1_000)
    counts.set(1, 0)
    assert not counts.fewest(0)
    counts.vacate(1)
    assert counts.fewest(0)
