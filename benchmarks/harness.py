"""What every benchmark shares: results, the machine, ports, child processes, progress."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent
TOPIC = "pass.com.example.bench"  # the APNs topic (pass type identifier) of every push


@dataclass(frozen=True)
class Result:
    """One row of the final table."""

    name: str
    backend: str
    figure: str
    bar: str = "—"
    ok: bool | None = None  # None: no bar, the figure is for information

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "FAIL", None: "info"}[self.ok]


def log(message: str) -> None:
    """Progress, on stderr, so that stdout stays the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> list[tuple[str, str]]:
    """Date and machine, for the report's header."""
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    node = _version(["node", "--version"])
    commit = _version(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"])
    if _version(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "generated"]):
        commit += " (+ uncommitted changes in src/)"
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("commit", commit),
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("cpu", cpu_model),
        ("memory", memory),
        ("os", f"{platform.system()} {platform.release()}"),
        ("python", platform.python_version()),
        ("node", node),
    ]


def _version(command: Sequence[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unavailable"


def render_table(results: Sequence[Result]) -> str:
    header = ("benchmark", "backend", "measured", "bar", "result")
    rows = [(r.name, r.backend, r.figure, r.bar, r.verdict) for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now that this run has not handed out before: two probes in turn can get
    the same port from the kernel (a test's server once got one port for gRPC and HTTP)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM, the peak resident set of a live process, in MB (None once it is gone)."""
    return _status_kb(pid, "VmHWM:")


def _status_kb(pid: int, field: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a live process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is fields[0], utime is field 14 of stat, i.e. fields[11].
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time of a live process and of its live children (passpush's HTTP processes)."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own + sum(cpu_seconds(int(child)) or 0.0 for child in children)


class Child:
    """A child process with its output in a log file, stopped for sure on the way out."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path

    @classmethod
    async def start(
        cls,
        name: str,
        command: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> Child:
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *_dying_with_us(command),
                # A pipe we never write: when this process dies, the child sees EOF on stdin.
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE if stdout_pipe else log_file,
                stderr=log_file,
                env=dict(env) if env is not None else None,
                cwd=REPO,
            )
        return cls(name, process, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def read_line(self, within: float) -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(within):
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited before it was ready\n{self.log_tail()}")
        return line.decode().strip()

    async def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await self.process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {self.name}| {line}" for line in text[-lines:])


_SETPRIV = shutil.which("setpriv")


def _dying_with_us(command: Sequence[str]) -> list[str]:
    """The command, made to get SIGKILL should this process die without stopping it.

    util-linux `setpriv --pdeathsig` sets the signal and execs the command, so the child keeps
    its pid (its /proc entry is the command's). Without setpriv, the finally blocks must do.
    """
    if _SETPRIV is None:
        return list(command)
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *command]


async def run_command(
    command: Sequence[str], *, env: Mapping[str, str] | None = None, within: float = 120.0
) -> str:
    """Runs a command to its end; its stdout, or an error with its output."""
    process = await asyncio.create_subprocess_exec(
        *_dying_with_us(command),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=REPO,
    )
    try:
        async with asyncio.timeout(within):
            out, err = await process.communicate()
    except (TimeoutError, asyncio.CancelledError):
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {process.returncode}:\n{err.decode()}{out.decode()}"
        )
    return out.decode()


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


@dataclass(frozen=True)
class Options:
    """Sizes and knobs of a run (see `python -m benchmarks --help`)."""

    quick: bool = False
    backends: tuple[str, ...] = ("sqlite", "postgresql")
    apns_auth: str = "token"
    fake_pushes: int = 100_000
    passes: int = 100_000  # fan-out audience
    scaleout_passes: int = 50_000  # scale-out audience (two fan-outs: half size, half the time)
    resolution_passes: int = 1_000_000
    resolution_watch: float = 30.0  # seconds of the broadcast watched; 0 = all of it
    rate: float = 500.0  # accept latency: Sends per second, open loop
    duration: float = 20.0  # accept latency: seconds
    throughput_seconds: float = 10.0  # accept throughput: seconds per closed loop
    concurrency: int = 64  # accept throughput: calls in flight
    channels: int = 8  # gRPC channels (connections) of the accept client
    # accept: `split`, passpush as an api process and a worker process; `all`, one process
    accept_roles: str = "split"
    # containment: `all`, one process; `split`, an api process and a worker process
    containment_roles: str = "all"
    connections: int = 4  # raw loop: aioapns connections (passpush: PASSPUSH_APNS_CONNECTIONS)
    in_flight: int = 200  # raw loop: pushes in flight (passpush: PASSPUSH_WORKER_IN_FLIGHT)
    watch_streams: int = 1_000  # watch: concurrent WatchTicket streams
    watch_passes: int = 30_000  # watch: the watched broadcast's audience
    outage_passes: int = 5_000  # outage: the broadcast's audience
    outage_seconds: float = 45.0  # outage: how long the fake APNs is down
    pull_passes: int = 5_000  # device-pull: passes with content, a device each, fetching
    pull_storm_passes: int = 5_000  # device-pull: the second template's broadcast
    pull_connections: int = 16  # device-pull: the devices' keep-alive connections
    # device-pull: the load client's scheduling class beside the storm's Sends (idle, normal)
    storm_client: str = "idle"
    shared_passes: int = 100_000  # shared-content: passes imported with and without content
    import_passes: int = 1_000_000  # import: passes imported through the API, a device each
    google_passes: int = 100_000  # google-broadcast: holders of one Google class
    google_sample: int = 200  # google-broadcast: the subset sent to object by object
    keep: bool = False  # keep the temporary directory (logs, databases of SQLite)


@contextlib.contextmanager
def workspace(name: str, options: Options) -> Iterator[Path]:
    """A temporary directory for one benchmark: TLS files, logs, SQLite databases."""
    directory = Path(tempfile.mkdtemp(prefix=f"passpush-bench-{name}-"))
    try:
        yield directory
    finally:
        if options.keep:
            log(f"{name}: kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
