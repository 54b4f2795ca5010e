"""Watch: 1,000 concurrent WatchTicket streams on one server follow one broadcast.

A template of `watch_passes` passes is sent to, and at once `watch_streams` streams (over 16
gRPC channels) watch its ticket until it is terminal. The lag of an update is the time the
client got it minus the ticket's `update_time` in it (when the server recorded that state;
one machine, one clock). A stream's first message is the state it joined in, not an update,
and is left out. Bar: every update of every stream within 1 s (the maximum lag).
"""

from __future__ import annotations

import asyncio
import time

import grpc

from benchmarks.database import bench_database
from benchmarks.fake import node_fake
from benchmarks.harness import Options, Result, log, percentile, workspace
from benchmarks.server import CHANNEL_OPTIONS, TERMINAL, ApnsAuth, client, serve
from passpush.v1 import notifications_pb2 as pb
from passpush.v1 import notifications_pb2_grpc as pb_grpc

LAG_BAR_SECONDS = 1.0
CHANNELS = 16


async def run(options: Options) -> list[Result]:
    results = []
    for backend in options.backends:
        results += await _measure(backend, options)
    return results


async def _measure(backend: str, options: Options) -> list[Result]:
    streams, passes = options.watch_streams, options.watch_passes
    with workspace("watch", options) as workdir:
        async with node_fake(workdir) as fake, bench_database(backend, workdir) as database:
            auth = ApnsAuth.make(options.apns_auth, fake, workdir)
            await database.seed(passes)
            async with (
                serve(database, fake, auth, workdir) as deployment,
                client(deployment.address, deployment.key) as c,
            ):
                channels = [
                    grpc.aio.insecure_channel(deployment.address, options=CHANNEL_OPTIONS)
                    for _ in range(CHANNELS)
                ]
                metadata = (("authorization", f"Bearer {deployment.key}"),)
                lags: list[float] = []
                counts: list[int] = []
                ends: list[pb.Ticket] = []

                async def follow(
                    stub: pb_grpc.NotificationServiceAsyncStub, ticket_id: int
                ) -> None:
                    received = 0
                    last = pb.Ticket()
                    request = pb.WatchTicketRequest(id=ticket_id)
                    async for last in stub.WatchTicket(request, metadata=metadata):
                        if received:
                            lags.append(time.time() - last.update_time.ToNanoseconds() / 1e9)
                        received += 1
                    counts.append(received)
                    ends.append(last)

                try:
                    stubs = [pb_grpc.NotificationServiceStub(ch) for ch in channels]
                    ticket = await c.send_template()
                    started = time.perf_counter()
                    await asyncio.gather(
                        *(follow(stubs[i % CHANNELS], ticket.id) for i in range(streams))  # type: ignore[arg-type]
                    )
                    seconds = time.perf_counter() - started
                    final = await c.get_ticket(ticket.id)
                finally:
                    await asyncio.gather(*(ch.close() for ch in channels))
    finished = sum(1 for t in ends if t.state in TERMINAL and t.counts == final.counts)
    lags.sort()
    worst = lags[-1] if lags else float("inf")
    rate = (sum(counts) / len(counts)) / seconds if counts else 0.0
    log(
        f"watch on {backend}: {streams:,} streams over {seconds:.1f} s, {len(lags):,} updates, "
        f"lag p50 {percentile(lags, 0.5) * 1000:.0f} ms, p99 {percentile(lags, 0.99) * 1000:.0f} "
        f"ms, max {worst * 1000:.0f} ms; {finished:,} streams ended at the final state"
    )
    name = f"watch {streams:,} streams x {passes:,}-pass broadcast"
    return [
        Result(
            f"{name}: update lag",
            backend,
            f"max {worst * 1000:.0f} ms (p50 {percentile(lags, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(lags, 0.99) * 1000:.0f} ms; {rate:.1f} updates/s a stream)",
            f"< {LAG_BAR_SECONDS * 1000:.0f} ms",
            worst < LAG_BAR_SECONDS and finished == streams,
        ),
    ]
