"""Scale-out: the fan-out on PostgreSQL with two `passpush serve` replicas against one."""

from __future__ import annotations

from benchmarks.fake import node_fake
from benchmarks.fanout import measure_fanout
from benchmarks.harness import Options, Result, log, workspace
from benchmarks.server import ApnsAuth

BACKEND = "postgresql"


async def run(options: Options) -> list[Result]:
    with workspace("scale-out", options) as workdir:
        async with node_fake(workdir) as fake:
            auth = ApnsAuth.make(options.apns_auth, fake, workdir)
            runs = []
            for replicas in (1, 2):
                log(f"scale-out: {options.scaleout_passes:,} passes, {replicas} replica(s)")
                runs.append(
                    await measure_fanout(
                        BACKEND, options.scaleout_passes, fake, auth, workdir, replicas=replicas
                    )
                )
    one, two = runs
    for measured in runs:
        if not measured.complete:
            raise RuntimeError(f"scale-out broadcast did not complete: {measured.summary()}")
    ratio = two.rate / one.rate
    return [
        Result(
            f"scale-out {options.scaleout_passes:,}: 1 replica",
            BACKEND,
            f"{one.rate:,.0f} pushes/s",
        ),
        Result(
            f"scale-out {options.scaleout_passes:,}: 2 replicas",
            BACKEND,
            f"{two.rate:,.0f} pushes/s = {ratio:.2f}x one",
        ),
    ]
