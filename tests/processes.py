"""Real processes for the tests: the `passpush` console script, `passpush serve`, grpcurl.

Everything here waits with asyncio (never a blocking subprocess call): the fake APNs answers
from the test process's event loop.

A test module gets servers through a `Launcher`, which it wraps in a fixture of its own:

    @pytest.fixture
    async def launch(database_url, fake_apns, tmp_path) -> AsyncIterator[Launcher]:
        async with Launcher(database_url, fake_apns, tmp_path) as launcher:
            yield launcher

At teardown every server still running must stop on SIGTERM with exit code 0; whatever
happens, every process a launcher started is killed before the test ends, and each server's
log is printed (pytest shows it when the test fails).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.harness import free_port  # one free-port probe for the tests and the benchmarks
from passpush.fakes.apns import FakeApns

from support import channel_with_key

BIN_DIR = Path(sys.executable).parent
PASSPUSH = BIN_DIR / "passpush"
GRPCURL = BIN_DIR / "grpcurl"

STARTUP_SECONDS = 30.0  # from spawning `passpush serve` to health SERVING
STOP_SECONDS = 15.0  # from SIGTERM to exit


# -- running commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


async def run(
    *argv: str | Path,
    env: dict[str, str] | None = None,
    seconds: float = 60,
    cwd: Path | None = None,
) -> Completed:
    """Runs a command to completion without blocking the event loop."""
    process = await asyncio.create_subprocess_exec(
        *map(str, argv),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    try:
        async with asyncio.timeout(seconds):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{argv} did not finish within {seconds}s") from None
    assert process.returncode is not None
    return Completed(process.returncode, stdout.decode(), stderr.decode())


def passpush_env(database_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any PASSPUSH_* of its own, plus the given settings."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PASSPUSH_")}
    env["PASSPUSH_DATABASE_URL"] = database_url
    env["PASSPUSH_DATA_DIR"] = str(data_dir)
    # HTTP in the server's own process unless a test asks for HTTP processes (each is a
    # Python importing the whole server: two per `passpush serve` doubled the suite's time).
    env["PASSPUSH_HTTP_PROCESSES"] = "0"
    # No metrics endpoint unless a test asks for one: its default port is one for all.
    env["PASSPUSH_METRICS_ADDRESS"] = ""
    env.update({f"PASSPUSH_{name}": value for name, value in settings.items()})
    return env


async def create_key(database_url: str, data_dir: Path, project: str) -> str:
    """`passpush keys create --project P --scopes all` (which creates P); returns the key."""
    env = passpush_env(database_url, data_dir)
    result = await run(PASSPUSH, "keys", "create", "--project", project, "--scopes", "all", env=env)
    assert result.returncode == 0, result.output
    return result.stdout.strip().splitlines()[-1]  # the key alone on the last line


# -- grpcurl ---------------------------------------------------------------------------------


async def grpcurl(*args: str, key: str | None = None) -> Completed:
    """grpcurl, presenting `key` as `authorization: Bearer <key>` when given."""
    headers = ("-H", f"authorization: Bearer {key}") if key else ()
    return await run(GRPCURL, "-plaintext", *headers, *args, seconds=30)


async def call(address: str, method: str, request: dict[str, Any], key: str) -> dict[str, Any]:
    """A unary call through grpcurl; its JSON answer, zero values included."""
    result = await grpcurl("-emit-defaults", "-d", json.dumps(request), address, method, key=key)
    assert result.returncode == 0, f"grpcurl {method} failed:\n{result.output}"
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


TERMINAL_STATES = {
    "TICKET_STATE_SUCCEEDED",
    "TICKET_STATE_PARTIALLY_FAILED",
    "TICKET_STATE_FAILED",
    "TICKET_STATE_CANCELLED",
}


async def poll_terminal(
    address: str, ticket_id: str, key: str, seconds: float = 15
) -> dict[str, Any]:
    """GetTicket through grpcurl until the ticket is terminal."""
    ticket: dict[str, Any] = {}
    try:
        async with asyncio.timeout(seconds):
            while ticket.get("state") not in TERMINAL_STATES:
                ticket = await call(
                    address, "passpush.v1.NotificationService/GetTicket", {"id": ticket_id}, key
                )
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(
            f"ticket {ticket_id} not terminal after {seconds}s: {ticket}"
        ) from None
    return ticket


# -- the server process ----------------------------------------------------------------------

# Every `passpush serve` started by this test process and not yet reaped: the last resort
# below kills them if the test process exits without tearing its fixtures down.
_live: set[asyncio.subprocess.Process] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_live):
        with contextlib.suppress(Exception):  # gone already, or its transport closed
            process.kill()


class ServerProcess:
    """`passpush serve` in a subprocess, its stdout and stderr in a log file."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        args: Sequence[str] = (),
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`credentials`: TLS to reach a server with PASSPUSH_TLS_CERT."""
        self.env = env
        self.credentials = credentials
        self.args = tuple(args)  # after `passpush serve`
        self.address = env["PASSPUSH_GRPC_ADDRESS"]
        self.log_path = log_path
        self._process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def serves_grpc(self) -> bool:
        """False for `--role worker`, which has no port: it is ready when its metrics say so."""
        role = self.env.get("PASSPUSH_ROLE", "all")
        if "--role" in self.args:
            role = self.args[self.args.index("--role") + 1]
        return role != "worker"

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else "(no log)"

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                str(PASSPUSH), "serve", *self.args, stdout=log, stderr=log, env=self.env
            )
        _live.add(self._process)
        await self._wait_serving()

    async def _wait_serving(self) -> None:
        """Until the port accepts calls and the health service answers SERVING (a worker:
        until its metrics say passpush_ready 1)."""
        if not self.serves_grpc:
            await self._wait_ready_metric()
            return
        assert self._process is not None
        deadline = asyncio.get_running_loop().time() + STARTUP_SECONDS
        if self.credentials is None:
            channel = grpc.aio.insecure_channel(self.address)
        else:
            channel = grpc.aio.secure_channel(self.address, self.credentials)
        async with channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self._process.returncode is not None:
                    raise AssertionError(
                        f"passpush serve exited with {self._process.returncode} before serving:"
                        f"\n{self.log()}"
                    )
                try:
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass  # not listening yet
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(
                        f"passpush serve not SERVING after {STARTUP_SECONDS}s:\n{self.log()}"
                    )
                await asyncio.sleep(0.1)

    async def _wait_ready_metric(self) -> None:
        assert self._process is not None
        url = f"http://{self.env['PASSPUSH_METRICS_ADDRESS']}/metrics"
        deadline = asyncio.get_running_loop().time() + STARTUP_SECONDS
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                if self._process.returncode is not None:
                    raise AssertionError(
                        f"passpush serve exited with {self._process.returncode} before ready:"
                        f"\n{self.log()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if "\npasspush_ready 1.0" in (await client.get(url)).text:
                        return
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(
                        f"passpush serve not ready after {STARTUP_SECONDS}s:\n{self.log()}"
                    )
                await asyncio.sleep(0.1)

    async def stop(self) -> float:
        """SIGTERM; asserts a clean exit (code 0) within STOP_SECONDS. Returns the time taken."""
        assert self._process is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_SECONDS):
                returncode = await self._process.wait()
        except TimeoutError:
            await self.kill()
            raise AssertionError(
                f"passpush serve still running {STOP_SECONDS}s after SIGTERM (killed):"
                f"\n{self.log()}"
            ) from None
        _live.discard(self._process)
        assert returncode == 0, f"passpush serve exited with {returncode}:\n{self.log()}"
        return loop.time() - started

    def kill_now(self) -> None:
        """SIGKILL without waiting: the process gets no chance to clean up."""
        if self.running:
            assert self._process is not None
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    async def kill(self) -> None:
        """SIGKILL, and wait until the process is gone. Does nothing when it has exited."""
        if self._process is None:
            return
        self.kill_now()
        await self._process.wait()
        _live.discard(self._process)

    def channel(self, key: str) -> grpc.aio.Channel:
        return channel_with_key(self.port, key)


Launch = Callable[..., Awaitable[ServerProcess]]


class Launcher:
    """Starts `passpush serve` processes against one database and the fake APNs.

    Call it with `serve`'s options and PASSPUSH_* settings without the prefix
    (`await launch("--fakes", SHUTDOWN_GRACE="2")`, `await launch("--role", "worker")`), and
    `credentials` for a server with TLS; an empty setting is as if unset;
    each server gets a free gRPC port and its own log file. On exit from `async with`, each
    server still running must stop cleanly on SIGTERM; every one is killed in any case.
    """

    def __init__(self, database_url: str, fake_apns: FakeApns, data_dir: Path) -> None:
        self.database_url = database_url
        self.fake_apns = fake_apns
        self.data_dir = data_dir
        self.servers: list[ServerProcess] = []

    async def __call__(
        self, *args: str, credentials: grpc.ChannelCredentials | None = None, **settings: str
    ) -> ServerProcess:
        options = {
            "GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
            "HTTP_ADDRESS": f"127.0.0.1:{free_port()}",  # serve also starts the HTTP shim
            # Where a worker (no gRPC port) says it is ready; others serve none unless asked.
            "METRICS_ADDRESS": f"127.0.0.1:{free_port()}" if "worker" in args else "",
            "APNS_ENDPOINT": self.fake_apns.endpoint,
            "APNS_CA_FILE": str(self.fake_apns.tls.ca_file),
            **settings,
        }
        env = passpush_env(self.database_url, self.data_dir, **options)
        log_path = self.data_dir / f"passpush-serve-{len(self.servers)}.log"
        server = ServerProcess(env, log_path, args, credentials)
        self.servers.append(server)  # before starting: a server that fails to start is killed too
        await server.start()
        return server

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        failures = []
        try:
            for server in self.servers:
                if server.running:
                    try:
                        await server.stop()
                    except AssertionError as failure:
                        failures.append(str(failure))
        finally:
            for server in self.servers:
                server.kill_now()  # signals first, so that a cancelled wait still kills all
            for server in self.servers:
                await server.kill()
                # pytest shows this only when the test fails.
                print(f"----- {server.log_path.name} -----\n{server.log()}")
        assert not failures, "\n\n".join(failures)


def interrupt_another_thread(pid: int) -> None:
    """One SIGINT, as from one Ctrl-C, to a thread of the process other than its main one
    that does not block the signal (tgkill: to that thread alone)."""
    takers = [
        int(tid)
        for tid in os.listdir(f"/proc/{pid}/task")
        if int(tid) != pid and not _blocks(pid, int(tid), signal.SIGINT)
    ]
    assert takers, "the process has no other thread to take the signal"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(_SYS_TGKILL, pid, takers[0], signal.SIGINT) == 0, ctypes.get_errno()


def _blocks(pid: int, tid: int, signum: int) -> bool:
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    blocked = next(line for line in status.splitlines() if line.startswith("SigBlk:"))
    return bool(int(blocked.split()[1], 16) >> (signum - 1) & 1)


_SYS_TGKILL = 234  # x86-64
