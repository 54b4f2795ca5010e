"""Outage: a broadcast through an APNs outage, then transient errors and dropped connections.

passpush (`passpush serve`, its default retry policy) Sends to N Apple devices while the
bundled Python fake APNs is down for `outage_seconds` (connections refused), then answers a
fifth of pushes 429/500/503 and drops the connection at 1% of them. Reported: the devices
delivered and failed, the pushes the fake received and how many reached a device it had
answered 200 already (duplicates), and the time from the Send to the ticket terminal.
"""

from __future__ import annotations

import time

from benchmarks.database import bench_database
from benchmarks.harness import Options, Result, log, workspace
from benchmarks.server import ApnsAuth, client, serve
from passpush.fakes.apns import FakeApns
from passpush.fakes.tls import make_tls_bundle
from passpush.v1 import notifications_pb2 as pb

ERROR_SHARE = 0.2
DROP_SHARE = 0.01


async def run(options: Options) -> list[Result]:
    passes, seconds = options.outage_passes, options.outage_seconds
    results: list[Result] = []
    with workspace("outage", options) as workdir:
        async with FakeApns(make_tls_bundle(workdir / "tls")) as fake:
            auth = ApnsAuth.make(options.apns_auth, fake, workdir)
            for backend in options.backends:
                log(f"outage: {passes:,} devices through a {seconds:g}-s outage on {backend}")
                async with bench_database(backend, workdir) as database:
                    await database.seed(passes)
                    async with serve(database, fake, auth, workdir) as deployment:
                        fake.reset()
                        await fake.outage(seconds)
                        fake.faults(errors=ERROR_SHARE, drops=DROP_SHARE, seed=16)
                        async with client(deployment.address, deployment.key) as c:
                            started = time.perf_counter()
                            ticket = await c.send_template()
                            # The default budget (an hour) bounds it; twice that is an error.
                            final, finished = await c.wait_terminal(ticket.id, 7200, poll=0.5)
                counts = final.counts
                pushes = sum(fake.pushes.values())
                figure = (
                    f"{counts.delivered:,} delivered, {counts.failed:,} failed, "
                    f"{pushes:,} pushes, {fake.duplicates:,} duplicates, terminal "
                    f"{pb.TicketState.Name(final.state)} after {finished - started:.0f} s"
                )
                log(f"outage: {figure}")
                results.append(
                    Result(
                        f"outage {passes:,}: {seconds:g}-s APNs outage, then "
                        f"{ERROR_SHARE:.0%} 429/5xx and {DROP_SHARE:.0%} dropped connections",
                        backend,
                        figure,
                        "every device delivered, none failed",
                        counts.delivered == passes and counts.failed == 0,
                    )
                )
    return results
