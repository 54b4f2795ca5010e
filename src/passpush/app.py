"""The composition root: what a passpush process builds, starts and stops, for its role.

One place wires the application: the engine and its sessions, the cores, the delivery
worker and the loops beside it, the gRPC server, the wake-ups between processes. `serve`
(below) builds it from the settings for `passpush serve`; the tests build `Application`
directly, with their fakes.

Roles (`passpush serve --role`, PASSPUSH_ROLE):
- `api`: the gRPC server and the HTTP server (vendor shim, PassKit web service), with what
  answers their calls: accepting Sends (committed before the answer), reading tickets and
  events, recording which devices fetched what (the PassKit web service hands it over).
- `worker`: the delivery worker, and the loops that make or keep up its work rather than
  answer a call: the fan-out of broadcasts (its chunks are the worker's next deliveries,
  and a bulk write that competes with no call for this process's event loop), the
  scheduler (a timer whose Sends are the worker's work), event retention and, on
  PostgreSQL, the planner statistics refreshed after bulk changes (periodic database chores).
- `all` (the default): both, in one process.

Processes of either role find each other through the database (store/wakeups.py): a Send
accepted by an `api` process wakes the workers at once, and the workers' outcomes wake the
`api` processes' status streams.
"""

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
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.api.server import DEFAULT_MAX_MESSAGE_BYTES, ApiCores, GrpcServer
from passpush.config import Role, Settings, SigningFiles
from passpush.database_checks import DatabaseUnusable, open_migrated
from passpush.delivery.apple.deliverer import ApplePushGateway
from passpush.delivery.apple.gateway import ApnsConfig, ApnsGateway
from passpush.delivery.google.gateway import GoogleWalletConfig, GoogleWalletGateway
from passpush.delivery.worker import DeliveryWorker, WorkerSettings
from passpush.domain.clock import Clock, utcnow
from passpush.domain.errors import DomainError
from passpush.domain.outcomes import APNS_NOT_CONFIGURED, GOOGLE_NOT_CONFIGURED
from passpush.domain.signing import AppleSigningPem, SigningMaterial, load_signing
from passpush.metrics import READY
from passpush.outbox.fanout import FanOut
from passpush.outbox.fanout_chunks import FANOUT_CHUNK
from passpush.outbox.leases import release_leases
from passpush.service.fetches import FetchBatcher, FetchRecorder
from passpush.service.keys import DEFAULT_CACHE_SECONDS, KeyCore
from passpush.service.notifications import NotificationCore
from passpush.service.outbox_depth import OutboxDepth
from passpush.service.passes import PassCore
from passpush.service.passkit import PassKitCore, PassKitSettings, PassPackager
from passpush.service.readiness import DatabaseReadiness, check_sessions_writable
from passpush.service.schedules import ScheduleCore, Scheduler
from passpush.service.status import (
    DEFAULT_EVENT_RETENTION,
    ChangeFeed,
    EventRetention,
    EventStreams,
    TicketWatch,
)
from passpush.store.checkpoints import wal_checkpoints
from passpush.store.connectors import connect
from passpush.store.connectors.session import run_on_session
from passpush.store.db import is_sqlite, make_engine, make_read_engine, make_sessions, sqlite_file
from passpush.store.faults import DATABASE_ERRORS, error_code
from passpush.store.listen import NotifyWakeUps
from passpush.store.request_turns import SharedRequestTurns
from passpush.store.schedules import ScheduleStore
from passpush.store.sqlite_workers import SqliteWorkers
from passpush.store.statistics import fresh_statistics
from passpush.store.wake_sockets import SocketWakeUps
from passpush.store.wakeups import NoWakeUps, Topic, WakeUps
from passpush.tls import ServerTls, TlsFiles, is_loopback, load_server_tls

# Imported where used: the fakes by `serve --fakes` alone, the HTTP server (FastAPI's seconds
# of imports) by the processes that serve HTTP, not by a worker.
if TYPE_CHECKING:
    from passpush.fakes.apns import FakeApns
    from passpush.fakes.google import FakeGoogleWallet
    from passpush.http.app import HttpServer
    from passpush.http.processes import HttpProcesses

log = logging.getLogger(__name__)


def wake_ups_for(engine: AsyncEngine) -> WakeUps:
    """How this process wakes and is woken by the others on its database."""
    if engine.dialect.name == "postgresql":
        return NotifyWakeUps(engine.url.render_as_string(hide_password=False))
    if database := sqlite_file(engine):
        return SocketWakeUps(database)
    return NoWakeUps()


class Application:
    """passpush in one process, for one role: built here, started and stopped together.

    The parts a role does not run are None (`worker`, `fanout`, `scheduler`, `retention` in
    an `api` process; the cores and `grpc` in a `worker` process).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        apns: ApplePushGateway | None = None,
        google: GoogleWalletGateway | None = None,
        *,
        role: Role = Role.ALL,
        address: str = "127.0.0.1:0",
        clock: Clock = utcnow,
        worker_settings: WorkerSettings | None = None,
        key_cache_seconds: float = DEFAULT_CACHE_SECONDS,
        event_retention: timedelta = DEFAULT_EVENT_RETENTION,
        passkit: PassKitSettings | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        readiness_interval: float = 1.0,
        fanout_chunk: int = FANOUT_CHUNK,
        measure_outbox: bool = False,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        """`credentials`: TLS on `address` (passpush.tls); None: plaintext. OSError when
        `address` cannot be listened on."""
        self.engine = engine
        self.role = role
        self.sessions = sessions = make_sessions(engine)
        self.wake_ups = wake_ups_for(engine)
        self.changes = ChangeFeed()
        # SQLite: the WAL checkpointed beside the writes, so that no commit waits for the
        # disk's sync; in every process, so that whichever runs keeps the WAL short.
        self.checkpoints = wal_checkpoints(engine)
        # PostgreSQL: statistics analyzed right after a bulk change, not a minute later.
        self.statistics = fresh_statistics(engine)
        # Whether this process can do its work (its gRPC health, its HTTP processes'
        # /readyz, passpush_ready), and who else wants to know.
        self.serving = False
        self.on_serving: list[Callable[[bool], None]] = []
        self._sqlite_workers: SqliteWorkers | None = None

        # -- the worker's side -------------------------------------------------------------
        self.worker: DeliveryWorker | None = None
        self.fanout: FanOut | None = None
        self.scheduler: Scheduler | None = None
        self.retention: EventRetention | None = None
        self.outbox_depth: OutboxDepth | None = None
        if role.runs_worker:
            self.worker = DeliveryWorker(
                engine,
                sessions,
                apns,
                google,
                clock=clock,
                settings=worker_settings,
                on_recorded=self._changed,
            )
            self.fanout = FanOut(
                sessions, clock=clock, chunk=fanout_chunk, on_chunk=self._fanned_out_a_chunk
            )
            self.scheduler = Scheduler(
                sessions,
                clock=clock,
                on_sent=self.worker.wake,
                fanout_chunk=fanout_chunk,
                on_fanning_out=self.fanout.started,
            )
            self.retention = EventRetention(sessions, event_retention, clock=clock)
            if database := sqlite_file(engine):
                self._sqlite_workers = SqliteWorkers(database)
            self.wake_ups.subscribe(Topic.DELIVERIES, lambda _: self._wake_worker())
            self.wake_ups.subscribe(Topic.FAN_OUT, self._fan_out_told)
            self.wake_ups.subscribe(Topic.SCHEDULES, lambda _: self._wake_scheduler())

        # -- the API's side ----------------------------------------------------------------
        self._read_engine = make_read_engine(engine) if role.serves_api else None
        # The streams and the outbox's gauge only read: on SQLite, beside the writer.
        reads = make_sessions(self._read_engine) if self._read_engine else sessions
        if measure_outbox and role.runs_worker:  # the worker's backlog, where it is drained
            self.outbox_depth = OutboxDepth(reads, clock=clock)
        self.grpc: GrpcServer | None = None
        if not role.serves_api:
            self.readiness = DatabaseReadiness(
                self._check_writable, self._set_serving, every=readiness_interval
            )
            return
        self.notifications = NotificationCore(
            engine,
            sessions,
            clock=clock,
            on_enqueued=self._enqueued,
            fanout_chunk=fanout_chunk,
            on_fanning_out=self._fanning_out,
        )
        self.schedules = ScheduleCore(sessions, clock=clock, on_scheduled=self._scheduled)
        packager = PassPackager(passkit or PassKitSettings())
        transactions = connect(engine)  # closed with the PassKit core
        self.passes = PassCore(
            engine,
            sessions,
            clock=clock,
            packager=packager,
            transactions=transactions,
            after_import=self.statistics.after_bulk_change if self.statistics else None,
        )
        # Which devices fetched the notifications, recorded in batches.
        self.fetch_recorder = FetchRecorder(transactions, on_recorded=self._changed)
        self.fetches = FetchBatcher(self.fetch_recorder.record)
        # The PassKit web service: the HTTP server's device routes call it in-process.
        self.passkit = PassKitCore(
            engine, sessions, transactions, packager, clock=clock, fetch_sink=self.fetches
        )
        self.keys = KeyCore(sessions, clock=clock, cache_seconds=key_cache_seconds)
        self.watch = TicketWatch(reads, self.changes)
        self.events = EventStreams(reads, self.changes)
        self.wake_ups.subscribe(Topic.CHANGES, lambda _: self.changes.publish())
        # NOT_SERVING while the database cannot be written (a full disk, a read-only file).
        self.readiness = DatabaseReadiness(
            self._check_writable, self._set_serving, every=readiness_interval
        )
        cores = ApiCores(
            self.notifications, self.schedules, self.watch, self.events, self.passes, self.keys
        )
        self.grpc = GrpcServer(
            cores, address=address, max_message_bytes=max_message_bytes, credentials=credentials
        )

    @property
    def port(self) -> int:
        assert self.grpc is not None, "a worker process serves no gRPC"
        return self.grpc.port

    @property
    def local_target(self) -> str | None:
        assert self.grpc is not None, "a worker process serves no gRPC"
        return self.grpc.local_target

    async def start(self) -> None:
        await self.wake_ups.start()
        if self.checkpoints is not None:
            self.checkpoints.start()
        if self.grpc is not None:
            self.fetches.start()
            await self.grpc.start()
        if self.worker is not None:
            await self._start_worker()
        await self._set_serving(True)
        self.readiness.start()

    async def _start_worker(self) -> None:
        assert self.worker and self.fanout and self.scheduler and self.retention
        if self._sqlite_workers is not None and await self._sqlite_workers.join():
            # No other worker runs on this file: leases and claims left are a dead run's.
            try:
                async with self.sessions.begin() as session:
                    await run_on_session(session, release_leases())
                    await ScheduleStore(session).release_claims()
            except DATABASE_ERRORS as error:  # a read-only file: readiness says so
                log.warning("leases left by a previous run not handed back: %s", error_code(error))
            self._sqlite_workers.share()
        self.retention.start()
        if self.outbox_depth is not None:
            self.outbox_depth.start()
        if self.statistics is not None:
            self.statistics.start()
        self.worker.start()
        # Beside the worker: a broadcast's chunks are its next deliveries.
        self.fanout.start()
        self.scheduler.start()

    async def stop(self, grace: float) -> None:
        """Stops taking calls, lets in-flight calls and the batch in hand finish within `grace`."""
        if self.grpc is not None:
            await self.grpc.enter_graceful_shutdown()
        self._tell_serving(False)
        await self.readiness.stop()
        # Subscriptions never end on their own: tell them to resume elsewhere.
        self.changes.close()
        if self.grpc is not None:
            await self.watch.stop()
        if self.scheduler is not None and self.fanout is not None:
            await self.scheduler.stop()
            await self.fanout.stop()  # where it stops, its cursor says; it resumes at start
        # Side by side, so that shutdown takes `grace`, not twice it; Send commits its
        # deliveries before answering, so the worker need not outlive the calls.
        await asyncio.gather(
            *([self.grpc.stop(grace)] if self.grpc is not None else []),
            *([self.worker.stop(grace)] if self.worker is not None else []),
        )
        if self.grpc is not None:
            await self.fetches.stop()
        if self.retention is not None:
            await self.retention.stop()
        if self.outbox_depth is not None:
            await self.outbox_depth.stop()
        if self.checkpoints is not None:
            await self.checkpoints.stop()
        if self.statistics is not None:
            await self.statistics.stop()
        await self.wake_ups.stop()
        if self._sqlite_workers is not None:
            self._sqlite_workers.leave()
        if self.grpc is not None:
            self.notifications.close()
            await self.passkit.close()
        if self._read_engine is not None:
            await self._read_engine.dispose()

    # -- what one part tells the others, here and in the other processes ------------------

    def _enqueued(self) -> None:
        """Sends committed deliveries: the workers claim them now, not at their next poll."""
        self._wake_worker()
        self.wake_ups.tell(Topic.DELIVERIES)

    def _fanning_out(self, ticket_id: int) -> None:
        if self.fanout is not None:
            self.fanout.started(ticket_id)
        self.wake_ups.tell(Topic.FAN_OUT, str(ticket_id))

    def _scheduled(self) -> None:
        self._wake_scheduler()
        self.wake_ups.tell(Topic.SCHEDULES)

    def _changed(self) -> None:
        """Tickets or events changed: every status stream reads again."""
        self.changes.publish()
        self.wake_ups.tell(Topic.CHANGES)

    def _fanned_out_a_chunk(self) -> None:
        self._wake_worker()
        self._changed()

    def _wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    def _wake_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.wake()

    def _fan_out_told(self, payload: str) -> None:
        if self.fanout is not None and payload.isdigit():
            self.fanout.started(int(payload))

    # -- readiness --------------------------------------------------------------------------

    async def _check_writable(self) -> None:
        if self.grpc is not None:
            await self.notifications.check_writable()
        else:
            await check_sessions_writable(self.sessions)
        if self.checkpoints is not None:
            self.checkpoints.check_room()

    async def _set_serving(self, serving: bool) -> None:
        if self.grpc is not None:
            await self.grpc.set_serving(serving)
        self._tell_serving(serving)

    def _tell_serving(self, serving: bool) -> None:
        self.serving = serving
        READY.set(1 if serving else 0)
        for listener in self.on_serving:
            listener(serving)


# -- `passpush serve`: the settings to a running process ---------------------------------------


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


async def serve_http(settings: Settings, listen_fd: int, grpc_target: str) -> int:
    """One HTTP process of `serve`: the shim and the PassKit web service on the socket the
    parent listens on, until SIGTERM or until the parent is gone."""
    from passpush.http.app import HttpServer, create_app
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
        engine,
        sessions,
        connect(engine),
        PassPackager(PassKitSettings(settings.passkit_url, signing)),
        clock=utcnow,
        fetch_sink=ParentFetchSink(parent),  # the parent records them
        registrar=registrar,  # and writes the registrations
    )
    readiness = ParentReadiness()  # the parent tells it
    web = create_app(grpc_target, passkit, settings.passkit_prefix, readiness)
    http = HttpServer(
        web, settings.http_address, inherited_listener(listen_fd), tls_files(settings.tls)
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


class Wallets:
    """The gateways to APNs and Google Wallet of a process that pushes, and the bundled
    fakes standing in for those without settings (`serve --fakes`)."""

    def __init__(self) -> None:
        self.apns: ApnsGateway | None = None
        self.google: GoogleWalletGateway | None = None
        self._fake_apns: FakeApns | None = None
        self._fake_google: FakeGoogleWallet | None = None

    async def open(self, settings: Settings, engine: AsyncEngine) -> bool:
        """False (having said why) when a gateway's settings cannot be used."""
        from passpush.fakes import apns as fake_apns
        from passpush.fakes import google as fake_google

        apns_config = settings.apns
        if apns_config is None and settings.fakes:
            self._fake_apns = fake = await fake_apns.start_bundled_fake(
                Path(settings.data_dir) / "fake-apns"
            )
            apns_config = ApnsConfig(
                endpoint=fake.endpoint,
                ca_file=str(fake.tls.ca_file),
                max_connections=settings.apns_connections,
            )
            log.warning(
                "--fakes: pushing to the bundled fake APNs at %s; Apple deliveries reach no "
                "device (set PASSPUSH_APNS_CERT or PASSPUSH_APNS_KEY_FILE for Apple's)",
                fake.endpoint,
            )
        elif apns_config is None:
            log.warning(
                "no APNs credentials: Apple deliveries will fail with %s "
                "(or run `passpush serve --fakes` to push to a bundled fake)",
                APNS_NOT_CONFIGURED,
            )
        google_config = settings.google
        if google_config is None and settings.fakes:
            self._fake_google = wallet = await fake_google.start_bundled_fake(
                Path(settings.data_dir) / "fake-google"
            )
            google_config = GoogleWalletConfig(
                credentials_file=str(wallet.account.key_file),
                api_base=wallet.api_base,
                token_url=wallet.token_url,
                rate=settings.google_rate,
            )
            log.warning(
                "--fakes: sending to the bundled fake Google Wallet API at %s; Google "
                "deliveries reach no pass (set PASSPUSH_GOOGLE_CREDENTIALS for Google's)",
                wallet.api_base,
            )
        elif google_config is None:
            log.warning(
                "no Google Wallet credentials: Google deliveries will fail with %s "
                "(or run `passpush serve --fakes` to send to a bundled fake)",
                GOOGLE_NOT_CONFIGURED,
            )
        elif google_config.credentials_file is None:
            log.error(
                "PASSPUSH_GOOGLE_API_BASE is set but PASSPUSH_GOOGLE_CREDENTIALS is not: Google "
                "Wallet deliveries will fail with %s",
                GOOGLE_NOT_CONFIGURED,
            )
        try:
            self.apns = ApnsGateway(apns_config) if apns_config is not None else None
        except (OSError, ValueError) as error:
            log.error("cannot use the APNs settings (PASSPUSH_APNS_*): %s", error)
            return False
        try:
            if google_config is not None:
                # Replicas on one PostgreSQL database share each issuer's rate; SQLite is
                # one machine's, whose worker paces its own requests.
                shared = (
                    None
                    if is_sqlite(settings.database_url)
                    else SharedRequestTurns(engine, google_config.rate)
                )
                self.google = GoogleWalletGateway(google_config, shared)
        except (OSError, ValueError) as error:
            log.error("cannot use PASSPUSH_GOOGLE_CREDENTIALS: %s", error)
            return False
        log.info(
            "pushing to APNs at %s and the Google Wallet API at %s",
            apns_config.endpoint if apns_config else "none",
            google_config.api_base if google_config else "none",
        )
        return True

    async def close(self) -> None:
        if self.apns is not None:
            await self.apns.close()
        if self.google is not None:
            await self.google.close()
        if self._fake_apns is not None:
            await self._fake_apns.stop()
        if self._fake_google is not None:
            await self._fake_google.stop()


def warn_if_plaintext(settings: Settings) -> None:
    """Warns of each listen address other machines can reach while TLS is off."""
    if settings.tls is not None:
        return
    for setting, address in (
        ("PASSPUSH_GRPC_ADDRESS", settings.grpc_address),
        ("PASSPUSH_HTTP_ADDRESS", settings.http_address),
    ):
        if not is_loopback(address):
            log.warning(
                "%s is %s, not a loopback address, and TLS is off: API keys and pass "
                "tokens cross the network in plaintext (set PASSPUSH_TLS_CERT and "
                "PASSPUSH_TLS_KEY, or serve behind a proxy that terminates TLS)",
                setting,
                address,
            )


def tls_files(tls: TlsFiles | None) -> tuple[str, str] | None:
    """The HTTP server's certificate and key files: the gRPC server's."""
    return (tls.certificate, tls.private_key) if tls is not None else None


def default_signing(files: SigningFiles | None, *, quiet: bool = False) -> SigningMaterial | None:
    """The server's signing material, checked at start: a mistake shows now, not on a
    device. `quiet`: no warnings (an HTTP process, whose parent gave them)."""
    if files is None:
        if quiet:
            return None
        log.warning(
            "no PASSPUSH_APPLE_SIGNING_CERT: only templates with their own apple_signing "
            "can serve passes"
        )
        return None
    pem = AppleSigningPem(
        Path(files.certificate).read_text(),
        Path(files.private_key).read_text(),
        Path(files.wwdr_certificate).read_text(),
    )
    material = load_signing(pem, field="apple_signing")
    if material.expire_time <= utcnow() and not quiet:
        log.warning(
            "the Pass Type ID certificate of PASSPUSH_APPLE_SIGNING_CERT expired on %s: "
            "devices will refuse the passes it signs",
            material.expire_time.date(),
        )
    return material


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


def _http_child_command(grpc_target: str, listen_fd: int) -> list[str]:
    """`passpush serve-http` by this Python; it reads the same PASSPUSH_* settings."""
    command = [sys.executable, "-m", "passpush.cli", "serve-http"]
    return [*command, f"--listen-fd={listen_fd}", f"--grpc-target={grpc_target}"]


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
