"""device-pull: Wallet devices fetching their updated passes after a broadcast.

Everything goes through passpush's own interfaces, as an issuer and its holders' devices
would use them (nothing is seeded behind the server's back):

1. Setup (gRPC): template A with its own signing material (a throwaway RSA-2048 Pass Type
   ID certificate), `pull_passes` passes imported with their authentication tokens, each
   given content by SetPassContent (pass.json and about 60 KB of PNG images).
2. Registrations (PassKit web service, device_client.c): each device registers for its
   pass: registrations/s.
3. Serials (device_client.c): each device asks which of its serials changed since the tag
   it had before the content was set, enough rounds for SERIALS_REQUESTS requests:
   serials/s.
4. `openssl speed -seconds 3 rsa2048`: one core's RSA-2048 signatures/s, in this run.
5. A Send to template A; the push-only time (the Send's start to GetTicket seeing it
   terminal). Then the pull (device_client.c, a load client in C: `pull_connections`
   keep-alive connections, 16 by default, as for the registrations and serials): every
   device, once, GETs the serials changed since its tag and then its pass. Device updates/s
   (devices / the pull's time), each request's latency (p50/p99), the ratio to the signing
   rate, and the end-to-end time from the Send's start to the last device holding its pass.
   Devices start once every push is out, so end to end is push-only + pull at most.
6. The storm: template B of `pull_storm_passes` passes (imported, devices registered through
   the web service, no content). Idle: single-pass Sends to B's passes at 50/s for
   STORM_SECONDS (their p50/p99), then a broadcast to B (pushes/s: its passes / Send to
   terminal). Then the same while the devices of A pull at full rate: a new broadcast to A,
   every A device fetching again and again, the measuring from once A's pushes are out.
   The load client then runs in Linux's idle scheduling class (`--storm-client normal`
   runs it as the rest): it stands in for devices elsewhere, and takes only the CPU that
   passpush and its database leave.

Bars: registrations/s and serials/s ≥ 5,000; device updates/s ≥ 0.5x the signing rate;
under the storm the Sends' p50 and p99 ≤ 2x and the push rate ≥ 0.5x their idle figures.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import httpx

from benchmarks.apple_content import make_signing, pass_content
from benchmarks.containment import steady_sends
from benchmarks.database import PROJECT, bench_database
from benchmarks.device_client import Device, DevicesReport, run_devices
from benchmarks.fake import NodeFake, node_fake
from benchmarks.harness import (
    TOPIC,
    Options,
    Result,
    cpu_seconds,
    free_port,
    log,
    percentile,
    run_command,
    tree_cpu_seconds,
    workspace,
)
from benchmarks.server import CONTENT, ApnsAuth, Client, client, serve
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

NAME = "device-pull"
PREFIX = "/passkit"  # the server's default PASSPUSH_PASSKIT_PREFIX
TEMPLATE_A = "pull-a"
TEMPLATE_B = "pull-b"
SERIALS_REQUESTS = 5_000
CONTENT_CALLS = 8  # SetPassContent calls in flight
STORM_SECONDS = 10.0
STORM_WARMUP = 1.0  # seconds of pulling before the storm's measurements start
WEB_SERVICE_BAR = 5_000  # registrations/s and serials/s
SIGNING_RATIO_BAR = 0.5
STORM_FACTOR_BAR = 2.0


@dataclass(frozen=True)
class Audience:
    template: str
    pass_ids: list[str]
    devices: list[Device]


@dataclass(frozen=True)
class SendsAndBroadcast:
    """Single-pass Sends' latencies (sorted, seconds) and a broadcast's pushes/s."""

    latencies: list[float]
    push_rate: float

    def p(self, fraction: float) -> float:
        return percentile(self.latencies, fraction) * 1000


class Setup:
    """The issuer's side, over gRPC: templates, passes, content."""

    def __init__(self, channel: grpc.aio.Channel, key: str) -> None:
        self.stub = passes_pb2_grpc.PassServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {key}"),)

    async def audience(
        self, template: str, count: int, first_push: int, *, content: bool
    ) -> Audience:
        """A template with its own signing material and `count` passes (with content if
        asked), and a device each; the devices' tags are their passes' before the content."""
        signing = await asyncio.to_thread(make_signing, TOPIC)
        await self.stub.CreateTemplate(
            ppb.CreateTemplateRequest(
                template_id=template,
                template=ppb.Template(
                    project_id=PROJECT,
                    platform=ppb.PLATFORM_APPLE,
                    pass_type_identifier=TOPIC,
                    apple_signing=signing,
                ),
            ),
            metadata=self.metadata,
        )
        pass_ids = [f"{template}-{i:08d}" for i in range(count)]
        tokens = {pass_id: secrets.token_hex(16) for pass_id in pass_ids}
        answer = await self.stub.ImportPasses(
            (
                ppb.ImportPassesRequest(
                    **{
                        "pass": ppb.Pass(
                            id=pass_id,
                            template_id=template,
                            serial_number=pass_id,
                            authentication_token=tokens[pass_id],
                        )
                    }
                )
                for pass_id in pass_ids
            ),
            metadata=self.metadata,
            timeout=600,
        )
        if answer.created != count:
            raise RuntimeError(f"ImportPasses created {answer.created} of {count}: {answer}")
        tags = await self.tags(template)
        if content:
            await self.set_content(pass_ids)
        devices = [
            Device(
                library_id=f"device-{pass_id}",
                serial=pass_id,
                token=tokens[pass_id],
                push_token=f"{first_push + i:064x}",
                tag=str(tags[pass_id]),
            )
            for i, pass_id in enumerate(pass_ids)
        ]
        return Audience(template, pass_ids, devices)

    async def tags(self, template: str) -> dict[str, int]:
        """Each pass's update tag, by serial number (ListPasses)."""
        tags: dict[str, int] = {}
        page = ""
        while True:
            answer = await self.stub.ListPasses(
                ppb.ListPassesRequest(template_id=template, page_size=1000, page_token=page),
                metadata=self.metadata,
            )
            tags.update({p.serial_number: p.update_tag for p in answer.passes})
            page = answer.next_page_token
            if not page:
                return tags

    async def set_content(self, pass_ids: Sequence[str]) -> None:
        started = time.perf_counter()
        queue = iter(pass_ids)

        async def worker() -> None:
            for pass_id in queue:
                await self.stub.SetPassContent(
                    pass_content(pass_id), metadata=self.metadata, timeout=60
                )

        await asyncio.gather(*(worker() for _ in range(CONTENT_CALLS)))
        seconds = time.perf_counter() - started
        log(f"{NAME}: content set on {len(pass_ids):,} passes in {seconds:.1f} s")


async def signing_rate() -> float:
    """One core's RSA-2048 signatures per second, by `openssl speed`."""
    output = await run_command(["openssl", "speed", "-seconds", "3", "rsa2048"], within=60)
    match = re.search(r"^rsa\s+2048 bits\s+\S+s\s+\S+s\s+([\d.]+)", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no rsa2048 sign/s in openssl speed's output:\n{output}")
    return float(match.group(1))


async def _wait_http(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        async with asyncio.timeout(60):
            while True:
                try:
                    await http.get(f"{PREFIX}/v1/devices/none/registrations/{TOPIC}")
                    return
                except httpx.TransportError:
                    await asyncio.sleep(0.1)


async def _registered(run: Run, audience: Audience) -> DevicesReport:
    report = await _devices(run, "register", audience.devices)
    report.check(f"registering {audience.template}'s devices")
    log(
        f"{NAME} on {run.backend}: {len(audience.devices):,} devices of {audience.template} "
        f"registered at {report.rate():,.0f}/s"
    )
    return report


async def _sends_and_broadcast(bench: Client, other: Client, storm: Audience) -> SendsAndBroadcast:
    """Single-pass Sends to `storm`'s passes at 50/s for STORM_SECONDS, then a broadcast to
    them alone: the Sends' latencies and the broadcast's pushes/s."""
    passes = storm.pass_ids

    async def one_pass(index: int) -> object:
        target = npb.Target(pass_id=passes[index % len(passes)])
        request = npb.SendRequest(target=target, content=CONTENT, request_id=f"p-{uuid.uuid4()}")
        return await other.send(request, deadline=30)

    stop = asyncio.Event()
    steady = asyncio.create_task(steady_sends(one_pass, stop))
    try:
        await asyncio.sleep(STORM_SECONDS)
    finally:
        stop.set()
        calls = await steady
    began = time.perf_counter()
    ticket = await bench.send_template(storm.template)
    ticket, seen = await bench.wait_terminal(ticket.id, within=600, poll=0.02)
    _delivered(ticket, len(passes))
    latencies = sorted(latency for _, latency in calls.calls)
    return SendsAndBroadcast(latencies, len(passes) / (seen - began))


def _delivered(ticket: npb.Ticket, passes: int) -> None:
    if ticket.counts.delivered != passes:
        raise RuntimeError(f"ticket {ticket.id}: {ticket.counts} for {passes} passes")


async def _fanned_out(bench: Client, ticket: npb.Ticket, passes: int) -> None:
    """Until every pass of the broadcast has changed (its devices then find it changed)."""
    async with asyncio.timeout(600):
        while ticket.counts.total < passes:
            await asyncio.sleep(0.02)
            ticket = await bench.get_ticket(ticket.id)


@dataclass(frozen=True)
class Run:
    backend: str
    base_url: str
    workdir: Path
    bench: Client
    other: Client
    server_pid: int
    connections: int  # the devices' keep-alive connections
    # The load client in the idle scheduling class beside the storm's Sends (Options).
    storm_client_idle: bool = True


async def measure_backend(
    backend: str, fake: NodeFake, auth: ApnsAuth, workdir: Path, options: Options
) -> list[Result]:
    http_address = f"127.0.0.1:{free_port()}"
    base_url = f"http://{http_address}"
    extra = {"PASSPUSH_HTTP_ADDRESS": http_address}
    async with (
        bench_database(backend, workdir) as database,
        serve(database, fake, auth, workdir, extra_env=extra) as deployment,
    ):
        await _wait_http(base_url)
        async with grpc.aio.insecure_channel(deployment.address) as channel:
            setup = Setup(channel, deployment.key)
            started = time.perf_counter()
            pull = await setup.audience(TEMPLATE_A, options.pull_passes, 10**12, content=True)
            storm = await setup.audience(
                TEMPLATE_B, options.pull_storm_passes, 2 * 10**12, content=False
            )
            seconds = time.perf_counter() - started
            log(f"{NAME} on {backend}: set up through the API in {seconds:.0f} s")
        async with (
            client(deployment.address, deployment.key) as bench,
            client(deployment.address, deployment.key, channels=2) as other,
        ):
            run = Run(
                backend,
                base_url,
                workdir,
                bench,
                other,
                deployment.servers[0].pid,
                options.pull_connections,
                options.storm_client == "idle",
            )
            return await _measure(run, pull, storm)


async def _measure(run: Run, pull: Audience, storm: Audience) -> list[Result]:
    backend, count = run.backend, len(pull.devices)
    registrations = await _registered(run, pull)
    await _registered(run, storm)

    rounds = max(1, math.ceil(SERIALS_REQUESTS / count))
    serials = await _devices(run, "serials", pull.devices, rounds=rounds)
    serials.check("serials since a tag")
    devices = _with_tags(pull.devices, serials)
    log(f"{NAME} on {backend}: {serials.requests:,} serials queries at {serials.rate():,.0f}/s")

    signs_before = await signing_rate()
    log(f"{NAME} on {backend}: openssl speed rsa2048: {signs_before:,.0f} sign/s")

    sent_at, began = time.time(), time.perf_counter()
    ticket = await run.bench.send_template(pull.template)
    ticket, seen = await run.bench.wait_terminal(ticket.id, within=600, poll=0.02)
    _delivered(ticket, count)
    push_seconds = seen - began
    server_cpu = tree_cpu_seconds(run.server_pid) or 0.0
    main_cpu = cpu_seconds(run.server_pid) or 0.0
    fetch = await _devices(run, "pull", devices)
    server_cpu = (tree_cpu_seconds(run.server_pid) or 0.0) - server_cpu
    main_cpu = (cpu_seconds(run.server_pid) or 0.0) - main_cpu
    fetch.check("the pull")
    # This machine's speed moves by a fifth from minute to minute: one core's signing rate
    # is read on each side of the pull, and their mean is the one the pull is held against.
    signs_after = await signing_rate()
    signs = (signs_before + signs_after) / 2
    # CPU a device update costs: passpush's processes (PostgreSQL's apart) and the load client.
    server_ms, client_ms = server_cpu / count * 1000, fetch.cpu_seconds / count * 1000
    main_ms = main_cpu / count * 1000
    cost = (
        f"CPU a device update: server {server_ms:.2f} ms (HTTP processes "
        f"{server_ms - main_ms:.2f}, main {main_ms:.2f}), load client {client_ms:.2f} ms"
    )
    updates = fetch.rate(count)
    end_to_end = fetch.last_us / 1e6 - sent_at
    ratio = updates / signs
    log(
        f"{NAME} on {backend}: {count:,} devices updated at {updates:,.0f}/s "
        f"({ratio:.2f}x {signs:,.0f} sign/s: {signs_before:,.0f} before, {signs_after:,.0f} "
        f"after), requests p50 {fetch.p(0.5):.1f} ms p99 "
        f"{fetch.p(0.99):.1f} ms; Send to last device {end_to_end:.1f} s, pushes alone "
        f"{push_seconds:.1f} s; {cost}"
    )
    devices = _with_tags(devices, fetch)

    idle = await _sends_and_broadcast(run.bench, run.other, storm)
    loaded, storm_pull = await _under_pull(run, pull, devices, storm)
    log(
        f"{NAME} on {backend}: single-pass Sends p50 {idle.p(0.5):.1f} -> {loaded.p(0.5):.1f} ms, "
        f"p99 {idle.p(0.99):.1f} -> {loaded.p(0.99):.1f} ms; broadcast {idle.push_rate:,.0f} -> "
        f"{loaded.push_rate:,.0f} pushes/s; devices meanwhile {storm_pull:,.0f} updates/s "
        f"(load client {'idle class' if run.storm_client_idle else 'normal priority'})"
    )
    return _results(
        backend,
        count,
        registrations,
        serials,
        fetch,
        (
            signs,
            f"openssl {signs_before:,.0f} before the pull and {signs_after:,.0f} after; {cost}",
        ),
        push_seconds,
        end_to_end,
        (idle, loaded, storm_pull, len(storm.pass_ids)),
        "idle class" if run.storm_client_idle else "normal priority",
    )


async def _under_pull(
    run: Run, pull: Audience, devices: list[Device], storm: Audience
) -> tuple[SendsAndBroadcast, float]:
    """The Sends and the broadcast to B while A's devices fetch at full rate, again and again
    (each asks since the same tag, so each finds its pass changed every time). A broadcast
    to A changes their passes first; the measuring starts once its pushes are out."""
    ticket = await run.bench.send_template(pull.template)
    await _fanned_out(run.bench, ticket, len(devices))
    stop = asyncio.Event()
    # The load client stands in for devices elsewhere: its own CPU is no load a server
    # carries. At normal priority its wake-ups took the cores from the Sends' process and
    # its database connections (one-pass Send p99 1.8-5.4x idle against 1.2-1.7x, 2026-12-04).
    pulling = asyncio.create_task(
        _devices(run, "pull", devices, rounds=0, stop=stop, idle_class=run.storm_client_idle)
    )
    try:
        await asyncio.sleep(STORM_WARMUP)
        ticket, _ = await run.bench.wait_terminal(ticket.id, within=600)
        _delivered(ticket, len(devices))
        if pulling.done():
            pulling.result()  # the devices stopped early: say why
        loaded = await _sends_and_broadcast(run.bench, run.other, storm)
    finally:
        stop.set()
        report = await pulling
    report.check("the pull under the storm")
    return loaded, report.rate() / 2  # two requests a device update


async def _devices(
    run: Run,
    mode: str,
    devices: list[Device],
    *,
    rounds: int = 1,
    stop: asyncio.Event | None = None,
    idle_class: bool = False,
) -> DevicesReport:
    return await run_devices(
        mode,
        run.base_url,
        devices,
        run.workdir,
        prefix=PREFIX,
        pass_type=TOPIC,
        rounds=rounds,
        stop=stop,
        connections=run.connections,
        idle_class=idle_class,
    )


def _with_tags(devices: list[Device], report: DevicesReport) -> list[Device]:
    """The devices with the lastUpdated each was answered: the tag it asks from next."""
    missing = [d.library_id for d in devices if d.library_id not in report.tags]
    if missing:
        raise RuntimeError(f"{len(missing)} devices got no lastUpdated, e.g. {missing[:3]}")
    return [replace(d, tag=report.tags[d.library_id]) for d in devices]


def _results(
    backend: str,
    count: int,
    registrations: DevicesReport,
    serials: DevicesReport,
    fetch: DevicesReport,
    signing: tuple[float, str],
    push_seconds: float,
    end_to_end: float,
    storm: tuple[SendsAndBroadcast, SendsAndBroadcast, float, int],
    storm_client: str,
) -> list[Result]:
    idle, loaded, storm_pull, storm_passes = storm
    signs, cost = signing
    updates = fetch.rate(count)
    latency = f"p50 {fetch.p(0.5):.1f} ms, p99 {fetch.p(0.99):.1f} ms"
    sends_ok = loaded.p(0.5) <= STORM_FACTOR_BAR * idle.p(0.5) and loaded.p(
        0.99
    ) <= STORM_FACTOR_BAR * idle.p(0.99)
    return [
        Result(
            f"{NAME}: registrations ({count:,} devices, PassKit POST, "
            f"{registrations.connections} connections)",
            backend,
            f"{registrations.rate():,.0f}/s (p50 {registrations.p(0.5):.1f} ms, "
            f"p99 {registrations.p(0.99):.1f} ms)",
            f"≥ {WEB_SERVICE_BAR:,}/s",
            registrations.rate() >= WEB_SERVICE_BAR,
        ),
        Result(
            f"{NAME}: serials changed since a tag ({serials.requests:,} GETs)",
            backend,
            f"{serials.rate():,.0f}/s (p50 {serials.p(0.5):.1f} ms, p99 {serials.p(0.99):.1f} ms)",
            f"≥ {WEB_SERVICE_BAR:,}/s",
            serials.rate() >= WEB_SERVICE_BAR,
        ),
        Result(
            f"{NAME}: device updates after a Send ({count:,} devices: serials + pass, "
            f"{fetch.connections} connections)",
            backend,
            f"{updates:,.0f}/s = {updates / signs:.2f}x openssl's {signs:,.0f} RSA-2048 "
            f"sign/s (requests {latency}; {cost})",
            f"≥ {SIGNING_RATIO_BAR}x sign/s",
            updates / signs >= SIGNING_RATIO_BAR,
        ),
        Result(
            f"{NAME}: Send to the last device holding its new pass ({count:,} devices)",
            backend,
            f"{end_to_end:.1f} s (the pushes alone {push_seconds:.1f} s)",
        ),
        Result(
            f"{NAME}: one-pass Send latency, idle -> while devices pull "
            f"({storm_pull:,.0f} updates/s, load client {storm_client})",
            backend,
            f"p50 {idle.p(0.5):.1f} -> {loaded.p(0.5):.1f} ms, "
            f"p99 {idle.p(0.99):.1f} -> {loaded.p(0.99):.1f} ms",
            f"≤ {STORM_FACTOR_BAR:g}x idle",
            sends_ok,
        ),
        Result(
            f"{NAME}: broadcast push rate ({storm_passes:,} passes), idle -> while devices pull",
            backend,
            f"{idle.push_rate:,.0f} -> {loaded.push_rate:,.0f} pushes/s",
            f"≥ idle / {STORM_FACTOR_BAR:g}",
            loaded.push_rate >= idle.push_rate / STORM_FACTOR_BAR,
        ),
    ]


async def run(options: Options) -> list[Result]:
    with workspace(NAME, options) as workdir:
        async with node_fake(workdir) as fake:
            auth = ApnsAuth.make(options.apns_auth, fake, workdir)
            results: list[Result] = []
            for backend in options.backends:
                results += await measure_backend(backend, fake, auth, workdir, options)
            return results
