"""The HTTP server in processes of its own, beside the gRPC server's process.

Devices fetching their passes after a broadcast is the heaviest load passpush takes: each
fetch of a changed pass is an RSA signature, which holds the GIL. Served in the gRPC
server's process, a fetch storm would take the CPU from the API and the pushes. So
`passpush serve` runs the HTTP server (vendor shim and PassKit web service) in child
processes that share one listening socket, bound here first so that a taken port fails at
start, and take its connections in turn (even_accept.py). The children run at a lower CPU
priority (a higher nice value): while both want the CPU, the API and the pushes get it
first, and the devices get what is left, which after a broadcast is nearly all of it.

A child writes lines to its stdout, which the parent reads: `ready` once it serves,
`fetched {json}` for each fetch confirmation (a device fetched the pass version carrying a
notification), which the parent records, and, on SQLite, `register {json}` for each device
registration it authenticated, which the parent writes and answers on the child's stdin
(`registered {json}`). So on SQLite the children never write to the database: a child
holding the write lock at its lower priority would keep the Sends and the pushes waiting
for it (a priority inversion), and children taking turns at the lock wait in SQLite's busy
handler, which sleeps. On PostgreSQL, where rows lock alone, each child writes its own
registrations. The parent also tells each child, on its stdin, whether the gRPC
server serves (`serving 1` or `serving 0`: at the child's start and at each change), which
the child's /readyz answers: the one health, the one database probe, for every process. A
child that dies is started again; one whose stdin ends (its parent is gone, even by
SIGKILL) stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import signal
import socket
import sys
from asyncio import CancelledError
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal

from passpush.domain.errors import Unauthenticated
from passpush.http.even_accept import ConnectionCounts
from passpush.http.sockets import tcp_listener
from passpush.store.faults import database_unavailable, is_passing_trouble
from passpush.store.fetches import FetchConfirmation
from passpush.store.registration_writes import NewRegistration

log = logging.getLogger(__name__)

READY = b"ready"
FETCHED = b"fetched "
REGISTER = b"register "
REGISTERED = b"registered "
SERVING = b"serving "
_ANSWER_TIMEOUT = 30.0  # seconds a child waits for the parent to write a registration
_RESTART_DELAY = 1.0  # seconds before a child that died is started again
_START_TIMEOUT = 60.0  # seconds a child may take to import, connect and listen


class HttpProcesses:
    """Children serving HTTP on one socket; started and stopped with the gRPC server."""

    def __init__(
        self,
        address: str,
        count: int,
        child_command: Callable[[int, int, int], Sequence[str]],
        *,
        on_fetched: Callable[[FetchConfirmation], None] = lambda _: None,
        on_register: Callable[[NewRegistration], asyncio.Future[bool]] | None = None,
    ) -> None:
        """`child_command(listen_fd, counts_fd, slot)` is the command line of a child
        serving the socket `listen_fd`, its open connections counted in `slot` of the
        ConnectionCounts of `counts_fd`."""
        host, _, port = address.rpartition(":")
        self._host, self._port = host.strip("[]") or "127.0.0.1", int(port)
        self._count = count
        self._command = child_command
        self._on_fetched = on_fetched
        self._on_register = on_register
        self._answers: dict[int, Lines] = {}  # to each child, by pid
        self._running: dict[int, asyncio.subprocess.Process] = {}  # by pid
        self._serving = False  # whether the gRPC server serves, as told to the children
        self._listener: socket.socket | None = None
        self._counts: ConnectionCounts | None = None
        self._children: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def port(self) -> int:
        assert self._listener is not None, "not started"
        return int(self._listener.getsockname()[1])

    async def start(self) -> None:
        """Listens, then starts the children and returns once each serves; OSError if the
        port is taken or a child could not start."""
        self._listener = tcp_listener(self._host, self._port)  # OSError if the port is taken
        self._listener.set_inheritable(True)
        self._counts = ConnectionCounts.create(self._count)
        started = [asyncio.get_running_loop().create_future() for _ in range(self._count)]
        self._children = [
            asyncio.create_task(self._keep_running(number, ready))
            for number, ready in enumerate(started)
        ]
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                await asyncio.gather(*started)
        except (OSError, TimeoutError) as error:
            await self.stop(0)
            raise OSError(f"an HTTP process did not start: {error}") from None

    async def _keep_running(self, number: int, ready: asyncio.Future[None]) -> None:
        assert self._listener is not None and self._counts is not None
        while not self._stopping:
            fds = (self._listener.fileno(), self._counts.fd)
            process = await asyncio.create_subprocess_exec(
                *self._command(*fds, number),
                pass_fds=fds,
                stdin=asyncio.subprocess.PIPE,  # the child stops when it closes: see cli
                stdout=asyncio.subprocess.PIPE,
            )
            self._running[process.pid] = process
            self._tell_serving(process)
            try:
                await self._follow(process, ready)
            finally:
                self._running.pop(process.pid, None)
                self._answers.pop(process.pid, None)
                if process.returncode is None:
                    await _terminate(process, grace=0)
                self._counts.vacate(number)
            if self._stopping:
                return
            if not ready.done():
                ready.set_exception(OSError(f"it exited with status {process.returncode}"))
                return
            log.error(
                "HTTP process %d exited with status %s: starting another",
                number,
                process.returncode,
            )
            await asyncio.sleep(_RESTART_DELAY)

    async def _follow(
        self, process: asyncio.subprocess.Process, ready: asyncio.Future[None]
    ) -> None:
        """Reads the child's lines until it exits (or is stopped)."""
        assert process.stdout is not None
        try:
            async for line in process.stdout:
                if line.startswith(FETCHED):
                    self._on_fetched(_confirmation(line[len(FETCHED) :]))
                elif line.startswith(REGISTER):
                    self._register(process, line[len(REGISTER) :])
                elif line.strip() == READY and not ready.done():
                    ready.set_result(None)
            await process.wait()
        except asyncio.CancelledError:
            await _terminate(process, self._grace)
            raise

    def _register(self, process: asyncio.subprocess.Process, line: bytes) -> None:
        """Writes a child's registration, then answers it: created, or why not. No task
        each: a child's registrations arrive by the thousand a second."""
        fields = json.loads(line)
        number = fields.pop("n")
        if self._on_register is None:
            self._answer(process, number, {"error": "refused"})
            return
        written = self._on_register(NewRegistration(**fields))
        written.add_done_callback(functools.partial(self._written, process, number))

    def _written(
        self, process: asyncio.subprocess.Process, number: int, written: asyncio.Future[bool]
    ) -> None:
        error = CancelledError() if written.cancelled() else written.exception()
        if error is None:
            self._answer(process, number, {"created": written.result()})
        elif is_passing_trouble(error) or isinstance(error, CancelledError):
            self._answer(process, number, {"error": "unavailable"})
        else:
            log.warning("a registration from an HTTP process was refused: %r", error)
            self._answer(process, number, {"error": "refused"})

    def _answer(
        self, process: asyncio.subprocess.Process, number: int, answer: dict[str, object]
    ) -> None:
        self._to_child(process).add(REGISTERED + json.dumps({"n": number, **answer}).encode())

    def tell_serving(self, serving: bool) -> None:
        """Tells every child whether the gRPC server serves now (and each child started
        later): their /readyz."""
        self._serving = serving
        for process in self._running.values():
            self._tell_serving(process)

    def _tell_serving(self, process: asyncio.subprocess.Process) -> None:
        self._to_child(process).add(SERVING + (b"1" if self._serving else b"0"))

    def _to_child(self, process: asyncio.subprocess.Process) -> Lines:
        lines = self._answers.get(process.pid)
        if lines is None:
            stdin = process.stdin
            assert stdin is not None

            def write(data: bytes) -> None:
                if not stdin.is_closing():
                    stdin.write(data)

            lines = self._answers[process.pid] = Lines(write)
        return lines

    _grace = 10.0

    async def stop(self, grace: float) -> None:
        """Stops the children: each finishes its open requests for up to `grace` seconds."""
        self._stopping = True
        self._grace = grace
        for child in self._children:
            child.cancel()
        for child in self._children:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await child
        self._children = []
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._counts is not None:
            self._counts.close()
            self._counts = None


async def _terminate(process: asyncio.subprocess.Process, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace + 1.0):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


class Lines:
    """Lines for a pipe, written together at the end of the event loop's turn, or `after`
    seconds after the first: each write is a system call that wakes the other process,
    which at a higher priority then takes the CPU from the writer (one a request cost a
    child a quarter of its time)."""

    def __init__(self, write: Callable[[bytes], None], after: float = 0.0) -> None:
        self._write = write
        self._after = after
        self._lines: list[bytes] = []

    def add(self, line: bytes) -> None:
        self._lines.append(line + b"\n")
        if len(self._lines) == 1:
            asyncio.get_running_loop().call_later(self._after, self._flush)

    def _flush(self) -> None:
        lines, self._lines = self._lines, []
        self._write(b"".join(lines))


class ParentPipe:
    """The child's stdout, its channel to the parent, written without blocking the event
    loop: a parent slow to read must not stall the child's requests."""

    # What no one waits for (fetch confirmations) goes up later, with more: the parent
    # records them every 100 ms anyway, and each write wakes it (at 5 ms, the writes were
    # a twentieth of a child's time in a storm of downloads).
    LATER = 0.05  # seconds

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self._lines = Lines(transport.write)
        self._later = Lines(transport.write, self.LATER)

    @classmethod
    async def open(cls) -> ParentPipe:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout.buffer)
        return cls(transport)

    def tell(self, line: bytes) -> None:
        self._lines.add(line)

    def tell_later(self, line: bytes) -> None:
        self._later.add(line)


def lower_priority(nice: int | Literal["idle"]) -> None:
    """Yields the CPU to the gRPC server's process (and to the database) while they want it.

    "idle": Linux's SCHED_IDLE (nice 19 elsewhere). Niced, a device storm still took its
    share from a one-pass Send's round trips: each waited for a busy core, and the Sends'
    p99 went from 15 to 55-153 ms at nice 10. A task of the idle class gives way as soon as
    another wakes: 23-49 ms in seven runs (device-pull on PostgreSQL, 2026-12-04), the
    devices served as fast while the Sends leave the CPU to them."""
    if nice == "idle":
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        nice = 19
    if nice > 0:
        os.nice(nice)


class ParentRegistrar:
    """A child's registrations, written by the parent: each goes up the pipe and waits for
    the parent's answer, which `answered` takes from the child's stdin."""

    def __init__(self, parent: ParentPipe, *, answer_within: float = _ANSWER_TIMEOUT) -> None:
        """`answer_within`: seconds a registration waits for the parent's answer before it
        is refused as unavailable (the parent's database stuck, say)."""
        self._parent = parent
        self._answer_within = answer_within
        self._numbers = itertools.count()
        self._waiting: dict[int, asyncio.Future[bool]] = {}

    async def register(self, registration: NewRegistration) -> bool:
        number = next(self._numbers)
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[number] = answer
        self._parent.tell(REGISTER + json.dumps({"n": number, **vars(registration)}).encode())
        try:
            async with asyncio.timeout(self._answer_within):
                return await answer
        except TimeoutError:
            raise database_unavailable() from None
        finally:
            self._waiting.pop(number, None)

    def answered(self, line: bytes) -> None:
        fields = json.loads(line)
        answer = self._waiting.get(fields["n"])
        if answer is None or answer.done():
            return  # its request timed out meanwhile
        if "created" in fields:
            answer.set_result(bool(fields["created"]))
        elif fields.get("error") == "unavailable":
            answer.set_exception(database_unavailable())
        else:  # the pass is gone since it was authenticated
            answer.set_exception(Unauthenticated("the pass is no longer there"))


class ParentReadiness:
    """Whether the parent's gRPC server serves, as it last said: a child's /readyz. Not
    until the parent says so."""

    def __init__(self) -> None:
        self.serving = False

    def __call__(self) -> bool:
        return self.serving


async def follow_parent(
    registrar: ParentRegistrar, readiness: ParentReadiness, gone: Callable[[], None]
) -> None:
    """Reads the parent's answers and news on stdin until it ends (the parent is gone),
    then `gone`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    async for line in reader:
        if line.startswith(REGISTERED):
            registrar.answered(line[len(REGISTERED) :])
        elif line.startswith(SERVING):
            readiness.serving = line[len(SERVING) :].strip() == b"1"
    gone()


class ParentFetchSink:
    """A child's fetch confirmations, handed to the parent to record."""

    def __init__(self, parent: ParentPipe) -> None:
        self._parent = parent

    def add(self, confirmation: FetchConfirmation) -> None:
        fields = {**vars(confirmation), "fetched_at": confirmation.fetched_at.isoformat()}
        self._parent.tell_later(FETCHED + json.dumps(fields).encode())


def _confirmation(line: bytes) -> FetchConfirmation:
    fields = json.loads(line)
    return FetchConfirmation(
        **{**fields, "fetched_at": datetime.fromisoformat(fields["fetched_at"])}
    )
