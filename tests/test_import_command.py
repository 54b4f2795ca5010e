"""`passpush import FILE`: JSONL and CSV files of passes and devices, imported through a
running server, each refused line reported by its number."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from passpush.app import Application
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from processes import PASSPUSH, interrupt_another_thread, run
from support import World, token


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await world.apple_template("loyalty")
    return world


def _env(api_key: str) -> dict[str, str]:
    return {"PASSPUSH_API_KEY": api_key, "PATH": os.environ["PATH"], "COLUMNS": "120"}


async def _listed(passes: passes_pb2_grpc.PassServiceStub) -> dict[str, ppb.Pass]:
    listed: dict[str, ppb.Pass] = {}
    page_token = ""
    while True:
        page = await passes.ListPasses(
            ppb.ListPassesRequest(template_id="loyalty", page_size=500, page_token=page_token)
        )
        listed.update((p.id, p) for p in page.passes)
        page_token = page.next_page_token
        if not page_token:
            return listed


# The command is a client of the server: its files, line numbers and report are the same on
# either database, and the import's writes are tested on both (test_pass_import.py).
on_sqlite_alone = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@on_sqlite_alone
async def test_a_jsonl_file_is_imported_and_its_bad_lines_named(
    world: World,
    passes: passes_pb2_grpc.PassServiceStub,
    server: Application,
    api_key: str,
    tmp_path: Path,
) -> None:
    lines = [
        json.dumps(
            {
                "pass": {"id": f"p{n}", "tags": ["gold"]},
                "devices": [{"deviceLibraryIdentifier": f"d{n}", "pushToken": token(n)}],
            }
        )
        for n in range(1500)  # two messages
    ]
    lines[10] = "{not json"
    lines[20] = json.dumps({"pass": {"id": "p20", "templateId": "nope"}})
    lines.insert(30, "")  # blank lines are skipped
    path = tmp_path / "passes.jsonl"
    path.write_text("\n".join(lines) + "\n")

    done = await run(
        PASSPUSH, "import", "--address", f"127.0.0.1:{server.port}", "--template", "loyalty",
        path, env=_env(api_key),
    )  # fmt: skip

    assert done.returncode == 1, done.output
    assert "1,498 created, 0 updated, 2 failed" in done.stdout
    assert "line 11: cannot be read" in done.stdout
    assert "line 21: " in done.stdout and "template" in done.stdout
    listed = await _listed(passes)
    assert len(listed) == 1498 and list(listed["p1499"].tags) == ["gold"]


@on_sqlite_alone
async def test_a_csv_file_is_imported_with_one_device_a_row(
    world: World,
    passes: passes_pb2_grpc.PassServiceStub,
    server: Application,
    api_key: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "passes.csv"
    path.write_text(
        "id,template_id,status,tags,device_library_identifier,push_token\n"
        f"a,loyalty,active,gold|vip,phone-a,{token(1)}\n"
        "b,loyalty,,,,\n"
        "c,loyalty,lost,,,\n"
    )

    done = await run(
        PASSPUSH, "import", "--address", f"127.0.0.1:{server.port}", path, env=_env(api_key)
    )

    assert done.returncode == 1, done.output
    assert "2 created, 0 updated, 1 failed" in done.stdout
    assert "line 4: cannot be read: status must be one of" in done.stdout
    listed = await _listed(passes)
    assert sorted(listed) == ["a", "b"] and list(listed["a"].tags) == ["gold", "vip"]

    unknown = tmp_path / "unknown.csv"
    unknown.write_text("id,colour\na,red\n")
    refused = await run(
        PASSPUSH, "import", "--address", f"127.0.0.1:{server.port}", unknown, env=_env(api_key)
    )
    assert refused.returncode == 2 and "unknown CSV columns: colour" in refused.stderr


class _Unanswered(passes_pb2_grpc.PassServiceServicer):
    """ImportPasses that reads the whole stream and never answers."""

    def __init__(self) -> None:
        self.read = asyncio.Event()

    async def ImportPasses(
        self, requests: AsyncIterator[ppb.ImportPassesRequest], context: object
    ) -> ppb.ImportPassesResponse:
        async for _ in requests:
            pass
        self.read.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")


async def test_ctrl_c_taken_by_another_thread_stops_an_import_waiting_for_its_answer(
    tmp_path: Path,
) -> None:
    # The kernel hands a process's SIGINT to any of its threads that does not block it, one
    # of gRPC's too; the event loop, asleep until the answer comes, must still hear of it.
    unanswered = _Unanswered()
    server = grpc.aio.server()
    passes_pb2_grpc.add_PassServiceServicer_to_server(unanswered, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    path = tmp_path / "passes.jsonl"
    path.write_text(json.dumps({"pass": {"id": "p1"}}) + "\n")
    process = await asyncio.create_subprocess_exec(
        *map(str, (PASSPUSH, "import", "--address", f"127.0.0.1:{port}", "--template", "t", path)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env("any-key-0123456789"),
    )
    try:
        async with asyncio.timeout(30):
            await unanswered.read.wait()
            interrupt_another_thread(process.pid)
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await server.stop(0)
    assert process.returncode == 1, stderr
    assert b"import interrupted" in stderr and b"Traceback" not in stderr, stderr
