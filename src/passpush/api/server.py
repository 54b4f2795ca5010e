"""Builds the gRPC server: the services, reflection, health, and the delivery worker."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Callable
from datetime import timedelta

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.api.admin import AdminServicer
from passpush.api.health import HealthServicer
from passpush.api.interceptors import CallInterceptor
from passpush.api.metrics import RpcMetricsInterceptor
from passpush.api.notifications import NotificationServicer
from passpush.api.passes import PassServicer
from passpush.api.reflection import enable_reflection
from passpush.delivery.google import GoogleWalletGateway
from passpush.delivery.worker import ApplePushGateway, DeliveryWorker, WorkerSettings
from passpush.domain.clock import Clock, utcnow
from passpush.outbox.fanout import FanOut
from passpush.outbox.fanout_chunks import FANOUT_CHUNK
from passpush.service.fetches import FetchBatcher, FetchRecorder
from passpush.service.keys import DEFAULT_CACHE_SECONDS, KeyCore
from passpush.service.notifications import NotificationCore
from passpush.service.outbox_depth import OutboxDepth
from passpush.service.passes import PassCore
from passpush.service.passkit import PassKitCore, PassKitSettings, PassPackager
from passpush.service.readiness import DatabaseReadiness
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
from passpush.store.db import make_read_sessions
from passpush.store.listen import ChangeListener
from passpush.store.statistics import fresh_statistics
from passpush.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    notifications_pb2,
    notifications_pb2_grpc,
    passes_pb2,
    passes_pb2_grpc,
)

log = logging.getLogger(__name__)

# The largest request the server takes in; larger ones are RESOURCE_EXHAUSTED before any
# servicer sees them. gRPC's own default, and room for SetPassContent's 3 MiB of content.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

SERVICE_NAMES = (
    notifications_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name,
    passes_pb2.DESCRIPTOR.services_by_name["PassService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


class PasspushServer:
    """The gRPC server and its delivery worker, started and stopped together."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        apns: ApplePushGateway | None,
        google: GoogleWalletGateway | None = None,
        *,
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
        """`credentials`: TLS on `address` (passpush.tls); None: plaintext."""
        self.changes = ChangeFeed()
        self.worker = DeliveryWorker(
            sessions,
            apns,
            google,
            clock=clock,
            settings=worker_settings,
            on_recorded=self.changes.publish,
        )
        self.fanout = FanOut(
            sessions, clock=clock, chunk=fanout_chunk, on_chunk=self._fanned_out_a_chunk
        )
        self.notifications = NotificationCore(
            sessions,
            clock=clock,
            on_enqueued=self.worker.wake,
            fanout_chunk=fanout_chunk,
            on_fanning_out=self.fanout.started,
        )
        self.scheduler = Scheduler(
            sessions,
            clock=clock,
            on_sent=self.worker.wake,
            fanout_chunk=fanout_chunk,
            on_fanning_out=self.fanout.started,
        )
        self.schedules = ScheduleCore(sessions, clock=clock, on_scheduled=self.scheduler.wake)
        packager = PassPackager(passkit or PassKitSettings())
        engine = sessions.kw["bind"]
        transactions = connect(engine)  # closed with the PassKit core
        # PostgreSQL: statistics analyzed right after a bulk change, not a minute later.
        self.statistics = fresh_statistics(engine)
        self.passes = PassCore(
            sessions,
            clock=clock,
            packager=packager,
            transactions=transactions,
            after_import=self.statistics.after_bulk_change if self.statistics else None,
        )
        # Which devices fetched the notifications, recorded in batches.
        self.fetch_recorder = FetchRecorder(transactions, on_recorded=self.changes.publish)
        self.fetches = FetchBatcher(self.fetch_recorder.record)
        # The PassKit web service: the HTTP server's device routes call it in-process.
        self.passkit = PassKitCore(
            sessions, transactions, packager, clock=clock, fetch_sink=self.fetches
        )
        self.keys = KeyCore(sessions, clock=clock, cache_seconds=key_cache_seconds)
        # The streams only read: on SQLite, beside the writer rather than behind it.
        reads, self._read_engine = make_read_sessions(sessions)
        self.watch = TicketWatch(reads, self.changes)
        self.events = EventStreams(reads, self.changes)
        self.retention = EventRetention(sessions, event_retention, clock=clock)
        # The outbox's depth, for the metrics: read only where they are served.
        self.outbox_depth = OutboxDepth(reads, clock=clock) if measure_outbox else None
        # SQLite: the WAL checkpointed here, so that no commit waits for the disk's sync.
        self.checkpoints = wal_checkpoints(engine)
        # Other replicas' outcomes reach this one's streams through PostgreSQL.
        self.listener = (
            ChangeListener(engine.url.render_as_string(hide_password=False), self.changes.publish)
            if engine.dialect.name == "postgresql"
            else None
        )
        self.health = HealthServicer()
        # Whether the health service says SERVING, and who else wants to know (the HTTP
        # processes' /readyz).
        self.serving = False
        self.on_serving: list[Callable[[bool], None]] = []
        # NOT_SERVING while the database cannot be written (a full disk, a read-only file).
        self.readiness = DatabaseReadiness(
            self._check_writable, self._set_serving, every=readiness_interval
        )
        # No SO_REUSEPORT: a second server on a taken port must fail, not share its calls.
        self.server = grpc.aio.server(
            # Outermost, the metrics: they see every call's status, refusals included.
            interceptors=[RpcMetricsInterceptor(), CallInterceptor(self.keys)],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        notifications_pb2_grpc.add_NotificationServiceServicer_to_server(
            NotificationServicer(self.notifications, self.schedules, self.watch, self.events),
            self.server,
        )
        passes_pb2_grpc.add_PassServiceServicer_to_server(PassServicer(self.passes), self.server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(self.keys), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection(self.server, (*SERVICE_NAMES, health.SERVICE_NAME))
        # Where the HTTP shim, a client in this machine, calls the server: None for the
        # listen address itself. With TLS, a Unix socket in a directory of this user's
        # alone: the shim then needs neither a name the certificate holds, nor a client
        # certificate, nor the CA; and no other user of the machine gets around TLS.
        self.local_target: str | None = None
        self._socket_dir: str | None = None
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
                self._socket_dir = tempfile.mkdtemp(prefix="passpush-")  # mode 0700
                self.local_target = f"unix:{self._socket_dir}/grpc.sock"
                self.server.add_insecure_port(self.local_target)
        except RuntimeError:  # grpc's "Failed to bind to address" (older versions return 0)
            self.port = 0
        if self.port == 0:
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
            raise OSError(f"cannot listen on {address}")

    async def start(self) -> None:
        if self.listener is not None:
            self.listener.start()
        self.retention.start()
        if self.outbox_depth is not None:
            self.outbox_depth.start()
        if self.checkpoints is not None:
            self.checkpoints.start()
        if self.statistics is not None:
            self.statistics.start()
        self.fetches.start()
        await self.server.start()
        self.worker.start()
        # Beside the worker: a broadcast's chunks are its next deliveries.
        self.fanout.start()
        self.scheduler.start()
        await self._set_serving(True)
        self.readiness.start()

    async def _check_writable(self) -> None:
        await self.notifications.check_writable()
        if self.checkpoints is not None:
            self.checkpoints.check_room()

    def _fanned_out_a_chunk(self) -> None:
        self.worker.wake()
        self.changes.publish()

    async def _set_serving(self, serving: bool) -> None:
        """The whole server's health, and each passpush service's."""
        status = health_pb2.HealthCheckResponse.SERVING
        if not serving:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)
        self._tell_serving(serving)

    def _tell_serving(self, serving: bool) -> None:
        self.serving = serving
        for listener in self.on_serving:
            listener(serving)

    async def stop(self, grace: float) -> None:
        """Stops taking calls, lets in-flight calls and the batch in hand finish within `grace`."""
        await self.health.enter_graceful_shutdown()
        self._tell_serving(False)
        await self.readiness.stop()
        # Subscriptions never end on their own: tell them to resume elsewhere.
        self.changes.close()
        await self.watch.stop()
        # Side by side, so that shutdown takes `grace`, not twice it; Send commits its
        # deliveries before answering, so the worker need not outlive the calls.
        await self.scheduler.stop()
        await self.fanout.stop()  # where it stops, its cursor says; it resumes at start
        await asyncio.gather(self.server.stop(grace), self.worker.stop(grace))
        await self.fetches.stop()
        await self.retention.stop()
        if self.outbox_depth is not None:
            await self.outbox_depth.stop()
        if self.checkpoints is not None:
            await self.checkpoints.stop()
        if self.statistics is not None:
            await self.statistics.stop()
        if self.listener is not None:
            await self.listener.stop()
        self.notifications.close()
        await self.passkit.close()
        if self._read_engine is not None:
            await self._read_engine.dispose()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
