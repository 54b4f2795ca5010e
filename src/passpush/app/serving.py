"""`passpush serve` and `passpush serve-http`: the settings to running processes. It opens
the database and the wallets' gateways, builds the `Application` for the role, starts its
HTTP server (in processes of its own, or in this one), and stops it all on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from passpush.app.application import Application
from passpush.app.wallets import Wallets, default_signing, tls_files, warn_if_plaintext
from passpush.config import Settings
from passpush.database_checks import DatabaseUnusable, open_migrated
from passpush.domain.clock import utcnow
from passpush.domain.errors import DomainError
from passpush.service.passkit import PassKitCore, PassKitSettings, PassPackager
from passpush.store.connectors import connect, connect_standalone
from passpush.store.db import make_engine, make_sessions
from passpush.tls import ServerTls, load_server_tls

# Imported where used: the HTTP server (FastAPI's seconds of imports) by the processes that
# serve HTTP, not by a worker.
if TYPE_CHECKING:
    from passpush.http.app import HttpServer
    from passpush.http.processes import HttpProcesses

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> int:
    """`passpush serve` for `settings.role`, with its metrics on their own address
    (metrics.py says why); returns the exit status."""
    from passpush.metrics import serve_metrics

    metrics = None
    if settings.metrics_address:
        try:
            metrics = serve_metrics(settings.metrics_address)
        except OSError as error:
            log.error(
                "cannot serve metrics on PASSPUSH_METRICS_ADDRESS %s: %s",
                settings.metrics_address,
                error.strerror or error,
            )
            return 2
        host = settings.metrics_address.rpartition(":")[0]
        log.info("passpush metrics at http://%s:%d/metrics", host, metrics.port)
    try:
        return await _serve(settings, measure_outbox=metrics is not None)
    finally:
        if metrics is not None:
            await asyncio.to_thread(metrics.close)


async def _serve(settings: Settings, *, measure_outbox: bool) -> int:
    role = settings.role
    passkit: PassKitSettings | None = None
    tls: ServerTls | None = None
    if role.serves_api:
        try:
            passkit = PassKitSettings(settings.passkit_url, default_signing(settings.apple_signing))
        except (OSError, DomainError) as error:
            message = error.message if isinstance(error, DomainError) else str(error)
            log.error("cannot load PASSPUSH_APPLE_SIGNING_CERT, _KEY, _WWDR: %s", message)
            return 2
        try:
            tls = load_server_tls(settings.tls) if settings.tls is not None else None
        except ValueError as error:
            log.error("cannot use the TLS settings: %s", error)
            return 2
        warn_if_plaintext(settings)
        if urlsplit(settings.passkit_url).scheme.lower() != "https":
            log.warning(
                "PASSPUSH_PASSKIT_URL is %s, not https://: it is every pass's webServiceURL, "
                "and devices call only https:// ones (an iPhone calls plain HTTP only with "
                "Developer settings' Allow HTTP Services), so passes will not register or update",
                settings.passkit_url,
            )
    try:
        engine = await open_migrated(settings.database_url)
    except DatabaseUnusable as error:
        log.error("%s", error)
        return 2
    async with contextlib.AsyncExitStack() as closing:
        closing.push_async_callback(engine.dispose)
        wallets = Wallets()
        closing.push_async_callback(wallets.close)
        if role.runs_worker and not await wallets.open(settings, engine):
            return 2
        try:
            app = Application(
                engine,
                wallets.apns,
                wallets.google,
                role=role,
                address=settings.grpc_address,
                worker_settings=settings.worker,
                key_cache_seconds=settings.key_cache_seconds,
                event_retention=settings.event_retention,
                passkit=passkit,
                max_message_bytes=settings.grpc_max_message_bytes,
                measure_outbox=measure_outbox,
                credentials=tls.grpc_credentials() if tls is not None else None,
            )
        except OSError:  # the gRPC address cannot be listened on
            log.error(
                "cannot serve gRPC on %s (PASSPUSH_GRPC_ADDRESS): %s",
                settings.grpc_address,
                _why_not_listening(settings.grpc_address),
            )
            return 2
        # Taken from here on: a SIGTERM while the HTTP processes start stops all cleanly.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            http = await _start(app, settings)
        except _NotStarted:
            return 2
        # What start-up made (SQLAlchemy's metadata, protobuf descriptors, the servers) lives
        # as long as the process: frozen, a full collection skips it, and a call's latency
        # does not include a walk over every object the process has.
        gc.collect()
        gc.freeze()
        await stop.wait()
        log.info("shutting down: finishing in-flight work (up to %.0f s)", settings.shutdown_grace)
        if http is not None:
            await http.stop(settings.shutdown_grace)
        await app.stop(settings.shutdown_grace)
    return 0


class _NotStarted(Exception):
    """The process cannot start, and said why."""


async def _start(app: Application, settings: Settings) -> HttpServer | HttpProcesses | None:
    """Starts the application and its HTTP server (None for a worker, which has none)."""
    from passpush.http.app import HttpServer, create_app

    if app.grpc is None:
        await app.start()
        log.info(
            "passpush worker running (role worker: no gRPC or HTTP server; its state in "
            "passpush_ready at PASSPUSH_METRICS_ADDRESS)"
        )
        return None
    # The HTTP processes start first where the gRPC port is known: the server reports
    # SERVING once they are up, so that their start (a Python importing the whole server,
    # each) does not take the CPU from the first Sends and pushes.
    grpc_port = int(settings.grpc_address.rpartition(":")[2] or 0)
    http: HttpServer | HttpProcesses | None = None
    if settings.http_processes and grpc_port:
        grpc_target = app.local_target or _dial(settings.grpc_address, grpc_port)
        http = _http_processes(settings, grpc_target, app)
        if not await _start_http(http, settings):
            raise _NotStarted
    try:
        await app.start()
    except BaseException:
        if http is not None:
            await http.stop(0)
        raise
    log.info("passpush gRPC listening on %s (role %s)", settings.grpc_address, app.role)
    if http is None:
        # The shim calls the gRPC server like any client, over the port it just bound; the
        # PassKit routes (devices, no API key) call the service directly.
        grpc_target = app.local_target or _dial(settings.grpc_address, app.port)
        if settings.http_processes:
            http = _http_processes(settings, grpc_target, app)
        else:
            web = create_app(grpc_target, app.passkit, settings.passkit_prefix, lambda: app.serving)
            http = HttpServer(web, settings.http_address, tls_files=tls_files(settings.tls))
        if not await _start_http(http, settings):
            await app.stop(0)
            raise _NotStarted
    log.info(
        "passpush HTTP shim listening on %s (%s); PassKit web service at %s (webServiceURL %s)",
        settings.http_address,
        f"{settings.http_processes} processes" if settings.http_processes else "in-process",
        settings.passkit_prefix,
        settings.passkit_url,
    )
    return http


async def serve_http(settings: Settings, shared: tuple[int, int, int], grpc_target: str) -> int:
    """One HTTP process of `serve`: the shim and the PassKit web service on the socket the
    parent listens on, until SIGTERM or until the parent is gone. `shared`: the listening
    socket's descriptor, the descriptor of the processes' connection counts, and this
    process's slot in them."""
    from passpush.http.app import HttpServer, create_app
    from passpush.http.even_accept import ConnectionCounts
    from passpush.http.processes import (
        READY,
        ParentFetchSink,
        ParentPipe,
        ParentReadiness,
        ParentRegistrar,
        follow_parent,
        lower_priority,
    )
    from passpush.http.sockets import inherited_listener

    lower_priority(settings.http_nice)
    try:
        signing = default_signing(settings.apple_signing, quiet=True)
    except (OSError, DomainError):
        signing = None  # the parent said why, and refused to start
    engine = make_engine(settings.database_url)
    sessions = make_sessions(engine)
    parent = await ParentPipe.open()
    registrar = ParentRegistrar(parent)
    passkit = PassKitCore(
        connect_standalone(engine),
        sessions,
        connect(engine),
        PassPackager(PassKitSettings(settings.passkit_url, signing)),
        clock=utcnow,
        fetch_sink=ParentFetchSink(parent),  # the parent records them
        # SQLite: the parent writes the registrations (http/processes.py says why).
        # PostgreSQL: each child writes its own, in groups: rows lock alone there, and the
        # hop through the parent's pipe and event loop cost more than the write.
        registrar=registrar if engine.dialect.name == "sqlite" else None,
    )
    readiness = ParentReadiness()  # the parent tells it
    web = create_app(grpc_target, passkit, settings.passkit_prefix, readiness)
    listen_fd, counts_fd, slot = shared
    http = HttpServer(
        web,
        settings.http_address,
        inherited_listener(listen_fd),
        tls_files(settings.tls),
        shared=(ConnectionCounts(counts_fd), slot),
    )
    await http.start()
    parent.tell(READY)
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    # The parent holds our stdin open: at its end (even a SIGKILL) we stop too, instead of
    # keeping its port.
    following = asyncio.create_task(follow_parent(registrar, readiness, stop.set))
    await stop.wait()
    await http.stop(settings.shutdown_grace)
    following.cancel()
    await passkit.close()
    await engine.dispose()
    return 0


def _http_processes(settings: Settings, grpc_target: str, app: Application) -> HttpProcesses:
    from passpush.http.processes import HttpProcesses

    processes = HttpProcesses(
        settings.http_address,
        settings.http_processes,
        functools.partial(_http_child_command, grpc_target),
        on_fetched=app.fetches.add,
        on_register=app.passkit.write_registration,
    )
    processes.tell_serving(app.serving)
    app.on_serving.append(processes.tell_serving)  # their /readyz
    return processes


async def _start_http(http: HttpServer | HttpProcesses, settings: Settings) -> bool:
    try:
        await http.start()
    except OSError as error:
        log.error("cannot serve HTTP on %s: %s", settings.http_address, error)
        return False
    return True


def _http_child_command(grpc_target: str, listen_fd: int, counts_fd: int, slot: int) -> list[str]:
    """`passpush serve-http` by this Python; it reads the same PASSPUSH_* settings."""
    command = [sys.executable, "-m", "passpush.cli", "serve-http"]
    command += [f"--listen-fd={listen_fd}", f"--connections-fd={counts_fd}", f"--slot={slot}"]
    return [*command, f"--grpc-target={grpc_target}"]


def _dial(listen_address: str, port: int) -> str:
    """Where a local client reaches a server listening on `listen_address`."""
    host = listen_address.rpartition(":")[0]
    if host in ("", "0.0.0.0", "[::]", "localhost"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _why_not_listening(address: str) -> str:
    """The system's reason that `address` cannot be listened on (grpc does not say)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, int(port)), family=family):
            return "gRPC could not listen there"
    except OSError as error:  # its text names the address again: the errno's alone
        return os.strerror(error.errno) if error.errno else str(error)
