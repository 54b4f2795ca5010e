"""The HTTP server's one ASGI app, mounting the vendor shim (vendors/) and the PassKit web
service (passkit/) behind the probes; and the uvicorn server `passpush serve` runs it in."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from passpush.http.even_accept import ConnectionCounts, EvenAcceptor
from passpush.http.passkit import web_service
from passpush.http.probes import Probes
from passpush.http.responses import CoalescingHttpToolsProtocol
from passpush.http.sockets import tcp_listener
from passpush.http.vendors.app import create_vendor_app
from passpush.service.passkit import PassKitCore

log = logging.getLogger(__name__)

TITLE = "passpush HTTP shim"
DESCRIPTION = """\
The REST shapes of three wallet vendors, translated onto passpush's gRPC service:
Airship Wallet (`/v1/...`, HTTP Basic key:secret or Bearer), PassEntry (`/api/v1/...`,
Bearer) and WalletWerk campaigns (`/campaigns/...`, Bearer). Keys are passpush API keys
(`ppk_<id>.<secret>`); errors come in each vendor's own shape.

And Apple's PassKit web service (`{prefix}/v1/...`), which Wallet devices call at their
passes' webServiceURL, authenticated with each pass's token (`ApplePass <token>`).
"""


def create_app(
    grpc_target: str,
    passkit_core: PassKitCore | None = None,
    passkit_prefix: str = web_service.DEFAULT_PREFIX,
    ready: Callable[[], bool] = lambda: True,
) -> ASGIApp:
    """The vendor shim, calling the gRPC server at `grpc_target` (`host:port`); and, given
    its core, the PassKit web service under `passkit_prefix`; `/healthz`, and `/readyz`
    saying `ready()` (whether the gRPC server serves; by default, as long as this app does)."""
    vendors = create_vendor_app(
        grpc_target, title=TITLE, description=DESCRIPTION.format(prefix=passkit_prefix)
    )
    if passkit_core is None:
        return Probes(ready, vendors)
    service = web_service.PassKitService(passkit_core, passkit_prefix)
    vendors.openapi = _with_passkit_paths(vendors.openapi, passkit_prefix)  # type: ignore[method-assign]
    return Probes(ready, _PassKitFirst(service, vendors))


class _PassKitFirst:
    """The PassKit web service's requests straight to it, the rest (the vendor routes,
    the document, lifespan) to FastAPI."""

    def __init__(self, passkit: web_service.PassKitService, rest: FastAPI) -> None:
        self._passkit = passkit
        self._under = passkit.prefix + "/"
        self._rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self._under):
            await self._passkit(scope, receive, send)  # type: ignore[arg-type]
        else:
            await self._rest(scope, receive, send)


def _with_passkit_paths(
    vendor_document: Callable[[], dict[str, Any]], prefix: str
) -> Callable[[], dict[str, Any]]:
    """One OpenAPI document for the whole server: the vendors' and the PassKit routes'."""

    @functools.cache
    def document() -> dict[str, Any]:
        merged = vendor_document()
        merged["paths"].update(web_service.openapi_paths(prefix))
        components = merged.setdefault("components", {})
        for kind, entries in web_service.openapi_components().items():
            components.setdefault(kind, {}).update(entries)
        return merged

    return document


class HttpServer:
    """uvicorn serving the shim beside the gRPC server, started and stopped with it."""

    def __init__(
        self,
        app: ASGIApp,
        address: str,
        listener: socket.socket | None = None,
        tls_files: tuple[str, str] | None = None,
        *,
        shared: tuple[ConnectionCounts, int] | None = None,
    ) -> None:
        """Serves on `address`, or on `listener` (a socket listening already) if given;
        HTTPS with `tls_files`, the PEM files of the certificate (chain) and its key.
        `shared`: the listener is shared with other processes, which take its connections
        in turn (even_accept.py); the counts and this process's slot in them."""
        host, _, port = address.rpartition(":")
        self._host, self._port = host.strip("[]") or "127.0.0.1", int(port)
        self._listener = listener
        self._shared = shared
        self._acceptor: EvenAcceptor | None = None
        certificate, key = tls_files or (None, None)
        # httptools parses HTTP in C, where h11 is pure Python: devices make many small
        # requests; each response leaves in one system call (responses.py).
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            http=CoalescingHttpToolsProtocol,
            ssl_certfile=certificate,
            ssl_keyfile=key,
        )
        self._server = _QuietSignalsServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serves in the background once listening; raises OSError if it cannot listen."""
        # Bind here rather than in uvicorn, which exits the process when the port is taken.
        listener = self._listener = self._listener or tcp_listener(self._host, self._port)
        # A shared listener's connections are accepted here, in turn with the others.
        sockets = [] if self._shared else [listener]
        self._task = asyncio.create_task(self._server.serve(sockets=sockets))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # what went wrong, if it raised
                raise OSError("the HTTP shim stopped before it started")
            await asyncio.sleep(0.02)
        if self._shared:
            self._acceptor = self._even_acceptor(listener, *self._shared)
            self._acceptor.start()

    def _even_acceptor(
        self, listener: socket.socket, counts: ConnectionCounts, slot: int
    ) -> EvenAcceptor:
        """Hands each connection to uvicorn's protocol, as its own servers would."""
        server, config = self._server, self._server.config
        protocol: Callable[[], asyncio.Protocol] = functools.partial(
            config.http_protocol_class,  # type: ignore[call-arg]  # uvicorn's own keywords
            config=config,
            server_state=server.server_state,
            app_state=server.lifespan.state,
        )
        serve = functools.partial(
            asyncio.get_running_loop().connect_accepted_socket, protocol, ssl=config.ssl
        )
        return EvenAcceptor(
            listener, counts, slot, lambda: len(server.server_state.connections), serve
        )

    @property
    def port(self) -> int:
        """The port it listens on (the system's choice for port 0), whoever accepts."""
        assert self._listener is not None, "not started"
        return int(self._listener.getsockname()[1])

    async def stop(self, grace: float) -> None:
        """Stops accepting, lets open requests finish for up to `grace` seconds."""
        if self._task is None:
            return
        if self._acceptor is not None:
            self._acceptor.close()
        self._server.should_exit = True
        # asyncio.wait, not wait_for: on Python 3.11 wait_for's timeout cancels the task and
        # then waits for it to end, which a server stuck in its shutdown never does.
        done, _ = await asyncio.wait({self._task}, timeout=grace)
        if done:
            return
        self._server.force_exit = True
        # uvicorn then waits for the listener to close, which waits for every connection:
        # one whose request never ends would hold the stop for ever.
        for connection in list(self._server.server_state.connections):
            connection.transport.abort()  # type: ignore[attr-defined]
        done, _ = await asyncio.wait({self._task}, timeout=1.0)
        if not done:
            self._task.cancel()
            log.warning("the HTTP server did not stop within %.0f s: left behind", grace)


class _QuietSignalsServer(uvicorn.Server):
    # `passpush serve` owns SIGTERM/SIGINT and stops both servers; uvicorn must not take them.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
