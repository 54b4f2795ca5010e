"""The accept path alone: NotificationCore.send in this process, without gRPC, a server or
pushes (a diagnosis, run with `python -m benchmarks accept-core`).

The same single-pass Sends as accept.py, against a fresh database: a closed loop with
`concurrency` callers (Sends/s and CPU time per Send), then the open loop at `rate`/s.
What it tells apart: how much of the accept benchmark's cost is the core's own transaction.
"""

from __future__ import annotations

import resource
import uuid
from pathlib import Path

from benchmarks.accept import ACCEPT_PASSES, WARMUP_SECONDS, Sender, closed_loop, open_loop
from benchmarks.database import PROJECT, bench_database, pass_id
from benchmarks.harness import Options, Result, log, workspace
from passpush.domain.model import Content, PassTarget
from passpush.service.notifications import NotificationCore
from passpush.store.db import make_engine, make_sessions
from passpush.store.statistics import fresh_statistics

CONTENT = Content("Offer", "20% off today")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def core_sender(core: NotificationCore) -> Sender:
    async def send(index: int) -> object:
        target = PassTarget(pass_id(index % ACCEPT_PASSES))
        return await core.send(PROJECT, target, CONTENT, f"core-{uuid.uuid4()}")

    return send


async def measure(backend: str, workdir: Path, options: Options) -> list[Result]:
    async with bench_database(backend, workdir) as database:
        await database.seed(ACCEPT_PASSES)
        engine = make_engine(database.url)
        core = NotificationCore(engine, make_sessions(engine))
        send = core_sender(core)
        # As every server process does: the plans kept on PostgreSQL follow the tables as
        # they grow from nothing only through these statistics (store/statistics.py).
        statistics = fresh_statistics(engine)
        if statistics is not None:
            statistics.start()
        try:
            await closed_loop(send, WARMUP_SECONDS, options.concurrency)
            cpu = _cpu_seconds()
            throughput = await closed_loop(send, options.throughput_seconds, options.concurrency)
            cpu_ms = (_cpu_seconds() - cpu) / max(1, throughput.calls) * 1000
            latency = await open_loop(send, options.rate, options.duration)
        finally:
            if statistics is not None:
                await statistics.stop()
            core.close()
            await engine.dispose()
    log(f"accept-core on {backend}: {throughput.rate:,.0f} Sends/s, {cpu_ms:.2f} ms CPU a Send")
    return [
        Result(
            f"accept core, {options.concurrency} in flight (no gRPC, no pushes)",
            backend,
            f"{throughput.rate:,.0f} Sends/s, {cpu_ms:.2f} ms CPU a Send",
        ),
        Result(
            f"accept core at {options.rate:.0f}/s x {options.duration:.0f} s",
            backend,
            f"p50 {latency.describe(0.5)}, p99 {latency.describe(0.99)}",
        ),
    ]


async def run(options: Options) -> list[Result]:
    with workspace("accept-core", options) as workdir:
        return [r for backend in options.backends for r in await measure(backend, workdir, options)]
