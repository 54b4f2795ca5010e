"""python -m benchmarks [name ...] [--quick] [sizes]: run benchmarks, print one table.

Every size also reads an environment variable, PASSPUSH_BENCH_<FLAG> (e.g.
PASSPUSH_BENCH_PASSES=20000 or PASSPUSH_BENCH_QUICK=1 make bench); a flag wins over it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence

from benchmarks import (
    accept,
    accept_core,
    containment,
    device_pull,
    fake,
    fanout,
    google_broadcast,
    outage,
    pass_import,
    resolution,
    scaleout,
    shared_content,
    watch,
)
from benchmarks.database import BACKENDS, postgres_version
from benchmarks.harness import Options, Result, log, machine, render_table, workspace

Benchmark = Callable[[Options], Awaitable[list[Result]]]


async def _fake_capacity(options: Options) -> list[Result]:
    with workspace("fake-apns", options) as workdir:
        return await fake.capacity(workdir, options.fake_pushes)


# Run when named only: a diagnosis, not one of the benchmarks.
EXTRA: dict[str, tuple[Benchmark, str]] = {
    "gateway": (fanout.run_gateway, "passpush's APNs gateway alone vs the raw aioapns loop"),
    "accept-core": (accept_core.run, "the accept path in-process, without gRPC or pushes"),
}
BENCHMARKS: dict[str, tuple[Benchmark, str]] = {
    "fake-apns": (_fake_capacity, "the Node fake APNs takes well over 10,000 pushes/s"),
    "fanout": (fanout.run, "Send to N passes vs a raw aioapns loop, SQLite and PostgreSQL"),
    "scale-out": (scaleout.run, "the fan-out on PostgreSQL, 2 replicas vs 1"),
    "resolution": (resolution.run, "1M passes: Send time, first push, peak RSS"),
    "accept": (accept.run, "single-pass Send latency at 500/s; throughput vs a no-op server"),
    "watch": (watch.run, "1,000 WatchTicket streams follow a broadcast: update lag"),
    "outage": (outage.run, "a broadcast through a 45-s APNs outage, then errors and drops"),
    "containment": (
        containment.run,
        "the largest audiences sent by one project: another's one-pass Send latency",
    ),
    "device-pull": (
        device_pull.run,
        "devices fetch their passes after a Send (C client): updates/s vs RSA signing, the storm",
    ),
    "import": (
        pass_import.run,
        "1M passes with a device each through one ImportPasses call: passes/s, peak RSS",
    ),
    "google-broadcast": (
        google_broadcast.run,
        "a Send to 100,000 holders of one Google class: API calls, time to a terminal ticket",
    ),
    "shared-content": (
        shared_content.run,
        "N passes sharing a template's ~60 KB of images: database growth beyond their values",
    ),
}

# Full size, and --quick (each benchmark in seconds; all of them in under a minute).
FULL = Options()
QUICK = Options(
    quick=True,
    fake_pushes=10_000,
    passes=2_000,
    scaleout_passes=2_000,
    resolution_passes=20_000,
    resolution_watch=3.0,
    duration=1.0,
    throughput_seconds=1.0,
    watch_streams=100,
    watch_passes=2_000,
    outage_passes=1_000,
    outage_seconds=5.0,
    pull_passes=500,
    pull_storm_passes=1_000,
    shared_passes=2_000,
    import_passes=20_000,
    google_passes=10_000,
    google_sample=40,
)


def parse(argv: Sequence[str] | None) -> tuple[list[str], Options, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run passpush's benchmarks and print their table.",
        epilog="benchmarks: "
        + "; ".join(f"{name}: {text}" for name, (_, text) in {**BENCHMARKS, **EXTRA}.items()),
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="name",
        help=f"which to run (default: {', '.join(BENCHMARKS)}; also: {', '.join(EXTRA)})",
    )
    parser.add_argument("--quick", action="store_true", default=None, help="small sizes")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a bar is missed (always on errors)"
    )
    parser.add_argument("--keep", action="store_true", default=None, help="keep temp dirs/logs")
    parser.add_argument("--backends", help=f"comma-separated, of {', '.join(BACKENDS)}")
    parser.add_argument("--apns-auth", choices=["token", "cert"], help="APNs auth of both sides")
    parser.add_argument(
        "--accept-roles",
        choices=["split", "all"],
        help="accept: passpush as `serve --role api` + `--role worker` (split, the default) "
        "or one `serve` (all)",
    )
    parser.add_argument(
        "--storm-client",
        choices=["idle", "normal"],
        help="device-pull: the load client's scheduling class while it fetches beside the "
        "storm's Sends (idle, the default: it stands in for devices elsewhere)",
    )
    parser.add_argument(
        "--containment-roles",
        choices=["all", "split"],
        help="containment: passpush as one `serve` (all, the default) or as `serve --role api` "
        "+ `--role worker` (split)",
    )
    sizes = {
        "fake_pushes": "pushes of the fake-apns check",
        "passes": "fan-out audience",
        "scaleout_passes": "scale-out audience",
        "resolution_passes": "resolution audience",
        "resolution_watch": "seconds of the 1M broadcast watched for RSS (0: all of it)",
        "rate": "accept: Sends per second, open loop",
        "duration": "accept: seconds of the open loop",
        "throughput_seconds": "accept: seconds of each closed loop",
        "concurrency": "accept: calls in flight in the closed loop",
        "channels": "accept: gRPC channels of the client",
        "connections": "raw loop: aioapns connections (default: PASSPUSH_APNS_CONNECTIONS or 4)",
        "in_flight": "raw loop: pushes in flight (default: PASSPUSH_WORKER_IN_FLIGHT or 200)",
        "watch_streams": "watch: concurrent WatchTicket streams",
        "watch_passes": "watch: the watched broadcast's audience",
        "outage_passes": "outage: the broadcast's audience",
        "outage_seconds": "outage: seconds the fake APNs is down",
        "pull_passes": "device-pull: passes with content whose devices fetch them",
        "pull_storm_passes": "device-pull: the broadcast measured beside the fetching devices",
        "pull_connections": "device-pull: the devices' keep-alive connections (devices at once)",
        "shared_passes": "shared-content: passes imported",
        "import_passes": "import: passes imported, a device each",
        "google_passes": "google-broadcast: holders of one Google class",
        "google_sample": "google-broadcast: the subset sent to object by object",
    }
    for dest, text in sizes.items():
        kind = type(getattr(FULL, dest))
        parser.add_argument(f"--{dest.replace('_', '-')}", dest=dest, type=kind, help=text)
    args = parser.parse_args(argv)

    unknown = [n for n in args.names if n not in BENCHMARKS and n not in EXTRA]
    if unknown:
        known = ", ".join([*BENCHMARKS, *EXTRA])
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {known}")

    def given(dest: str) -> str | None:
        value = getattr(args, dest, None)
        if value is not None:
            return str(value)
        return os.environ.get(f"PASSPUSH_BENCH_{dest.upper()}") or None

    quick = given("quick") not in (None, "0", "false", "False")
    base = QUICK if quick else FULL
    # Like passpush's own tuning: the raw loop mirrors the server's connection and in-flight counts.
    inherited = {
        "connections": os.environ.get("PASSPUSH_APNS_CONNECTIONS"),
        "in_flight": os.environ.get("PASSPUSH_WORKER_IN_FLIGHT"),
    }
    values: dict[str, object] = {}
    for dest in sizes:
        raw = given(dest) or inherited.get(dest)
        if raw is not None:
            values[dest] = type(getattr(FULL, dest))(raw)
    if backends := given("backends"):
        values["backends"] = tuple(b.strip() for b in backends.split(",") if b.strip())
        if bad := [b for b in values["backends"] if b not in BACKENDS]:  # type: ignore[attr-defined]
            parser.error(f"unknown backend(s) {bad}; choose from {', '.join(BACKENDS)}")
    if auth := given("apns_auth"):
        values["apns_auth"] = auth
    if roles := given("accept_roles"):
        values["accept_roles"] = roles
    if roles := given("containment_roles"):
        values["containment_roles"] = roles
    if storm_client := given("storm_client"):
        values["storm_client"] = storm_client
    values["keep"] = given("keep") not in (None, "0", "false", "False")
    options = dataclasses.replace(base, **values)  # type: ignore[arg-type]
    return args.names or list(BENCHMARKS), options, args.strict


async def run_all(names: list[str], options: Options) -> list[Result]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    results: list[Result] = []
    for name in names:
        run, _ = {**BENCHMARKS, **EXTRA}[name]
        log(f"{name}: starting")
        started = time.perf_counter()
        try:
            results += await run(options)
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            results.append(Result(name, "—", f"error: {message}", "runs", False))
        log(f"{name}: done in {time.perf_counter() - started:.0f} s")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    names, options, strict = parse(argv)
    header = machine()
    uses_postgres = {"scale-out", "resolution"} & set(names) or (
        "postgresql" in options.backends
        and {"fanout", "accept", "containment", "device-pull", "shared-content", "import"}
        & set(names)
    )
    if uses_postgres:
        header.append(("postgresql", asyncio.run(postgres_version())))
    tuning = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k in _TUNING]
    header.append(("passpush", " ".join(tuning) or "default worker and APNs settings"))
    size = "quick" if options.quick else "full"
    header.append(("sizes", f"{size}: {_sizes(options)}"))
    header.append(("apns", f"Node {fake.FAKE_SCRIPT.name}, {options.apns_auth} auth"))
    log("passpush benchmarks: " + ", ".join(names))
    try:
        results = asyncio.run(run_all(names, options))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted")
        return 130
    print()
    print("passpush benchmarks")
    for key, value in header:
        print(f"  {key:<10} {value}")
    print()
    print(render_table(results))
    errors = any(r.figure.startswith("error:") for r in results)
    missed = any(r.ok is False for r in results)
    return 1 if errors or (strict and missed) else 0


_TUNING = {
    f"PASSPUSH_{name}"
    for name in (
        "WORKER_BATCH_SIZE",
        "WORKER_IN_FLIGHT",
        "WORKER_LEASE_SECONDS",
        "WORKER_POLL_SECONDS",
        "APNS_CONNECTIONS",
    )
}


def _sizes(options: Options) -> str:
    return (
        f"passes={options.passes:,} scaleout_passes={options.scaleout_passes:,} "
        f"resolution_passes={options.resolution_passes:,} "
        f"resolution_watch={options.resolution_watch:g}s rate={options.rate:g}/s "
        f"duration={options.duration:g}s concurrency={options.concurrency} "
        f"connections={options.connections} in_flight={options.in_flight} "
        f"outage_passes={options.outage_passes:,} outage_seconds={options.outage_seconds:g}s "
        f"pull_passes={options.pull_passes:,} pull_storm_passes={options.pull_storm_passes:,} "
        f"shared_passes={options.shared_passes:,} import_passes={options.import_passes:,} "
        f"google_passes={options.google_passes:,} google_sample={options.google_sample:,} "
        f"backends={','.join(options.backends)}"
    )


if __name__ == "__main__":
    sys.exit(main())
