"""The HTTP server's listening sockets."""

from __future__ import annotations

import socket


def tcp_listener(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port`, whose accepted connections send at once.

    asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets whose protocol is
    IPPROTO_TCP, and socket.create_server's say 0: a response written in two parts (uvicorn
    writes the headers, then the body) waited for the client's delayed ACK, 40 ms a request.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=1024)
    return socket.socket(fileno=listener.detach())  # the protocol read back from the socket


def inherited_listener(fd: int) -> socket.socket:
    """A listening socket handed down by its descriptor (a child of `passpush serve`)."""
    return socket.socket(fileno=fd)
