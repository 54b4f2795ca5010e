"""Apple devices against the PassKit web service: device_client.c, a load client in C.

It is built here with the system's C compiler (once a process, into a temporary folder)
and run once for each phase. Each of its keep-alive connections walks its own slice of
the devices (see device_client.c); it exits when they are through, or on SIGINT for a phase
that runs until it is stopped, and writes its figures beside the devices' file.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import itertools
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.harness import BENCH_DIR, Child, percentile

SOURCE = BENCH_DIR / "device_client.c"
CONNECTIONS = 16


@dataclass(frozen=True)
class Device:
    """A Wallet device holding one pass."""

    library_id: str
    serial: str
    token: str  # the pass's authenticationToken
    push_token: str
    tag: str = "-"  # the update tag it last saw (its passesUpdatedSince)


@dataclass
class DevicesReport:
    """What one run of the devices saw: requests, failures, latencies and the devices' new tags."""

    requests: int
    bad: int  # responses that were not what a working service answers
    statuses: dict[int, int]
    latencies_us: list[float]  # sorted
    first_us: float  # epoch microseconds of the first request sent
    last_us: float  # and of the last response
    connections_finished: int
    connections: int
    rounds: int  # each device's rounds; 0: until stopped
    tags: dict[str, str] = field(default_factory=dict)  # device -> lastUpdated
    failures: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0  # the client's own CPU time (the load client's cost)

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
        if self.bad or (self.rounds > 0 and self.connections_finished < self.connections):
            raise RuntimeError(
                f"{what}: {self.bad} wrong responses of {self.requests} "
                f"(statuses {self.statuses}), {self.connections_finished}/{self.connections} "
                f"connections through; e.g. {self.failures[:3]}"
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
    connections: int = CONNECTIONS,
    idle_class: bool = False,
) -> DevicesReport:
    """Runs the devices in `mode` over `connections`, `rounds` times each (0: until `stop`);
    in Linux's idle scheduling class if `idle_class` (it then takes only CPU that no other
    process wants)."""
    connections = max(1, min(connections, len(devices)))
    run = workdir / f"devices-{mode}-{next(_RUNS)}"
    devices_file = run.with_suffix(".devices")
    devices_file.write_text(
        "".join(
            f"{d.library_id}\t{d.serial}\t{d.token}\t{d.tag}\t{d.push_token}\n" for d in devices
        )
    )
    url = urlsplit(base_url)
    assert url.scheme == "http" and url.hostname and url.port, f"not http://host:port: {base_url}"
    command = [str(client()), url.hostname, str(url.port), mode, str(devices_file), prefix]
    command += [pass_type, str(rounds), str(connections), str(run)]
    if idle_class:
        command = ["chrt", "--idle", "0", *command]
    child = await Child.start(f"devices-{mode}", command, run.with_suffix(".log"))
    try:
        if rounds == 0:
            assert stop is not None, "rounds=0 runs until stop is set"
            await stop.wait()
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGINT)
        async with asyncio.timeout(within):
            await child.process.wait()
    finally:
        await child.stop(grace=5)
    return _report(run, connections, rounds)


@functools.cache
def client() -> Path:
    """The client, built from its source for this process (removed when it exits)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("device-pull needs a C compiler (cc) to build its load client")
    folder = tempfile.mkdtemp(prefix="passpush-devices-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    built = Path(folder) / "device_client"
    compiled = subprocess.run(
        [compiler, "-O2", "-Wall", "-Werror", "-o", str(built), str(SOURCE)],
        capture_output=True,
        text=True,
    )
    if compiled.returncode != 0:
        raise RuntimeError(f"{SOURCE.name} did not compile:\n{compiled.stderr}")
    return built


def _report(run: Path, connections: int, rounds: int) -> DevicesReport:
    summary = run.with_suffix(".summary")
    if not summary.exists():
        raise RuntimeError(f"the devices wrote no figures; see {run.with_suffix('.log')}")
    requests = bad = finished = 0
    first, last, cpu = float("inf"), 0.0, 0.0
    statuses: dict[int, int] = {}
    failures: list[str] = []
    for line in summary.read_text().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "connection":
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
        elif kind == "cpu":
            cpu = float(rest)
    latencies = sorted(float(v) for v in run.with_suffix(".latency").read_text().split())
    tags = dict(
        line.split("\t", 1) for line in run.with_suffix(".tags").read_text().splitlines() if line
    )
    return DevicesReport(
        requests,
        bad,
        statuses,
        latencies,
        first if requests else 0.0,
        last,
        finished,
        connections,
        rounds,
        tags,
        failures,
        cpu,
    )


_RUNS = itertools.count(1)  # each run's files named apart in the one workdir
