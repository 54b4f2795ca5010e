"""Apple devices against the PassKit web service: wrk (C, HTTP/1.1) running devices.lua.

Each wrk thread has one keep-alive connection and walks its own slice of the devices (see
devices.lua). wrk itself always runs for its `-d` duration, so the script says when each
thread is through and this module then stops wrk with SIGINT (wrk's own way to end early:
it joins its threads and runs the script's done(), which writes the figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmarks.harness import BENCH_DIR, Child, cpu_seconds, percentile

WRK = shutil.which("wrk") or "/usr/bin/wrk"
SCRIPT = BENCH_DIR / "devices.lua"
THREADS = 16


@dataclass(frozen=True)
class Device:
    """A Wallet device holding one pass."""

    library_id: str
    serial: str
    token: str  # the pass's authenticationToken
    push_token: str
    tag: str = "-"  # the update tag it last saw (its passesUpdatedSince)


@dataclass
class WrkReport:
    """What one wrk run saw: requests, failures, latencies and the devices' new tags."""

    requests: int
    bad: int  # responses that were not what a working service answers
    statuses: dict[int, int]
    latencies_us: list[float]  # sorted
    first_us: float  # epoch microseconds of the first request sent
    last_us: float  # and of the last response
    threads_finished: int
    threads: int
    rounds: int  # each device's rounds; 0: until stopped
    tags: dict[str, str] = field(default_factory=dict)  # device -> lastUpdated
    failures: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0  # wrk's own CPU time (the load client's cost)

    @property
    def seconds(self) -> float:
        return max(1e-9, (self.last_us - self.first_us) / 1e6)

    def rate(self, count: int | None = None) -> float:
        return (self.requests if count is None else count) / self.seconds

    def p(self, fraction: float) -> float:
        """A latency percentile, in milliseconds."""
        return percentile(self.latencies_us, fraction) / 1000

    def check(self, what: str) -> None:
        """An error unless every response was right: a run of 401s measures nothing."""
        if self.bad or (self.rounds > 0 and self.threads_finished < self.threads):
            raise RuntimeError(
                f"{what}: {self.bad} wrong responses of {self.requests} "
                f"(statuses {self.statuses}), {self.threads_finished}/{self.threads} threads "
                f"through; e.g. {self.failures[:3]}"
            )


async def run_devices(
    mode: str,
    base_url: str,
    devices: Sequence[Device],
    workdir: Path,
    *,
    prefix: str,
    pass_type: str,
    rounds: int = 1,
    stop: asyncio.Event | None = None,
    within: float = 900.0,
    threads: int = THREADS,
) -> WrkReport:
    """Runs devices.lua in `mode` over the devices, `rounds` times each (0: until `stop`)."""
    threads = max(1, min(threads, len(devices)))
    run = workdir / f"wrk-{mode}-{_next_run()}"
    devices_file = run.with_suffix(".devices")
    devices_file.write_text(
        "".join(
            f"{d.library_id}\t{d.serial}\t{d.token}\t{d.tag}\t{d.push_token}\n" for d in devices
        )
    )
    command = [WRK, "-t", str(threads), "-c", str(threads), "-d", f"{int(within)}s"]
    command += ["--timeout", "60s", "-s", str(SCRIPT), base_url, "--", mode]
    command += [str(devices_file), prefix, pass_type, str(rounds), str(threads), str(run)]
    child = await Child.start(f"wrk-{mode}", command, run.with_suffix(".log"), stdout_pipe=True)
    try:
        if rounds > 0:
            await _threads_done(child, threads, within)
        else:
            assert stop is not None, "rounds=0 runs until stop is set"
            await stop.wait()
        used = cpu_seconds(child.pid) or 0.0
        await _interrupt(child)
    finally:
        await child.stop(grace=5)
    return replace(_report(run, threads, rounds), cpu_seconds=used)


async def _threads_done(child: Child, threads: int, within: float) -> None:
    assert child.process.stdout is not None
    done = 0
    async with asyncio.timeout(within):
        while done < threads:
            line = await child.process.stdout.readline()
            if not line:
                return  # wrk ended (its duration ran out): the report says how far it got
            done += line.startswith(b"DONE ")


async def _interrupt(child: Child) -> None:
    """SIGINT until wrk exits: it ignores the signal until its threads run."""
    for _ in range(100):
        if not child.running:
            break
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGINT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await asyncio.shield(child.process.wait())
    assert child.process.stdout is not None
    await child.process.stdout.read()  # wrk's own report: not used


def _report(run: Path, threads: int, rounds: int) -> WrkReport:
    summary = run.with_suffix(".summary")
    if not summary.exists():
        raise RuntimeError(f"wrk wrote no figures; see {run.with_suffix('.log')}")
    requests = bad = finished = 0
    first, last = float("inf"), 0.0
    statuses: dict[int, int] = {}
    failures: list[str] = []
    for line in summary.read_text().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "thread":
            _, count, wrong, first_us, last_us, through = rest.split()
            requests += int(count)
            bad += int(wrong)
            finished += through == "true"
            if int(count):
                first, last = min(first, float(first_us)), max(last, float(last_us))
        elif kind == "status":
            status, count = rest.split()
            statuses[int(status)] = statuses.get(int(status), 0) + int(count)
        elif kind == "failure":
            failures.append(rest)
    latencies = sorted(float(v) for v in run.with_suffix(".latency").read_text().split())
    tags = dict(
        line.split("\t", 1) for line in run.with_suffix(".tags").read_text().splitlines() if line
    )
    return WrkReport(
        requests,
        bad,
        statuses,
        latencies,
        first if requests else 0.0,
        last,
        finished,
        threads,
        rounds,
        tags,
        failures,
    )


_runs = 0


def _next_run() -> int:
    global _runs
    _runs += 1
    return _runs
