"""import: a pass program's holders loaded the way a user loads them, through ImportPasses.

`import_passes` (1,000,000) Apple passes of one template, each with one device (its library
identifier and push token in the request), streamed in one ImportPasses call to a fresh
`passpush serve`, 1,000 passes to a message (`entries`). The requests are made and
serialized before the clock starts, so the figure is the server's: passes/s = N / the
call's time, and the server's peak RSS (VmHWM of `passpush serve`) over the whole import.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from benchmarks.database import bench_database
from benchmarks.harness import Options, Result, log, workspace
from benchmarks.server import ApnsAuth, apple_template, serve
from passpush.fakes.apns import FakeApns
from passpush.fakes.tls import make_tls_bundle
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

NAME = "import"
TEMPLATE = "imported"
RATE_BAR = 20_000  # passes/s
RSS_BAR_MB = 250.0


PER_MESSAGE = 1_000  # passes a message carries, as an import of millions sends them


def imported_pass_id(index: int) -> str:
    return f"p{index:08d}"


def requests(count: int, template: str = TEMPLATE) -> list[bytes]:
    """Each pass with its serial number, token, a tag and one device, PER_MESSAGE passes to
    a message, serialized."""
    entries = [
        ppb.ImportEntry(
            **{  # type: ignore[arg-type]
                "pass": ppb.Pass(
                    id=imported_pass_id(index),
                    template_id=template,
                    serial_number=f"SN-{index:08d}",
                    authentication_token=f"token-{index:016d}",
                    tags=[f"tier-{index % 4}"],
                )
            },
            devices=[
                ppb.ImportedDevice(
                    device_library_identifier=f"device-{index:08d}",
                    push_token=f"{index:064x}",
                )
            ],
        )
        for index in range(count)
    ]
    return [
        ppb.ImportPassesRequest(entries=entries[start : start + PER_MESSAGE]).SerializeToString()
        for start in range(0, count, PER_MESSAGE)
    ]


async def run(options: Options) -> list[Result]:
    count = options.import_passes
    log(f"{NAME}: making {count:,} requests")
    serialized = requests(count)
    results: list[Result] = []
    with workspace(NAME, options) as workdir:
        async with FakeApns(make_tls_bundle(workdir / "tls")) as fake:
            auth = ApnsAuth.make(options.apns_auth, fake, workdir)
            for backend in options.backends:
                async with (
                    bench_database(backend, workdir) as database,
                    serve(database, fake, auth, workdir) as deployment,
                ):
                    seconds, summary = await load(
                        deployment.address, deployment.key, serialized, apple_template(TEMPLATE)
                    )
                    rss = deployment.servers[0].peak_rss_mb() or 0.0
                if summary.created != count:
                    raise RuntimeError(
                        f"import created {summary.created:,} of {count:,}: {summary.failures[:3]}"
                    )
                rate = count / seconds
                log(
                    f"{NAME} on {backend}: {count:,} passes with a device each in {seconds:.1f} s"
                    f" = {rate:,.0f} passes/s, server peak RSS {rss:.0f} MB"
                )
                results += [
                    Result(
                        f"import: {count:,} passes, a device each, one ImportPasses call",
                        backend,
                        f"{rate:,.0f} passes/s ({seconds:.1f} s)",
                        f"≥ {RATE_BAR:,}/s",
                        rate >= RATE_BAR,
                    ),
                    Result(
                        f"import: the server's peak RSS over the {count:,}-pass import",
                        backend,
                        f"{rss:.0f} MB",
                        f"< {RSS_BAR_MB:g} MB",
                        rss < RSS_BAR_MB,
                    ),
                ]
    return results


async def load(
    address: str, key: str, serialized: list[bytes], template: ppb.CreateTemplateRequest
) -> tuple[float, ppb.ImportPassesResponse]:
    """Creates the template, then streams the requests; the seconds the import took."""
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        passes = passes_pb2_grpc.PassServiceStub(channel)
        await passes.CreateTemplate(template, metadata=metadata)
        # Bytes as they are: the client's serializing is not the server's time.
        import_passes = channel.stream_unary(
            "/passpush.v1.PassService/ImportPasses",
            request_serializer=None,
            response_deserializer=ppb.ImportPassesResponse.FromString,
        )

        async def stream() -> AsyncIterator[bytes]:
            for request in serialized:
                yield request

        started = time.perf_counter()
        summary = await import_passes(stream(), metadata=metadata, timeout=7200)
        return time.perf_counter() - started, summary
