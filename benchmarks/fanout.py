"""Fan-out: Send to a template of N ACTIVE passes until the ticket is terminal, against a raw
aioapns loop pushing the same count to the same fake APNs in the same run (bar: ≥ 0.9x)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import pass_import
from benchmarks.database import TEMPLATE, bench_database
from benchmarks.fake import NodeFake, node_fake
from benchmarks.harness import Options, Result, log, run_command, workspace
from benchmarks.server import ApnsAuth, apple_template, client, serve
from passpush.v1 import notifications_pb2 as pb

RATIO_BAR = 0.9


@dataclass(frozen=True)
class RawRun:
    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds


@dataclass(frozen=True)
class FanoutRun:
    backend: str
    replicas: int
    passes: int
    send_seconds: float  # the Send call alone (the outbox is filled inside it)
    seconds: float  # from the start of the Send call to the ticket seen terminal
    state: str
    delivered: int
    pushed: int  # what the fake counted
    peak_rss_mb: tuple[float, ...]  # per replica

    @property
    def rate(self) -> float:
        return self.passes / self.seconds

    @property
    def complete(self) -> bool:
        return self.state == "TICKET_STATE_SUCCEEDED" and self.delivered == self.passes

    def summary(self) -> str:
        rss = " + ".join(f"{mb:.0f}" for mb in self.peak_rss_mb)
        return (
            f"{self.backend}, {self.replicas} replica(s): {self.passes:,} pushes in "
            f"{self.seconds:.1f} s = {self.rate:,.0f}/s (Send {self.send_seconds * 1000:.0f} ms, "
            f"{self.state}, delivered {self.delivered:,}, fake counted {self.pushed:,}, "
            f"peak RSS {rss} MB)"
        )


def fanout_limit(passes: int) -> float:
    return 120 + passes / 100  # generous: 100 pushes/s at the very least


async def run_raw(
    fake: NodeFake, auth: ApnsAuth, count: int, options: Options, *, gateway: bool = False
) -> RawRun:
    """The raw aioapns loop (or, with `gateway`, the same loop through passpush's gateway), in
    a process of its own; the fake checks the count."""
    module, extra = (
        ("gateway_loop", auth.gateway_args) if gateway else ("raw_aioapns", auth.raw_args)
    )
    command = [sys.executable, "-m", f"benchmarks.{module}", "--port", str(fake.port)]
    command += ["--ca", str(fake.tls.ca_file), "--count", str(count)]
    command += ["--connections", str(options.connections), "--in-flight", str(options.in_flight)]
    await fake.reset()
    output = await run_command([*command, *extra], within=fanout_limit(count))
    report = json.loads(output.strip().splitlines()[-1])
    warmup = min(options.in_flight, count)
    stats = await fake.stats()
    if report["ok"] != count or stats.count != count + warmup:
        raise RuntimeError(f"{module}: {report['ok']} ok, fake counted {stats.count}")
    raw = RawRun(count, report["seconds"])
    log(f"{module}: {count:,} pushes in {raw.seconds:.1f} s = {raw.rate:,.0f}/s")
    return raw


async def run_gateway(options: Options) -> list[Result]:
    """Where the time goes: passpush's gateway alone (no database, no worker) against the raw
    aioapns loop, same fake, same count, raw-gateway-raw-gateway."""
    with workspace("gateway", options) as workdir:
        async with node_fake(workdir) as fake:
            auth = ApnsAuth.make(options.apns_auth, fake, workdir)
            raw: list[RawRun] = []
            gateway: list[RawRun] = []
            for _ in range(2):
                raw.append(await run_raw(fake, auth, options.passes, options))
                gateway.append(await run_raw(fake, auth, options.passes, options, gateway=True))
    raw_rate = sum(r.rate for r in raw) / len(raw)
    gateway_rate = sum(g.rate for g in gateway) / len(gateway)
    return [
        Result(f"gateway {options.passes:,}: raw aioapns loop", "—", f"{raw_rate:,.0f} pushes/s"),
        Result(
            f"gateway {options.passes:,}: passpush gateway loop",
            "—",
            f"{gateway_rate:,.0f} pushes/s = {gateway_rate / raw_rate:.2f}x raw",
        ),
    ]


async def measure_fanout(
    backend: str,
    passes: int,
    fake: NodeFake,
    auth: ApnsAuth,
    workdir: Path,
    *,
    replicas: int = 1,
    through_api: bool = False,
) -> FanoutRun:
    """Seeds a fresh database (or, `through_api`, imports the passes with their devices
    through ImportPasses, as a user loads them, and Sends at once), starts the replicas,
    Sends to the template (on the first replica) and waits for the ticket to be terminal."""
    async with bench_database(backend, workdir) as database:
        if not through_api:
            await database.seed(passes)
        async with serve(database, fake, auth, workdir, replicas=replicas) as deployment:
            servers = deployment.servers
            if through_api:
                imported = pass_import.requests(passes, TEMPLATE)
                seconds, _ = await pass_import.load(
                    deployment.address, deployment.key, imported, apple_template(TEMPLATE)
                )
                log(f"fanout: {passes:,} passes imported through the API in {seconds:.1f} s")
            await fake.reset()
            async with client(deployment.address, deployment.key) as c:
                started = time.perf_counter()
                ticket = await c.send_template()
                send_seconds = time.perf_counter() - started
                final, finished = await c.wait_terminal(ticket.id, fanout_limit(passes))
            stats = await fake.wait_for(passes, within=5)
            rss = tuple(s.peak_rss_mb() or 0.0 for s in servers)
    result = FanoutRun(
        backend=backend,
        replicas=replicas,
        passes=passes,
        send_seconds=send_seconds,
        seconds=finished - started,
        state=pb.TicketState.Name(final.state),
        delivered=final.counts.delivered,
        pushed=stats.count,
        peak_rss_mb=rss,
    )
    log(f"passpush fan-out: {result.summary()}")
    return result


async def run(options: Options) -> list[Result]:
    with workspace("fanout", options) as workdir:
        async with node_fake(workdir) as fake:
            auth = ApnsAuth.make(options.apns_auth, fake, workdir)
            raw = await run_raw(fake, auth, options.passes, options)
            results = [
                Result(
                    f"fanout {options.passes:,}: raw aioapns loop",
                    "—",
                    f"{raw.rate:,.0f} pushes/s",
                )
            ]
            for backend in options.backends:
                log(f"fanout: {options.passes:,} passes on {backend}")
                measured = await measure_fanout(backend, options.passes, fake, auth, workdir)
                ratio = measured.rate / raw.rate
                figure = f"{measured.rate:,.0f} pushes/s = {ratio:.2f}x raw"
                if not measured.complete:
                    figure += f" ({measured.state}, {measured.delivered:,} delivered)"
                results += [
                    Result(
                        f"fanout {options.passes:,}: passpush",
                        backend,
                        figure,
                        f"≥ {RATIO_BAR}x raw",
                        ratio >= RATIO_BAR and measured.complete,
                    ),
                    Result(
                        "fanout: server peak RSS",
                        backend,
                        f"{measured.peak_rss_mb[0]:.0f} MB",
                    ),
                ]
                if backend != "postgresql":
                    continue
                # As a user loads them: through ImportPasses, then a Send at once (the
                # planner's statistics must follow the load, not lag behind it).
                log(f"fanout: {options.passes:,} passes imported through the API, on {backend}")
                loaded = await measure_fanout(
                    backend, options.passes, fake, auth, workdir, through_api=True
                )
                ratio = loaded.rate / raw.rate
                results.append(
                    Result(
                        f"fanout {options.passes:,}: passpush, right after an import via the API",
                        backend,
                        f"{loaded.rate:,.0f} pushes/s = {ratio:.2f}x raw",
                        f"≥ {RATIO_BAR}x raw",
                        ratio >= RATIO_BAR and loaded.complete,
                    )
                )
            return results
