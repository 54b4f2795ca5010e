"""The shim under test: real uvicorn on a free port, calling the real gRPC server fixture."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from passpush.app import Application
from passpush.http.app import HttpServer, create_app

STOP_SECONDS = 30


@pytest.fixture
async def shim(server: Application) -> AsyncIterator[str]:
    """The shim's base URL; it serves the PassKit web service under /passkit too."""
    http = HttpServer(create_app(f"127.0.0.1:{server.port}", server.passkit), "127.0.0.1:0")
    await http.start()
    base = f"http://127.0.0.1:{http.port}"
    # The port is known only now: passes name this server as their web service.
    server.passkit.packager.web_service_url = f"{base}/passkit"
    yield base
    # stop() is bounded (its grace, then a second after aborting connections), yet on a loaded
    # machine it twice never returned and held the whole suite: fail this test instead.
    try:
        async with asyncio.timeout(STOP_SECONDS):
            await http.stop(grace=1.0)
    except TimeoutError:
        raise AssertionError(f"the HTTP shim did not stop within {STOP_SECONDS}s") from None


@pytest.fixture
async def client(shim: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=shim, timeout=30) as client:
        yield client
