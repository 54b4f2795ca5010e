"""`Application`: what one passpush process builds, starts and stops, for its role (the
package's docstring says what each role holds). The tests build it directly, with their
fakes; `serving.py` builds it from the settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.api.server import DEFAULT_MAX_MESSAGE_BYTES, ApiCores, GrpcServer
from passpush.config import Role
from passpush.delivery.apple.deliverer import ApplePushGateway
from passpush.delivery.google.gateway import GoogleWalletGateway
from passpush.delivery.worker import DeliveryWorker, WorkerSettings
from passpush.domain.clock import Clock, utcnow
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
from passpush.store.connectors import connect, connect_standalone
from passpush.store.connectors.session import run_on_session
from passpush.store.db import make_read_engine, make_sessions, sqlite_file
from passpush.store.faults import DATABASE_ERRORS, error_code
from passpush.store.listen import NotifyWakeUps
from passpush.store.schedules import ScheduleStore
from passpush.store.sqlite_workers import SqliteWorkers
from passpush.store.statistics import fresh_statistics
from passpush.store.wake_sockets import SocketWakeUps
from passpush.store.wakeups import NoWakeUps, Topic, WakeUps

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
            connect_standalone(engine),
            sessions,
            transactions,
            packager,
            clock=clock,
            fetch_sink=self.fetches,
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

    def _enqueued(self, others_told: bool) -> None:
        """Sends committed deliveries: the workers claim them now, not at their next poll
        (the other processes' were told already if `others_told`)."""
        self._wake_worker()
        if not others_told:
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
