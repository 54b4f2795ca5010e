"""A large Send by one project does not stall another project's one-pass Sends.

Project `bench` holds `passes` passes (one device each), every pass with one of 500 tags and
one of 1,000 group tags; its template belongs to an entity. Project `other` holds 200 passes,
made through the API. While `other` sends one-pass Sends at a steady rate (open loop, 50/s),
`bench` sends, one after another and each to its end:

1. a template broadcast to all its passes;
2. the largest entity target allowed: 1,000 group tags (every pass matches);
3. the largest segment allowed: 500 tags under one `or` (every pass matches).

For each, the report gives the large Send's own time (to its answer, and to the end of its
fan-out) and `other`'s Send latency (max and p99) over the calls started from the large Send
until its fan-out was complete. Bar: max < 1 s.

The passes, devices and tags of `bench` are seeded straight into the tables (as the other
benchmarks do: 100,000 passes through the API would take minutes), and so is its entity;
the segment and all of `other` go through the API.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import struct_pb2
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks.database import PROJECT, TEMPLATE, BenchDatabase, bench_database, chunks, pass_id
from benchmarks.fake import NodeFake, node_fake
from benchmarks.harness import (
    TOPIC,
    VENV_BIN,
    Options,
    Result,
    log,
    percentile,
    run_command,
    workspace,
)
from benchmarks.server import CONTENT, ApnsAuth, Client, client, serve
from passpush.domain.segments import SEGMENT_TAGS_MAX
from passpush.domain.validation import ENTITY_GROUP_TAGS_MAX
from passpush.store.models import EntityRow, PassGroupTagRow, PassTagRow, TemplateRow, table_of
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

OTHER = "other"
OTHER_PASSES = 200
OTHER_RATE = 50.0  # one-pass Sends per second
BAR_SECONDS = 1.0
SETTLE_SECONDS = 1.0  # of the steady Sends before and after each large one
ROW_CHUNK = 20_000


Sender = Callable[[int], Awaitable[object]]


@dataclass
class SteadySends:
    """`other`'s open loop: each call's start (perf_counter) and latency (inf if it failed)."""

    calls: list[tuple[float, float]]

    def during(self, start: float, end: float) -> list[float]:
        return sorted(latency for began, latency in self.calls if start <= began <= end)


async def steady_sends(
    send: Callable[[int], Awaitable[object]], stop: asyncio.Event
) -> SteadySends:
    loop = asyncio.get_running_loop()
    record = SteadySends([])
    tasks: list[asyncio.Task[None]] = []

    async def one(index: int) -> None:
        began = time.perf_counter()
        try:
            await send(index)
            record.calls.append((began, time.perf_counter() - began))
        except grpc.aio.AioRpcError:
            record.calls.append((began, float("inf")))

    start, index = loop.time(), 0
    while not stop.is_set():
        tasks.append(asyncio.create_task(one(index)))
        index += 1
        await asyncio.sleep(max(0.0, start + index / OTHER_RATE - loop.time()))
    await asyncio.gather(*tasks)
    return record


async def seed_audience(database: BenchDatabase, passes: int) -> None:
    """Entity `brand` holding the seeded template, and tags and group tags for its passes."""
    engine = create_async_engine(database.url)
    try:
        async with engine.begin() as connection:
            entity = {"project_id": PROJECT, "id": "brand", "created_at": datetime.now(UTC)}
            await connection.execute(insert(table_of(EntityRow)), [entity])
            for table, prefix, kinds in (
                (table_of(PassTagRow), "t", SEGMENT_TAGS_MAX),
                (table_of(PassGroupTagRow), "g", ENTITY_GROUP_TAGS_MAX),
            ):
                for indexes in chunks(passes, ROW_CHUNK):
                    rows = [
                        {
                            "project_id": PROJECT,
                            "pass_id": pass_id(i),
                            "tag": f"{prefix}{i % kinds}",
                        }
                        for i in indexes
                    ]
                    await connection.execute(insert(table), rows)
            await connection.execute(
                update(table_of(TemplateRow))
                .where(TemplateRow.project_id == PROJECT, TemplateRow.id == TEMPLATE)
                .values(entity_id="brand")
            )
        if database.backend == "postgresql":
            # Fresh statistics for the tags, as autovacuum would give them.
            async with engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.exec_driver_sql("ANALYZE")
    finally:
        await engine.dispose()


async def make_other_project(database: BenchDatabase, address: str) -> str:
    """Project `other` with its passes and devices, through the API; returns its key."""
    command = [str(VENV_BIN / "passpush"), "keys", "create", "--project", OTHER]
    output = await run_command([*command, "--scopes", "all"], env=database.env())
    key = output.strip().splitlines()[-1]
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = passes_pb2_grpc.PassServiceStub(channel)
        template = ppb.Template(
            project_id=OTHER, platform=ppb.PLATFORM_APPLE, pass_type_identifier=TOPIC
        )
        await stub.CreateTemplate(
            ppb.CreateTemplateRequest(template_id="other-template", template=template),
            metadata=metadata,
        )
        for i in range(OTHER_PASSES):
            upsert: Any = {"pass": ppb.Pass(id=f"other-{i}", template_id="other-template")}
            await stub.UpsertPass(ppb.UpsertPassRequest(**upsert), metadata=metadata)
            await stub.RegisterDevice(
                ppb.RegisterDeviceRequest(
                    pass_id=f"other-{i}",
                    device_library_identifier=f"other-device-{i}",
                    push_token=f"{10**12 + i:064x}",
                ),
                metadata=metadata,
            )
    return key


async def make_bench_targets(address: str, key: str) -> dict[str, npb.Target]:
    """The largest segment of `bench`, through the API; the three targets."""
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = passes_pb2_grpc.PassServiceStub(channel)
        criteria = struct_pb2.Struct()
        criteria.update({"or": [{"tag": f"t{i}"} for i in range(SEGMENT_TAGS_MAX)]})
        segment = ppb.Segment(project_id=PROJECT, criteria=criteria)
        await stub.CreateSegment(
            ppb.CreateSegmentRequest(segment_id="largest", segment=segment), metadata=metadata
        )
    group_tags = [f"g{i}" for i in range(ENTITY_GROUP_TAGS_MAX)]
    return {
        "template broadcast": npb.Target(template=npb.TemplateRef(template_id=TEMPLATE)),
        f"entity, {ENTITY_GROUP_TAGS_MAX:,} group tags": npb.Target(
            entity=npb.EntityRef(entity_id="brand", group_tags=group_tags)
        ),
        f"segment, {SEGMENT_TAGS_MAX} tags": npb.Target(
            segment=npb.SegmentRef(project_id=PROJECT, segment_id="largest")
        ),
    }


async def measure_backend(
    backend: str, fake: NodeFake, auth: ApnsAuth, workdir: Any, options: Options
) -> list[Result]:
    passes = options.passes
    async with bench_database(backend, workdir) as database:
        await database.seed(passes)
        await seed_audience(database, passes)
        split = options.containment_roles == "split"
        async with serve(database, fake, auth, workdir, split_roles=split) as deployment:
            targets = await make_bench_targets(deployment.address, deployment.key)
            other_key = await make_other_project(database, deployment.address)
            async with (
                client(deployment.address, deployment.key) as bench,
                client(deployment.address, other_key, channels=2) as other,
            ):

                async def one_pass(index: int) -> object:
                    target = npb.Target(pass_id=f"other-{index % OTHER_PASSES}")
                    request = npb.SendRequest(
                        target=target, content=CONTENT, request_id=f"c-{uuid.uuid4()}"
                    )
                    return await other.send(request, deadline=30)

                return await _measure(backend, bench, one_pass, targets, passes, split)


async def _measure(
    backend: str,
    bench: Client,
    one_pass: Sender,
    targets: dict[str, npb.Target],
    passes: int,
    split: bool,
) -> list[Result]:
    results = []
    for name, target in targets.items():
        stop = asyncio.Event()
        steady = asyncio.create_task(steady_sends(one_pass, stop))
        await asyncio.sleep(SETTLE_SECONDS)
        began = time.perf_counter()
        ticket = await bench.send(npb.SendRequest(target=target, content=CONTENT))
        answered = time.perf_counter() - began
        # The Send answers after its first chunk of passes; the window runs until the last
        # chunk is in (the ticket's total then counts every pass).
        ticket = await _fanned_out(bench, ticket, passes)
        ended = time.perf_counter()
        await asyncio.sleep(SETTLE_SECONDS)
        stop.set()
        calls = await steady
        latencies = calls.during(began, ended)
        # For comparison: once the fan-out is done, while its pushes still go out.
        pushing = calls.during(ended, ended + SETTLE_SECONDS)
        worst = latencies[-1] if latencies else 0.0
        p99 = percentile(latencies, 0.99) if latencies else 0.0
        log(
            f"containment on {backend}: {name} to {passes:,} passes answered in "
            f"{answered:.2f} s, fanned out in {ended - began:.2f} s; meanwhile "
            f"{len(latencies)} one-pass Sends of another project: "
            f"p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms; then, while its pushes "
            f"went out: max {(pushing[-1] if pushing else 0.0) * 1000:.0f} ms"
        )
        await bench.wait_terminal(ticket.id, within=600)  # its pushes out before the next
        results.append(
            Result(
                f"{name} ({passes:,} passes, {ended - began:.1f} s"
                + (", api + worker processes" if split else "")
                + "): other project's Send",
                backend,
                f"max {worst * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms ({len(latencies)} calls)",
                f"max < {BAR_SECONDS:.0f} s",
                worst < BAR_SECONDS,
            )
        )
    return results


async def _fanned_out(bench: Client, ticket: npb.Ticket, passes: int) -> npb.Ticket:
    """The ticket once its fan-out is complete: every pass has its delivery."""
    async with asyncio.timeout(600):
        while ticket.counts.total < passes:
            await asyncio.sleep(0.01)
            ticket = await bench.get_ticket(ticket.id)
    if ticket.counts.total != passes:
        raise RuntimeError(f"{ticket.id}: {ticket.counts.total} deliveries, not {passes}")
    return ticket


async def run(options: Options) -> list[Result]:
    with workspace("containment", options) as workdir:
        async with node_fake(workdir) as fake:
            auth = ApnsAuth.make(options.apns_auth, fake, workdir)
            results: list[Result] = []
            for backend in options.backends:
                results += await measure_backend(backend, fake, auth, workdir, options)
            return results
