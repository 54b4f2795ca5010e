"""Accept latency and throughput of single-pass Sends.

Every Send targets one pass (a different pass of a 1,000-pass template each time, each with a
device, so the worker pushes alongside) and carries a fresh request_id, over a pool of gRPC
channels. The passes and their devices are loaded as a user loads them, through
ImportPasses.

1. Closed loop: `concurrency` callers each sending one Send after another for a few seconds,
   against passpush and against a no-op grpc.aio server (noop_server.py) with the same client.
   Bar: passpush ≥ 0.5x the no-op.
2. Open loop: Sends started at fixed intervals, 500/s for 20 s, never waiting for one before
   starting the next. Latency is each call's own (from its start to its answer); the report
   also gives how late the client started calls, so that a client falling behind shows. The
   client gives up once a second's worth of calls is outstanding. Bar: p99 < 5 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from benchmarks import pass_import
from benchmarks.database import bench_database
from benchmarks.fake import NodeFake, node_fake
from benchmarks.harness import Child, Options, Result, cpu_seconds, log, percentile, workspace
from benchmarks.pass_import import imported_pass_id
from benchmarks.server import CONTENT, ApnsAuth, Client, apple_template, client, serve
from passpush.v1 import notifications_pb2 as pb

ACCEPT_PASSES = 1_000
P99_BAR_MS = 5.0
THROUGHPUT_BAR = 0.5
WARMUP_SECONDS = 1.0
NOOP_OPEN_LOOP_SECONDS = 5.0
CALL_DEADLINE = 10.0  # seconds; a call past it counts as failed

Sender = Callable[[int], Awaitable[object]]


@dataclass(frozen=True)
class OpenLoop:
    issued: int
    latencies: list[float]  # seconds, sorted, of the calls that succeeded
    errors: int  # failed calls, deadline exceeded included
    abandoned: int  # calls cancelled when the server fell too far behind
    seconds: float  # from the first call to the last answer
    max_lag: float  # seconds the client started a call late, at worst

    @property
    def overloaded(self) -> bool:
        return self.abandoned > 0

    def ms(self, fraction: float) -> float:
        """Percentile over every issued call; a failed or abandoned one counts as infinite."""
        failed = [float("inf")] * (self.errors + self.abandoned)
        return percentile([*self.latencies, *failed], fraction) * 1000

    def describe(self, fraction: float) -> str:
        value = self.ms(fraction)
        return f"{value:.2f} ms" if value != float("inf") else "unbounded"

    def answered_ms(self, fraction: float) -> float:
        """Percentile over the calls that were answered."""
        return percentile(self.latencies, fraction) * 1000


@dataclass(frozen=True)
class ClosedLoop:
    calls: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


@dataclass(frozen=True)
class Measured:
    """A closed loop with the CPU time each server process spent a call (ms), by name."""

    loop: ClosedLoop
    cpu_ms: dict[str, float]

    def describe_cpu(self) -> str:
        return ", ".join(f"{name} {ms:.2f} ms" for name, ms in self.cpu_ms.items())


async def closed_loop_costing(
    send: Sender, seconds: float, concurrency: int, processes: dict[str, int]
) -> Measured:
    """`closed_loop`, and the CPU time each process (by name: pid) spent a call meanwhile."""
    before = {name: cpu_seconds(pid) or 0.0 for name, pid in processes.items()}
    loop = await closed_loop(send, seconds, concurrency)
    calls = max(1, loop.calls)
    spent = {
        name: ((cpu_seconds(pid) or 0.0) - before[name]) / calls * 1000
        for name, pid in processes.items()
    }
    return Measured(loop, spent)


def single_pass_sender(c: Client) -> Sender:
    async def send(index: int) -> object:
        target = pb.Target(pass_id=imported_pass_id(index % ACCEPT_PASSES))
        request_id = f"accept-{uuid.uuid4()}"  # as a careful caller would (idempotency)
        request = pb.SendRequest(target=target, content=CONTENT, request_id=request_id)
        return await c.send(request, deadline=CALL_DEADLINE)

    return send


@contextlib.contextmanager
def client_gc_paused() -> Iterator[None]:
    """No collection in this process (the client, apart from the server) while it measures:
    a full one stopped it for 82 ms once in a 20-s open loop (2026-12-04), which every call
    then in flight counted as the server's latency. What the client made before is frozen,
    what it makes meanwhile is collected after. (Not for accept-core, whose client shares
    its process with the core measured.)"""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def open_loop(send: Sender, rate: float, duration: float) -> OpenLoop:
    """Starts calls at fixed intervals whatever the answers; gives up (cancelling what is left)
    once a second's worth of calls (at most half of them) is outstanding."""
    loop = asyncio.get_running_loop()
    total = int(rate * duration)
    most_outstanding = max(50, min(int(rate), total // 2))
    latencies: list[float] = []
    errors = 0
    max_lag = 0.0

    async def one(index: int) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            await send(index)
        except grpc.aio.AioRpcError:
            errors += 1
            return
        latencies.append(time.perf_counter() - started)

    calls: list[asyncio.Task[None]] = []
    began = time.perf_counter()
    start = loop.time() + 0.05
    for index in range(total):
        due = start + index / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        max_lag = max(max_lag, loop.time() - due)
        calls.append(asyncio.create_task(one(index)))
        if len(calls) - len(latencies) - errors > most_outstanding:
            log(f"accept: {most_outstanding} calls outstanding after {index + 1}: giving up")
            break
    _, pending = await asyncio.wait(calls, timeout=0 if len(calls) < total else None)
    for call in pending:
        call.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    seconds = time.perf_counter() - began
    return OpenLoop(len(calls), sorted(latencies), errors, len(pending), seconds, max_lag)


async def closed_loop(send: Sender, seconds: float, concurrency: int) -> ClosedLoop:
    counter = itertools.count()
    calls = 0
    errors = 0
    started = time.perf_counter()
    stop_at = started + seconds

    async def lane() -> None:
        nonlocal calls, errors
        while time.perf_counter() < stop_at:
            try:
                await send(next(counter))
                calls += 1
            except grpc.aio.AioRpcError:
                errors += 1

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return ClosedLoop(calls, errors, time.perf_counter() - started)


async def measure_noop(workdir: Path, options: Options) -> tuple[Measured, OpenLoop]:
    """The same two loops against the no-op server: the ceiling and the latency floor
    (the open loop for at most NOOP_OPEN_LOOP_SECONDS)."""
    child = await Child.start(
        "noop-grpc",
        [sys.executable, "-m", "benchmarks.noop_server"],
        workdir / "noop.log",
        stdout_pipe=True,
    )
    try:
        port = int((await child.read_line(within=30)).split()[1])
        async with client(f"127.0.0.1:{port}", "noop", options.channels) as c:
            send = single_pass_sender(c)
            await closed_loop(send, WARMUP_SECONDS, options.concurrency)
            with client_gc_paused():
                measured = await closed_loop_costing(
                    send, options.throughput_seconds, options.concurrency, {"no-op": child.pid}
                )
            seconds = min(options.duration, NOOP_OPEN_LOOP_SECONDS)
            with client_gc_paused():
                latency = await open_loop(send, options.rate, seconds)
    finally:
        await child.stop(grace=5)
    log(
        f"accept: no-op grpc.aio server, {measured.loop.rate:,.0f} Sends/s closed loop "
        f"(CPU a Send: {measured.describe_cpu()}); "
        f"at {options.rate:.0f}/s p50 {latency.describe(0.5)}, p99 {latency.describe(0.99)}"
    )
    return measured, latency


async def measure_backend(
    backend: str,
    fake: NodeFake,
    auth: ApnsAuth,
    workdir: Path,
    options: Options,
    noop: Measured,
) -> list[Result]:
    async with bench_database(backend, workdir) as database:
        split = options.accept_roles == "split"
        async with (
            serve(database, fake, auth, workdir, split_roles=split) as deployment,
            client(deployment.address, deployment.key, options.channels) as c,
        ):
            # As a user loads them: through ImportPasses, a device each.
            imported = pass_import.requests(ACCEPT_PASSES)
            template = apple_template(pass_import.TEMPLATE)
            await pass_import.load(deployment.address, deployment.key, imported, template)
            send = single_pass_sender(c)
            await fake.reset()
            warmup = await closed_loop(send, WARMUP_SECONDS, 8)
            # Throughput first: a closed loop cannot leave calls behind, an overloaded open
            # loop can (calls given up by the client may still hold the server for a while).
            processes = {"api" if split else "server": deployment.servers[0].pid}
            if deployment.workers:
                processes["worker"] = deployment.workers[0].pid
            with client_gc_paused():
                measured = await closed_loop_costing(
                    send, options.throughput_seconds, options.concurrency, processes
                )
            throughput = measured.loop
            log(
                f"accept on {backend}: {throughput.rate:,.0f} Sends/s closed loop "
                f"(CPU a Send: {measured.describe_cpu()})"
            )
            # It leaves pushes behind, though: the open loop starts once they are out.
            await fake.wait_for(warmup.calls + throughput.calls, within=120)
            with client_gc_paused():
                latency = await open_loop(send, options.rate, options.duration)
            log(
                f"accept on {backend}: {latency.issued:,} Sends at {options.rate:.0f}/s: "
                f"p50 {latency.describe(0.5)}, p99 {latency.describe(0.99)}, "
                f"max {latency.describe(1.0)}, {latency.errors} errors, "
                f"{latency.abandoned} abandoned, "
                f"client late by {latency.max_lag * 1000:.1f} ms at worst"
            )
    ratio = throughput.rate / noop.loop.rate
    roles = " (api + worker processes)" if options.accept_roles == "split" else " (one process)"
    name = f"accept {options.rate:.0f}/s x {options.duration:.0f} s{roles}"
    notes = []
    if latency.errors:
        notes.append(f"{latency.errors} errors")
    if latency.overloaded:
        sustained = len(latency.latencies) / latency.seconds
        notes.append(f"overloaded: gave up after {latency.issued:,} calls, ~{sustained:,.0f}/s")
    note = f" ({', '.join(notes)})" if notes else ""
    return [
        Result(
            f"{name}: Send p50",
            backend,
            f"{latency.describe(0.5)} (p90 {latency.describe(0.9)}, max {latency.describe(1.0)})"
            if not latency.overloaded
            else f"unbounded (of the {len(latency.latencies)} answered: "
            f"p50 {latency.answered_ms(0.5):.0f} ms, p99 {latency.answered_ms(0.99):.0f} ms)"
            if latency.latencies
            else "unbounded (no call answered)",
        ),
        Result(
            f"{name}: Send p99",
            backend,
            f"{latency.describe(0.99)}{note}",
            f"< {P99_BAR_MS:.0f} ms",
            latency.ms(0.99) < P99_BAR_MS,
        ),
        Result(
            f"accept throughput, {options.concurrency} in flight{roles}",
            backend,
            f"{throughput.rate:,.0f} Sends/s = {ratio:.2f}x no-op"
            + (f", {throughput.errors} errors" if throughput.errors else "")
            + f" (CPU a Send: {measured.describe_cpu()}; {noop.describe_cpu()})",
            f"≥ {THROUGHPUT_BAR}x no-op",
            ratio >= THROUGHPUT_BAR and throughput.errors == 0,
        ),
    ]


async def run(options: Options) -> list[Result]:
    with workspace("accept", options) as workdir:
        async with node_fake(workdir) as fake:
            auth = ApnsAuth.make(options.apns_auth, fake, workdir)
            noop, floor = await measure_noop(workdir, options)
            results = [
                Result(
                    f"accept throughput, {options.concurrency} in flight: no-op grpc.aio",
                    "—",
                    f"{noop.loop.rate:,.0f} Sends/s (CPU a Send: {noop.describe_cpu()})",
                ),
                Result(
                    f"accept {options.rate:.0f}/s: no-op grpc.aio latency",
                    "—",
                    f"p50 {floor.describe(0.5)}, p99 {floor.describe(0.99)} "
                    f"(over {floor.seconds:.0f} s)",
                ),
            ]
            for backend in options.backends:
                results += await measure_backend(backend, fake, auth, workdir, options, noop)
            return results
