"""The Node.js fake APNs (fake_apns.mjs), driven from Python, and its own capacity benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.harness import BENCH_DIR, Child, Result, cpu_seconds, log, run_command
from passpush.fakes.tls import TlsBundle, make_tls_bundle

FAKE_SCRIPT = BENCH_DIR / "fake_apns.mjs"
LOAD_SCRIPT = BENCH_DIR / "load_apns.mjs"
# The fake must take this many pushes per second of one core at least, to be no bottleneck.
CAPACITY_BAR = 10_000


@dataclass(frozen=True)
class FakeStats:
    count: int
    first_ms: float | None  # epoch milliseconds of the first push since the last reset
    last_ms: float | None


class NodeFake:
    """A running fake_apns.mjs: its HTTP/2 port and its control port."""

    def __init__(self, child: Child, port: int, control_port: int, tls: TlsBundle) -> None:
        self.child = child
        self.port = port
        self.tls = tls
        self._http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{control_port}", timeout=10)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stats(self) -> FakeStats:
        answer = (await self._http.get("/count")).raise_for_status().json()
        return FakeStats(answer["count"], answer["first_ms"], answer["last_ms"])

    async def reset(self) -> None:
        (await self._http.post("/reset")).raise_for_status()

    async def wait_for(self, count: int, within: float) -> FakeStats:
        deadline = time.monotonic() + within
        while True:
            stats = await self.stats()
            if stats.count >= count or time.monotonic() > deadline:
                return stats
            await asyncio.sleep(0.05)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.child.pid) or 0.0


@contextlib.asynccontextmanager
async def node_fake(workdir: Path) -> AsyncIterator[NodeFake]:
    """Starts the Node fake with a fresh throwaway CA under workdir; stops it on the way out."""
    tls = make_tls_bundle(workdir / "tls")
    child = await Child.start(
        "fake-apns",
        [
            "node",
            str(FAKE_SCRIPT),
            *("--cert", str(tls.server_cert_file)),
            *("--key", str(tls.server_key_file)),
        ],
        workdir / "fake-apns.log",
        stdout_pipe=True,
    )
    fake: NodeFake | None = None
    try:
        words = (await child.read_line(within=15)).split()
        if len(words) != 4 or words[0] != "LISTENING" or words[2] != "CONTROL":
            raise RuntimeError(f"fake_apns.mjs said {' '.join(words)!r}\n{child.log_tail()}")
        fake = NodeFake(child, int(words[1]), int(words[3]), tls)
        yield fake
    finally:
        if fake is not None:
            await fake._http.aclose()
        await child.stop(grace=5)


async def capacity(workdir: Path, pushes: int) -> list[Result]:
    """How many pushes/s the fake takes: a Node HTTP/2 load client, and the fake's own CPU time.

    On a small machine the load client is the slower of the two, so the fake's capacity is also
    given as pushes per CPU-second it spent: what it would take with a core to itself.
    """
    async with node_fake(workdir) as fake:
        command = ["node", str(LOAD_SCRIPT), "--port", str(fake.port)]
        command += ["--ca", str(fake.tls.ca_file), "--count", str(min(pushes, 2_000))]
        await run_command(command)  # warm-up: connections, JIT
        await fake.reset()
        cpu_before = fake.cpu_seconds()
        command[-1] = str(pushes)
        report = json.loads((await run_command(command, within=600)).strip().splitlines()[-1])
        cpu = fake.cpu_seconds() - cpu_before
        stats = await fake.stats()
    if stats.count != pushes or report["ok"] != pushes:
        raise RuntimeError(f"fake counted {stats.count}, client saw {report['ok']} of {pushes}")
    per_cpu_second = pushes / cpu if cpu > 0 else float("inf")
    log(
        f"fake-apns: {report['rate']:,.0f} pushes/s from the Node load client; the fake used "
        f"{cpu:.1f} CPU-s for {pushes:,} pushes"
    )
    return [
        Result("fake-apns load client", "node", f"{report['rate']:,.0f} pushes/s"),
        Result(
            "fake-apns capacity",
            "node",
            f"{per_cpu_second:,.0f} pushes per CPU-second",
            f"≥ {CAPACITY_BAR:,}/s",
            per_cpu_second >= CAPACITY_BAR,
        ),
    ]
