"""The operator's `passpush` command from outside: help, version, what it says when the
database or a setting is wrong, Ctrl-C while watching, and `migrate --to`.

Each test runs the installed console script in a subprocess, as an operator would.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from passpush.fakes.apns import FakeApns
from passpush.v1 import passes_pb2_grpc

from processes import (
    PASSPUSH,
    Completed,
    Launcher,
    free_port,
    interrupt_another_thread,
    passpush_env,
    run,
)
from support import World, make_key

COMMANDS = ("serve", "migrate", "keys", "send", "watch", "failures", "import")
# What only a command's work needs: none of it is imported to print a help.
HEAVY_MODULES = (
    "sqlalchemy",
    "alembic",
    "grpc",
    "cryptography",
    "rich",
    "fastapi",
    "uvicorn",
    "passpush.config",
    "passpush.api",
    "passpush.http",
    "passpush.service",
    "passpush.delivery",
    "passpush.store",
)
# Runs the console script's entry point with the given arguments, then lists the modules
# the process imported.
IMPORTS_PROBE = """
import json, sys
from passpush.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""

on_sqlite_alone = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
async def launch(database_url: str, fake_apns: FakeApns, tmp_path: Path) -> AsyncIterator[Launcher]:
    async with Launcher(database_url, fake_apns, tmp_path) as launcher:
        yield launcher


def operator_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment with no PASSPUSH_DATABASE_URL: the default, relative, SQLite file."""
    env = passpush_env("", tmp_path, **settings)
    del env["PASSPUSH_DATABASE_URL"]
    return env


def assert_short_error(result: Completed, *, lines: int = 2) -> None:
    """A non-zero exit with a message of at most `lines` lines and no traceback."""
    assert result.returncode != 0, result.output
    assert "Traceback" not in result.output, result.output
    assert 1 <= len(result.stderr.strip().splitlines()) <= lines, result.stderr


# -- help and version ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["serve", "--help"],
        ["migrate", "--help"],
        ["keys", "--help"],
        ["keys", "create", "--help"],
        ["send", "--help"],
        ["import", "--help"],
        ["--version"],
    ],
    ids=" ".join,
)
async def test_help_imports_none_of_the_server(argv: list[str]) -> None:
    result = await run(sys.executable, "-c", IMPORTS_PROBE, *argv)

    imported = json.loads(result.stderr.strip().splitlines()[-1])
    heavy = [m for m in imported if any(m == h or m.startswith(h + ".") for h in HEAVY_MODULES)]
    assert heavy == [], f"passpush {' '.join(argv)} imported {heavy[:10]}"
    assert result.stdout.strip(), result.output


async def test_help_lists_the_commands() -> None:
    result = await run(PASSPUSH, "--help")

    assert result.returncode == 0, result.output
    for command in COMMANDS:
        assert f"    {command}" in result.stdout, result.stdout
    assert "serve-http" not in result.stdout


async def test_version_is_the_installed_distributions() -> None:
    result = await run(PASSPUSH, "--version")

    assert result.returncode == 0, result.output
    assert result.stdout.strip() == f"passpush {importlib.metadata.version('passpush')}"


# -- no database, or one not migrated --------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "list", "--project", "demo"],
        ["keys", "create", "--project", "demo", "--scopes", "all"],
        ["keys", "revoke", "ppk_0123456789abcdef"],
    ],
    ids=" ".join,
)
async def test_keys_without_a_database_say_to_migrate_and_create_none(
    tmp_path: Path, argv: list[str]
) -> None:
    result = await run(PASSPUSH, *argv, env=operator_env(tmp_path), cwd=tmp_path)

    assert_short_error(result)
    assert "passpush migrate" in result.stderr
    assert str(tmp_path / "var" / "passpush.db") in result.stderr
    assert not (tmp_path / "var").exists()


async def test_serve_without_a_database_says_to_migrate_and_creates_none(tmp_path: Path) -> None:
    env = operator_env(
        tmp_path, GRPC_ADDRESS=f"127.0.0.1:{free_port()}", HTTP_ADDRESS=f"127.0.0.1:{free_port()}"
    )

    result = await run(PASSPUSH, "serve", env=env, cwd=tmp_path, seconds=30)

    assert result.returncode == 2, result.output
    assert "passpush migrate" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "var" / "passpush.db").exists()


async def test_keys_on_an_unmigrated_database_say_to_migrate(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()  # a database file, with no schema
    env = passpush_env(f"sqlite+aiosqlite:///{path}", tmp_path)

    result = await run(PASSPUSH, "keys", "list", "--project", "demo", env=env)

    assert_short_error(result)
    assert "not up to date (it has none)" in result.stderr and "passpush migrate" in result.stderr


# -- an unreachable database, a bad setting, a taken port ------------------------------------


@pytest.mark.parametrize(
    "argv", [["migrate"], ["keys", "list", "--project", "demo"], ["serve"]], ids=" ".join
)
async def test_an_unreachable_postgresql_is_one_line(tmp_path: Path, argv: list[str]) -> None:
    closed = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://postgres:s3cret@127.0.0.1:{closed}/passpush"
    env = passpush_env(
        url, tmp_path, GRPC_ADDRESS=f"127.0.0.1:{free_port()}", HTTP_ADDRESS="127.0.0.1:0"
    )

    result = await run(PASSPUSH, *argv, env=env, seconds=30)

    assert result.returncode == 2, result.output
    assert "Traceback" not in result.output
    [message] = [line for line in result.stderr.splitlines() if "database" in line]
    assert f"127.0.0.1:{closed}" in message and "s3cret" not in result.output
    if argv != ["serve"]:  # serve's log has its other start-up lines
        assert_short_error(result, lines=1)


@pytest.mark.parametrize(
    ("name", "value", "takes"),
    [
        ("WORKER_BATCH_SIZE", "abc", "a whole number"),
        ("WORKER_POLL_SECONDS", "soon", "a number"),
        ("FAKES", "yes", "1 or 0"),
        ("GRPC_ADDRESS", "localhost", "HOST:PORT"),
        ("DATABASE_URL", "mysql://db/x", "sqlite+aiosqlite"),
    ],
)
async def test_a_bad_setting_is_named_with_what_it_takes(
    tmp_path: Path, name: str, value: str, takes: str
) -> None:
    env = passpush_env(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", tmp_path, **{name: value})

    result = await run(PASSPUSH, "keys", "list", "--project", "demo", env=env)

    assert_short_error(result, lines=1)
    assert f"PASSPUSH_{name}" in result.stderr and takes in result.stderr, result.stderr


@on_sqlite_alone
async def test_serve_on_a_taken_grpc_port_says_so(database_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        env = passpush_env(
            database_url, tmp_path, GRPC_ADDRESS=address, HTTP_ADDRESS=f"127.0.0.1:{free_port()}"
        )

        result = await run(PASSPUSH, "serve", env=env, seconds=30)

    assert result.returncode == 2, result.output
    assert "Traceback" not in result.output
    [message] = [line for line in result.stderr.splitlines() if "PASSPUSH_GRPC_ADDRESS" in line]
    assert address in message and "in use" in message, result.stderr


# -- Ctrl-C while watching -------------------------------------------------------------------


@on_sqlite_alone
async def test_ctrl_c_while_watching_says_the_ticket_goes_on(
    launch: Launcher, database_url: str, fake_apns: FakeApns
) -> None:
    address, env = await _a_send_that_hangs(launch, database_url, fake_apns)
    connection = ("--address", address)
    send = ("send", *connection, "--pass", "p1", "--body", "Hi", "--watch")

    sent, ticket_id = await _interrupt_while_watching(PASSPUSH, *send, env=env)
    assert sent.returncode == 130, sent.output
    assert "Traceback" not in sent.output
    assert sent.stderr.strip() == (
        f"stopped watching; ticket {ticket_id} goes on (passpush watch {ticket_id} to follow it "
        "again)"
    )

    watched, _ = await _interrupt_while_watching(
        PASSPUSH, "watch", *connection, str(ticket_id), env=env
    )
    assert watched.returncode == 130 and "Traceback" not in watched.output, watched.output
    assert f"ticket {ticket_id} goes on" in watched.stderr


@on_sqlite_alone
async def test_ctrl_c_taken_by_another_thread_still_stops_watching(
    launch: Launcher, database_url: str, fake_apns: FakeApns
) -> None:
    # The kernel hands a process's SIGINT to any of its threads that does not block it, one
    # of gRPC's too; the event loop, asleep with nothing to read, must still hear of it.
    address, env = await _a_send_that_hangs(launch, database_url, fake_apns)
    send = ("send", "--address", address, "--pass", "p1", "--body", "Hi", "--watch")

    sent, ticket_id = await _interrupt_while_watching(PASSPUSH, *send, env=env, to_threads=True)
    assert sent.returncode == 130 and "Traceback" not in sent.output, sent.output
    assert f"ticket {ticket_id} goes on" in sent.stderr


async def _a_send_that_hangs(
    launch: Launcher, database_url: str, fake_apns: FakeApns
) -> tuple[str, dict[str, str]]:
    """A server with pass p1, whose push the fake APNs never answers (a Send to it stays
    RUNNING): its address, and the environment with an API key for the commands."""
    server = await launch(SHUTDOWN_GRACE="1")
    key = await make_key(database_url, "demo")
    async with server.channel(key) as channel:
        world = World(passes_pb2_grpc.PassServiceStub(channel), project_id="demo")
        await world.apple_template("loyalty")
        await world.pass_("p1", "loyalty")
    fake_apns.hang(world.devices["p1"][0])
    return server.address, {"PASSPUSH_API_KEY": key, "PATH": os.environ["PATH"]}


async def _interrupt_while_watching(
    *argv: str | Path, env: dict[str, str], to_threads: bool = False
) -> tuple[Completed, int]:
    """Runs `argv`, sends SIGINT once it shows a progress bar (to the process, or to each
    of its threads but the main one); its result and the ticket."""
    process = await asyncio.create_subprocess_exec(
        *map(str, argv), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    assert process.stdout is not None and process.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not (seen and seen[-1].startswith("[")):
                line = (await process.stdout.readline()).decode()
                assert line, f"ended before a progress bar: {seen}"
                seen.append(line)
            if to_threads:
                interrupt_another_thread(process.pid)
            else:
                process.send_signal(signal.SIGINT)
            rest, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    stdout = "".join(seen) + rest.decode()
    summary = seen[-1].split("  ")  # "[...]   0%  0/1  delivered 0 ..."
    assert summary[2] == "0/1", seen
    # send prints "ticket N: 1 deliveries" first; watch is given N.
    ticket_id = int(stdout.split()[1].rstrip(":") if stdout.startswith("ticket ") else argv[-1])
    return Completed(process.returncode, stdout, stderr.decode()), ticket_id


# -- migrate --to ----------------------------------------------------------------------------


def _revision(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "alembic_version" not in tables:
            return []
        return [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


async def test_migrate_goes_down_to_a_revision_and_back_up(
    sqlite_template: Path, tmp_path: Path
) -> None:
    # A copy of the session's migrated file: `passpush migrate` up to head is tested in
    # test_cli_grpcurl.py, and each `passpush` process costs seconds.
    path = tmp_path / "x.db"
    shutil.copy(sqlite_template, path)
    env = passpush_env(f"sqlite+aiosqlite:///{path}", tmp_path)
    head = _revision(path)
    assert head and "google_class_messages" in _tables(path)

    down = await run(PASSPUSH, "migrate", "--to", "0014", env=env)

    assert down.returncode == 0, down.output
    assert _revision(path) == ["0014"] and "google_class_messages" not in _tables(path)
    assert "0014" in down.stdout
    back = await run(PASSPUSH, "migrate", "--to", "head", env=env)
    assert back.returncode == 0, back.output
    assert _revision(path) == head and "google_class_messages" in _tables(path)
    empty = await run(PASSPUSH, "migrate", "--to", "base", env=env)
    assert empty.returncode == 0, empty.output
    assert _revision(path) == [] and "tickets" not in _tables(path)


async def test_migrate_to_an_unknown_revision_names_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    env = passpush_env(f"sqlite+aiosqlite:///{path}", tmp_path)

    result = await run(PASSPUSH, "migrate", "--to", "nope", env=env)

    assert_short_error(result, lines=1)
    assert "'nope'" in result.stderr and "0001" in result.stderr and "head" in result.stderr
