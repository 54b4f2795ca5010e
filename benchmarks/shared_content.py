"""Shared content: what 100,000 Apple passes of one template cost the database when their
content (pass.json skeleton and ~60 KB of PNG images) is the template's.

Everything goes through the API of a `passpush serve` child process: CreateTemplate,
SetTemplateContent once, then ImportPasses of N passes, each with its own serial number,
barcode and field values (ApplePassValues). The same N passes with the same values are
imported into another fresh database without the template's content. Reported, per
backend: the database's size after each (SQLite: the file with its WAL after a checkpoint;
PostgreSQL: pg_database_size) and the difference, which is what the shared content costs
beyond the passes' own values. Before shared content, each pass stored its own copy: N x
the content.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import struct
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc

from benchmarks.database import BenchDatabase, bench_database
from benchmarks.harness import Options, Result, log, workspace
from benchmarks.server import ApnsAuth, apple_template, serve
from passpush.fakes.apns import FakeApns
from passpush.fakes.tls import make_tls_bundle
from passpush.store.db import asyncpg_dsn
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

BAR_MB = 50.0
TEMPLATE = "shared-template"
# Sizes (pixels) of grey noise PNGs (noise does not compress): about 60 KB in all.
IMAGES = {
    "icon.png": (29, 29),
    "icon@2x.png": (58, 58),
    "logo.png": (160, 50),
    "logo@2x.png": (320, 100),
    "strip.png": (150, 100),
}
SKELETON = {
    "formatVersion": 1,
    "description": "Bench loyalty card",
    "organizationName": "Bench Coffee",
    "teamIdentifier": "TEAMBENCH1",
    "logoText": "Bench Coffee",
    "storeCard": {
        "primaryFields": [{"key": "points", "label": "Points", "value": 0}],
        "secondaryFields": [{"key": "member", "label": "Member", "value": ""}],
        "backFields": [{"key": "terms", "label": "Terms", "value": "Be nice. " * 20}],
    },
}


def noise_png(width: int, height: int, seed: int) -> bytes:
    generator = random.Random(seed)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + generator.randbytes(width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def content_files() -> dict[str, bytes]:
    return {name: noise_png(w, h, seed) for seed, (name, (w, h)) in enumerate(IMAGES.items())}


def pass_request(index: int) -> ppb.ImportPassesRequest:
    values = ppb.ApplePassValues(
        barcodes=[
            ppb.AppleBarcode(
                format=ppb.APPLE_BARCODE_FORMAT_QR,
                message=f"https://bench.example.com/cards/{index:08d}",
                message_encoding="iso-8859-1",
            )
        ]
    )
    values.field_values["points"].number_value = index % 1000
    values.field_values["member"].string_value = f"Member {index}"
    values.pass_json.update({"relevantDate": "2026-12-24T10:00:00Z"})
    message = ppb.Pass(
        template_id=TEMPLATE, external_id=f"card-{index:08d}", serial_number=f"SN-{index:08d}"
    )
    message.apple_values.CopyFrom(values)
    return ppb.ImportPassesRequest(**{"pass": message})  # type: ignore[arg-type]


async def run(options: Options) -> list[Result]:
    count = options.shared_passes
    results: list[Result] = []
    with workspace("shared-content", options) as workdir:
        async with FakeApns(make_tls_bundle(workdir / "tls")) as fake:
            auth = ApnsAuth.make(options.apns_auth, fake, workdir)
            for backend in options.backends:
                sizes, files = {}, {}
                for with_content in (False, True):
                    what = "with" if with_content else "without"
                    log(f"shared-content: {count:,} passes {what} template content on {backend}")
                    async with bench_database(backend, workdir) as database:
                        async with serve(database, fake, auth, workdir) as deployment:
                            started = time.perf_counter()
                            await load(deployment.address, deployment.key, count, with_content)
                            seconds = time.perf_counter() - started
                        sizes[with_content] = await database_bytes(database)
                        files[with_content] = await scalar(
                            database, "SELECT count(*) FROM content_files"
                        )
                    log(
                        f"shared-content: {what}: {sizes[with_content] / 1e6:,.1f} MB after "
                        f"{seconds:.0f} s ({count / seconds:,.0f} passes/s)"
                    )
                beyond = (sizes[True] - sizes[False]) / 1e6
                content_kb = sum(len(d) for d in content_files().values()) / 1e3
                figure = (
                    f"{beyond:+,.2f} MB beyond their values ({sizes[False] / 1e6:,.1f} MB "
                    f"without content, {sizes[True] / 1e6:,.1f} MB with; {content_kb:.0f} KB "
                    f"of content, {files[True]} stored files, where a copy per pass would make "
                    f"{count * content_kb / 1e6:,.1f} GB)"
                )
                log(f"shared-content: {backend}: {figure}")
                results.append(
                    Result(
                        f"shared-content {count:,}: database growth for a template's content",
                        backend,
                        figure,
                        f"< {BAR_MB:g} MB",
                        beyond < BAR_MB,
                    )
                )
    return results


async def load(address: str, key: str, count: int, with_content: bool) -> None:
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        passes = passes_pb2_grpc.PassServiceStub(channel)
        await passes.CreateTemplate(apple_template(TEMPLATE), metadata=metadata)
        if with_content:
            await passes.SetTemplateContent(
                ppb.SetTemplateContentRequest(
                    template_id=TEMPLATE,
                    pass_json=json.dumps(SKELETON).encode(),
                    files=content_files(),
                ),
                metadata=metadata,
            )

        async def requests() -> AsyncIterator[ppb.ImportPassesRequest]:
            for index in range(count):
                yield pass_request(index)

        summary = await passes.ImportPasses(requests(), metadata=metadata, timeout=7200)
    if summary.created != count:
        raise RuntimeError(f"import created {summary.created} of {count}: {summary.failures[:3]}")


async def database_bytes(database: BenchDatabase) -> int:
    """The database's size on disk, the server stopped."""
    if database.backend == "sqlite":
        return await asyncio.to_thread(_sqlite_bytes, _sqlite_path(database))
    return await scalar(database, "SELECT pg_database_size(current_database())")


async def scalar(database: BenchDatabase, sql: str) -> int:
    if database.backend == "sqlite":
        return await asyncio.to_thread(_sqlite_scalar, _sqlite_path(database), sql)
    connection = await asyncpg.connect(asyncpg_dsn(database.url))
    try:
        return int(await connection.fetchval(sql))
    finally:
        await connection.close()


def _sqlite_path(database: BenchDatabase) -> Path:
    return Path(database.url.split("///", 1)[1])


def _sqlite_bytes(path: Path) -> int:
    """The file and its WAL, after a checkpoint that empties the WAL."""
    _sqlite_scalar(path, "PRAGMA wal_checkpoint(TRUNCATE)")
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _sqlite_scalar(path: Path, sql: str) -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute(sql).fetchone()[0])
    finally:
        connection.close()
