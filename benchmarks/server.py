"""`passpush serve` as child processes (in one process, or an api and a worker process each),
and a gRPC client for them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.database import PROJECT, TEMPLATE, BenchDatabase
from benchmarks.fake import NodeFake
from benchmarks.harness import TOPIC, VENV_BIN, Child, free_port, peak_rss_mb
from benchmarks.raw_aioapns import throwaway_p8_key
from passpush.fakes.apns import FakeApns
from passpush.fakes.tls import make_client_certificate
from passpush.v1 import notifications_pb2 as pb
from passpush.v1 import notifications_pb2_grpc as pb_grpc
from passpush.v1 import passes_pb2 as ppb

TERMINAL = {
    pb.TICKET_STATE_SUCCEEDED,
    pb.TICKET_STATE_PARTIALLY_FAILED,
    pb.TICKET_STATE_FAILED,
    pb.TICKET_STATE_CANCELLED,
}
CONTENT = pb.Content(header="Benchmark", body="20% off today")
# Separate TCP connections per channel: gRPC would otherwise share one subchannel.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass(frozen=True)
class ApnsAuth:
    """How passpush and the raw loop authenticate to the fake (which checks nothing).

    token: a throwaway .p8 key, an `authorization: bearer <JWT>` header on every push.
    cert: a throwaway Pass Type ID-like client certificate, no header.
    """

    mode: str
    server_env: dict[str, str] = field(default_factory=dict)
    raw_args: list[str] = field(default_factory=list)  # raw_aioapns.py's
    gateway_args: list[str] = field(default_factory=list)  # gateway_loop.py's

    @classmethod
    def make(cls, mode: str, fake: NodeFake | FakeApns, workdir: Path) -> ApnsAuth:
        if mode == "token":
            key_file = workdir / "apns-key.p8"
            key_file.write_text(throwaway_p8_key())
            key_file.chmod(0o600)
            env = {
                "PASSPUSH_APNS_KEY_FILE": str(key_file),
                "PASSPUSH_APNS_KEY_ID": "BENCHKEY01",
                "PASSPUSH_APNS_TEAM_ID": "BENCHTEAM1",
            }
            return cls(mode, env, [], ["--key-file", str(key_file)])
        if mode == "cert":
            cert = make_client_certificate(fake.tls, workdir / "client", TOPIC)
            args = ["--client-cert", str(cert)]
            return cls(mode, {"PASSPUSH_APNS_CERT": str(cert)}, args, args)
        raise ValueError(f"unknown APNs auth {mode!r}: token or cert")


class ServeProcess:
    """One `passpush serve` process (a replica, or its api or worker process)."""

    def __init__(self, child: Child, address: str, metrics_address: str = "") -> None:
        self.child = child
        self.address = address
        self.metrics_address = metrics_address

    @property
    def pid(self) -> int:
        return self.child.pid

    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.child.pid)

    async def wait_ready(self, within: float = 60.0) -> None:
        """A worker process (no gRPC): until its metrics say passpush_ready 1."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                if not self.child.running:
                    raise RuntimeError(f"passpush serve exited early\n{self.child.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    metrics = await http.get(f"http://{self.metrics_address}/metrics")
                    if "\npasspush_ready 1.0" in metrics.text:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"passpush worker not ready\n{self.child.log_tail()}")
                await asyncio.sleep(0.1)

    async def wait_serving(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if not self.child.running:
                    raise RuntimeError(f"passpush serve exited early\n{self.child.log_tail()}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"passpush serve not serving\n{self.child.log_tail()}")
                await asyncio.sleep(0.1)


# Set by the benchmark for each replica; anything else PASSPUSH_* (the worker and connection
# tuning: PASSPUSH_WORKER_*, PASSPUSH_APNS_CONNECTIONS) passes through from the caller.
_OWN_SETTINGS = {
    f"PASSPUSH_{name}"
    for name in (
        "DATABASE_URL",
        "GRPC_ADDRESS",
        "HTTP_ADDRESS",
        "DATA_DIR",
        "APNS_ENDPOINT",
        "APNS_CA_FILE",
        "APNS_CERT",
        "APNS_KEY_FILE",
        "APNS_KEY_ID",
        "APNS_TEAM_ID",
    )
}


def server_env(
    database: BenchDatabase,
    fake: NodeFake | FakeApns,
    auth: ApnsAuth,
    workdir: Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OWN_SETTINGS}
    return env | {
        "PASSPUSH_DATABASE_URL": database.url,
        "PASSPUSH_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
        "PASSPUSH_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
        # Measured with the metrics served, as in production.
        "PASSPUSH_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "PASSPUSH_APNS_ENDPOINT": fake.endpoint,
        "PASSPUSH_APNS_CA_FILE": str(fake.tls.ca_file),
        "PASSPUSH_DATA_DIR": str(workdir / "data"),
        # Stopping is not measured: do not wait long for calls a benchmark gave up on.
        "PASSPUSH_SHUTDOWN_GRACE": os.environ.get("PASSPUSH_SHUTDOWN_GRACE", "3"),
        **auth.server_env,
        **(extra or {}),
    }


@dataclass(frozen=True)
class Deployment:
    key: str  # an API key with every scope, for project `bench`
    servers: list[ServeProcess]  # those serving gRPC: `all` replicas, or `api` processes
    workers: list[ServeProcess] = field(default_factory=list)  # `worker` processes, if split

    @property
    def address(self) -> str:
        return self.servers[0].address


@contextlib.asynccontextmanager
async def serve(
    database: BenchDatabase,
    fake: NodeFake | FakeApns,
    auth: ApnsAuth,
    workdir: Path,
    *,
    replicas: int = 1,
    extra_env: Mapping[str, str] | None = None,
    split_roles: bool = False,
) -> AsyncIterator[Deployment]:
    """Starts `replicas` servers on one (seeded) database and waits until each serves; creates
    the API key meanwhile. `split_roles`: each replica is two processes, `serve --role api`
    and `serve --role worker`."""
    key = asyncio.create_task(database.create_key())
    processes: list[ServeProcess] = []
    workers: list[ServeProcess] = []
    try:
        for index in range(replicas):
            roles = ["api", "worker"] if split_roles else ["all"]
            for role in roles:
                env = server_env(database, fake, auth, workdir, extra_env)
                name = f"serve-{index}" if role == "all" else f"serve-{index}-{role}"
                child = await Child.start(
                    name,
                    [str(VENV_BIN / "passpush"), "serve", "--role", role],
                    workdir / f"{name}.log",
                    env=env,
                )
                process = ServeProcess(
                    child, env["PASSPUSH_GRPC_ADDRESS"], env["PASSPUSH_METRICS_ADDRESS"]
                )
                (workers if role == "worker" else processes).append(process)
        await asyncio.gather(
            *(p.wait_serving() for p in processes), *(w.wait_ready() for w in workers)
        )
        yield Deployment(await key, processes, workers)
    finally:
        key.cancel()
        await asyncio.gather(key, return_exceptions=True)
        await asyncio.gather(*(p.child.stop(grace=6) for p in [*processes, *workers]))


class Client:
    """A pool of gRPC channels to one server, with the API key on every call."""

    def __init__(self, address: str, key: str, channels: int = 1) -> None:
        self._channels = [
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(channels)
        ]
        self._stubs = itertools.cycle([pb_grpc.NotificationServiceStub(c) for c in self._channels])
        self._metadata = (("authorization", f"Bearer {key}"),)

    @property
    def stub(self) -> pb_grpc.NotificationServiceAsyncStub:
        return next(self._stubs)

    async def ready(self) -> None:
        await asyncio.gather(*(c.channel_ready() for c in self._channels))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels))

    async def send(self, request: pb.SendRequest, deadline: float = 600.0) -> pb.Ticket:
        ticket: pb.Ticket = await self.stub.Send(request, metadata=self._metadata, timeout=deadline)
        return ticket

    async def send_template(self, template: str = TEMPLATE) -> pb.Ticket:
        target = pb.Target(template=pb.TemplateRef(template_id=template))
        return await self.send(pb.SendRequest(target=target, content=CONTENT))

    async def get_ticket(self, ticket_id: int) -> pb.Ticket:
        request = pb.GetTicketRequest(id=ticket_id)
        ticket: pb.Ticket = await self.stub.GetTicket(request, metadata=self._metadata, timeout=30)
        return ticket

    async def wait_terminal(
        self, ticket_id: int, within: float, poll: float = 0.1
    ) -> tuple[pb.Ticket, float]:
        """Polls until the ticket is terminal; the ticket and the perf_counter when seen so."""
        deadline = time.monotonic() + within
        while True:
            ticket = await self.get_ticket(ticket_id)
            if ticket.state in TERMINAL:
                return ticket, time.perf_counter()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"ticket {ticket_id} not terminal after {within:.0f} s: "
                    f"{pb.TicketState.Name(ticket.state)} {ticket.counts}"
                )
            await asyncio.sleep(poll)


@contextlib.asynccontextmanager
async def client(address: str, key: str, channels: int = 1) -> AsyncIterator[Client]:
    c = Client(address, key, channels)
    try:
        await c.ready()
        yield c
    finally:
        await c.close()


def apple_template(template_id: str) -> ppb.CreateTemplateRequest:
    """CreateTemplate of an Apple template of project `bench` for the benchmarks' topic."""
    return ppb.CreateTemplateRequest(
        template_id=template_id,
        template=ppb.Template(
            project_id=PROJECT, platform=ppb.PLATFORM_APPLE, pass_type_identifier=TOPIC
        ),
    )
