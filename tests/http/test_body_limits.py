"""Every HTTP route bounds its request body: one over the limit is refused with 413, in the
route's own error shape, before the server reads it whole, and the server goes on serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from support import TOPIC

KIB = 1024
REGISTRATION = f"/passkit/v1/devices/d1/registrations/{TOPIC}/p1"


def _passkit_shape(body: dict[str, Any]) -> bool:
    return body["reason"] == "REQUEST_ENTITY_TOO_LARGE"


def _airship_shape(body: dict[str, Any]) -> bool:
    return body["ok"] is False and body["error_code"] == 41300


def _walletwerk_shape(body: dict[str, Any]) -> bool:
    return body["success"] is False and body["error"]["code"] == "REQUEST_ENTITY_TOO_LARGE"


def _passentry_shape(body: dict[str, Any]) -> bool:
    return body["errors"][0]["status"] == "413"


# (path, its limit, its vendor's error shape)
ROUTES = [
    ("/passkit/v1/log", 64 * KIB, _passkit_shape),
    (REGISTRATION, 4 * KIB, _passkit_shape),
    ("/v1/pass/p1/notify", 1024 * KIB, _airship_shape),
    ("/campaigns/c1/notifications", 1024 * KIB, _walletwerk_shape),
    ("/api/v1/passes/p1/notification", 1024 * KIB, _passentry_shape),
]
ROUTE_IDS = ["passkit-log", "passkit-registration", "airship", "walletwerk", "passentry"]


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in head[1:] if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(status, headers, body)


async def _post(
    base: str, path: str, *, declared: int | None, total: int, piece: int = 16 * KIB
) -> tuple[Answer, int]:
    """POSTs `total` bytes, declared with Content-Length (`declared`) or chunked (None), in
    pieces, and stops sending once the server answers. The answer, and the bytes sent."""
    address = urlsplit(base)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    chunked = declared is None
    framing = "transfer-encoding: chunked" if chunked else f"content-length: {declared}"
    writer.write(
        f"POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
        f"{framing}\r\n\r\n".encode()
    )
    answer = asyncio.ensure_future(_read_answer(reader))
    sent = 0
    data = b"x" * piece
    try:
        # A server that answers early may close before taking the rest: that ends sending.
        with contextlib.suppress(ConnectionError):
            while sent < total and not answer.done():
                writer.write(b"%x\r\n%s\r\n" % (piece, data) if chunked else data)
                sent += piece
                drained = asyncio.ensure_future(writer.drain())
                await asyncio.wait({answer, drained}, return_when=asyncio.FIRST_COMPLETED)
                drained.cancel()
                await asyncio.gather(drained, return_exceptions=True)
        async with asyncio.timeout(15):
            return await answer, sent
    finally:
        answer.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize(("path", "limit", "shape"), ROUTES, ids=ROUTE_IDS)
async def test_a_declared_oversized_body_is_refused_before_it_is_sent(
    shim: str, client: httpx.AsyncClient, path: str, limit: int, shape: Callable[..., bool]
) -> None:
    """Content-Length over the route's limit: 413 at once, while no byte of the body came."""
    answer, sent = await _post(shim, path, declared=100 * 1024 * KIB, total=0)

    assert (answer.status, sent) == (413, 0), answer.body
    assert shape(answer.json()), answer.json()
    assert (await client.post("/passkit/v1/log", json={"logs": ["still here"]})).status_code == 200


@pytest.mark.parametrize(("path", "limit", "shape"), ROUTES, ids=ROUTE_IDS)
async def test_an_oversized_chunked_body_is_refused_before_it_is_read_whole(
    shim: str, client: httpx.AsyncClient, path: str, limit: int, shape: Callable[..., bool]
) -> None:
    """No Content-Length: the server counts the chunks and refuses once they pass the limit,
    long before the client has sent the whole body."""
    total = 64 * 1024 * KIB
    answer, sent = await _post(shim, path, declared=None, total=total)

    assert answer.status == 413, answer.body
    assert shape(answer.json()), answer.json()
    assert sent < total, "the server read the whole body before answering"
    assert (await client.post("/passkit/v1/log", json={"logs": ["still here"]})).status_code == 200


async def test_a_body_within_the_limit_is_taken(client: httpx.AsyncClient) -> None:
    logs = {"logs": ["x" * 1000] * 60}  # about 60 KiB: under the log route's 64 KiB
    assert (await client.post("/passkit/v1/log", json=logs)).status_code == 200
