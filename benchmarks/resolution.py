"""Resolution: Send to a template of 1,000,000 passes on PostgreSQL.

Measures the Send call (it answers once its first chunk of passes is in the outbox; bar
< 10 s), the time until the whole audience is in the outbox (its fan-out complete: the
ticket's total counts every pass; it goes on beside the pushes, and need only stay ahead of
them), the time from Send returning to the first push reaching the fake APNs
(bar < 1 s), and the server's peak RSS through the broadcast (VmHWM; bar < 250 MB). With
--resolution-watch 0 the whole broadcast is watched; otherwise its first N seconds (a million
pushes take minutes on a small machine).
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.database import bench_database
from benchmarks.fake import node_fake
from benchmarks.fanout import fanout_limit
from benchmarks.harness import Options, Result, log, workspace
from benchmarks.server import TERMINAL, ApnsAuth, client, serve
from passpush.v1 import notifications_pb2 as pb

BACKEND = "postgresql"
SEND_BAR_SECONDS = 10.0
FIRST_PUSH_BAR_SECONDS = 1.0
RSS_BAR_MB = 250.0


async def run(options: Options) -> list[Result]:
    passes = options.resolution_passes
    with workspace("resolution", options) as workdir:
        async with node_fake(workdir) as fake, bench_database(BACKEND, workdir) as database:
            auth = ApnsAuth.make(options.apns_auth, fake, workdir)
            await database.seed(passes)
            async with (
                serve(database, fake, auth, workdir) as deployment,
                client(deployment.address, deployment.key) as c,
            ):
                (server,) = deployment.servers
                await fake.reset()
                started = time.perf_counter()
                ticket = await c.send_template()
                send_seconds = time.perf_counter() - started
                returned_ms = time.time() * 1000
                log(f"resolution: Send of {passes:,} answered in {send_seconds:.2f} s")
                first = await fake.wait_for(1, within=60)
                if first.first_ms is None:
                    raise RuntimeError("no push reached the fake within 60 s of Send")
                first_push = (first.first_ms - returned_ms) / 1000
                log(f"resolution: first push {first_push * 1000:.0f} ms after Send returned")
                while ticket.counts.total < passes:
                    await asyncio.sleep(0.1)
                    ticket = await c.get_ticket(ticket.id)
                filled_seconds = time.perf_counter() - started
                pushed_by_then = (await fake.stats()).count
                log(
                    f"resolution: the outbox holds all {passes:,} after {filled_seconds:.2f} s "
                    f"({pushed_by_then:,} pushed by then)"
                )

                watch = options.resolution_watch or fanout_limit(passes)
                deadline = time.perf_counter() + watch
                state = pb.TICKET_STATE_PENDING
                while time.perf_counter() < deadline and state not in TERMINAL:
                    await asyncio.sleep(1.0)
                    state = (await c.get_ticket(ticket.id)).state
                watched = time.perf_counter() - started
                peak = server.peak_rss_mb() or float("nan")
                pushed = (await fake.stats()).count
            whole = state in TERMINAL
            log(
                f"resolution: {pushed:,} of {passes:,} pushed in {watched:.0f} s "
                f"({pb.TicketState.Name(state)}), peak RSS {peak:.0f} MB"
            )
    broadcast = watched - send_seconds
    scope = "whole broadcast" if whole else f"first {broadcast:.0f} s, {pushed:,} pushed"
    return [
        Result(
            f"resolution {passes:,}: Send answered",
            BACKEND,
            f"{send_seconds:.2f} s",
            f"< {SEND_BAR_SECONDS:.0f} s",
            send_seconds < SEND_BAR_SECONDS,
        ),
        # The fan-out goes on beside the pushes; it must stay ahead of them, not be fast.
        Result(
            f"resolution {passes:,}: outbox filled (fan-out complete)",
            BACKEND,
            f"{filled_seconds:.2f} s ({pushed_by_then:,} pushed by then)",
        ),
        Result(
            f"resolution {passes:,}: first push after Send",
            BACKEND,
            f"{first_push * 1000:.0f} ms",
            f"< {FIRST_PUSH_BAR_SECONDS:.0f} s",
            first_push < FIRST_PUSH_BAR_SECONDS,
        ),
        Result(
            f"resolution {passes:,}: server peak RSS",
            BACKEND,
            f"{peak:.0f} MB ({scope})",
            f"< {RSS_BAR_MB:.0f} MB",
            peak < RSS_BAR_MB,
        ),
        Result(
            f"resolution {passes:,}: push rate",
            BACKEND,
            f"{pushed / broadcast:,.0f} pushes/s ({scope})",
        ),
    ]
