"""Builds the gRPC server: the servicers over the cores, the interceptors, health, reflection.

What the servicers call (the cores) is built and started by the composition root
(passpush/app/application.py); this module only puts them on a port.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from passpush.api.admin import AdminServicer
from passpush.api.health import HealthServicer
from passpush.api.interceptors import CallInterceptor
from passpush.api.metrics import RpcMetricsInterceptor
from passpush.api.notifications import NotificationServicer
from passpush.api.passes import PassServicer
from passpush.api.reflection import enable_reflection
from passpush.service.keys import KeyCore
from passpush.service.notifications import NotificationCore
from passpush.service.passes import PassCore
from passpush.service.schedules import ScheduleCore
from passpush.service.status import EventStreams, TicketWatch
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


@dataclass(frozen=True)
class ApiCores:
    """The use cases the gRPC services translate to."""

    notifications: NotificationCore
    schedules: ScheduleCore
    watch: TicketWatch
    events: EventStreams
    passes: PassCore
    keys: KeyCore


class GrpcServer:
    """passpush's gRPC services on one address (and, with TLS, a local Unix socket)."""

    def __init__(
        self,
        cores: ApiCores,
        *,
        address: str = "127.0.0.1:0",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        """`credentials`: TLS on `address` (passpush.tls); None: plaintext. OSError when
        `address` cannot be listened on."""
        self.health = HealthServicer()
        # No SO_REUSEPORT: a second server on a taken port must fail, not share its calls.
        self.server = grpc.aio.server(
            # Outermost, the metrics: they see every call's status, refusals included.
            interceptors=[RpcMetricsInterceptor(), CallInterceptor(cores.keys)],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        notifications_pb2_grpc.add_NotificationServiceServicer_to_server(
            NotificationServicer(cores.notifications, cores.schedules, cores.watch, cores.events),
            self.server,
        )
        passes_pb2_grpc.add_PassServiceServicer_to_server(PassServicer(cores.passes), self.server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(cores.keys), self.server)
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
            self._remove_socket_dir()
            raise OSError(f"cannot listen on {address}")

    async def start(self) -> None:
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        """The whole server's health, and each passpush service's."""
        status = health_pb2.HealthCheckResponse.SERVING
        if not serving:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def enter_graceful_shutdown(self) -> None:
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Stops taking calls; lets those in flight finish within `grace` seconds."""
        await self.server.stop(grace)
        self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
