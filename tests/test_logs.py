"""`passpush serve`'s logs: one JSON object a line with PASSPUSH_LOG_FORMAT=json, a clear
refusal of a bad PASSPUSH_LOG_LEVEL, and never a notification body, push token or API key,
not even in a database error's traceback."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from sqlalchemy import text

from passpush.fakes.apns import FakeApns
from passpush.logs import SafeTextFormatter, configure_logging
from passpush.store.db import asyncpg_dsn, make_engine
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from processes import PASSPUSH, Launcher, create_key, passpush_env, run
from support import World, wait_terminal

BODY = "Your table for two is ready: code 4417-PLUM"
PUSH_TOKEN = "c0ffee" * 10 + "beef"
REFUSED_BODY = "refuse me: the secret birthday surprise"


@pytest.fixture
async def launch(database_url: str, fake_apns: FakeApns, tmp_path: Path) -> AsyncIterator[Launcher]:
    async with Launcher(database_url, fake_apns, tmp_path) as launcher:
        yield launcher


async def refuse_tickets_saying(database_url: str, words: str) -> None:
    """Makes the database itself refuse a ticket whose body has `words`: on PostgreSQL a
    CHECK constraint, whose violation names the failing row, body and all."""
    engine = make_engine(database_url)
    try:
        async with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                await connection.execute(
                    text(
                        "ALTER TABLE tickets ADD CONSTRAINT test_refused_words "
                        f"CHECK (content_body NOT LIKE '%{words}%')"
                    )
                )
            else:
                await connection.execute(
                    text(
                        "CREATE TRIGGER test_refused_words BEFORE INSERT ON tickets "
                        f"WHEN NEW.content_body LIKE '%{words}%' "
                        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                    )
                )
    finally:
        await engine.dispose()


async def test_json_logs_are_one_object_a_line_without_bodies_tokens_or_keys(
    launch: Launcher, database_url: str, fake_apns: FakeApns, tmp_path: Path
) -> None:
    server = await launch(LOG_FORMAT="json")
    key = await create_key(database_url, tmp_path, "acme")
    async with server.channel(key) as channel:
        world = World(passes_pb2_grpc.PassServiceStub(channel))
        passes = world.passes
        await world.apple_template("t1")
        await world.pass_("p1", "t1", devices=0)
        await passes.RegisterDevice(
            ppb.RegisterDeviceRequest(
                pass_id="p1", device_library_identifier="phone", push_token=PUSH_TOKEN
            )
        )
        notifications = notifications_pb2_grpc.NotificationServiceStub(channel)
        ticket = await notifications.Send(
            npb.SendRequest(target=npb.Target(pass_id="p1"), content=npb.Content(body=BODY))
        )
        assert (await wait_terminal(notifications, ticket.id)).counts.delivered == 1
        assert fake_apns.tokens() == [PUSH_TOKEN]

        await refuse_tickets_saying(database_url, "refuse me")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await notifications.Send(
                npb.SendRequest(
                    target=npb.Target(pass_id="p1"), content=npb.Content(body=REFUSED_BODY)
                )
            )
        assert refused.value.code() == grpc.StatusCode.INTERNAL
    await server.stop()

    log = server.log()
    lines = [json.loads(line) for line in log.splitlines()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
    (error,) = [line for line in lines if line["level"] == "ERROR"]
    assert error["message"] == "unexpected error"
    assert error["project"] == "acme"
    assert error["rpc"] == "/passpush.v1.NotificationService/Send"
    assert "Traceback (most recent call last)" in error["exception"]
    assert "test_refused_words" in error["exception"] or "refused by the test" in error["exception"]
    # Only passpush's own lines: no line per HTTP request or connection from the libraries.
    assert {line["logger"].partition(".")[0] for line in lines} <= {"passpush", "alembic"}
    secret = key.partition(".")[2]
    for words in (BODY, REFUSED_BODY, "secret birthday", PUSH_TOKEN, key, secret):
        assert words not in log


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_database_error_is_logged_without_the_row_it_names(
    database_url: str, capture: io.StringIO
) -> None:
    """PostgreSQL's DETAIL names the failing row's values: a traceback or a %r of the error
    shows its first line only, in the text format too."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute(
            "CREATE TEMP TABLE notes (body text CHECK (body NOT LIKE '%refuse me%'))"
        )
        with pytest.raises(asyncpg.CheckViolationError) as raised:
            await connection.execute("INSERT INTO notes VALUES ($1)", REFUSED_BODY)
    finally:
        await connection.close()
    assert REFUSED_BODY in str(raised.value)  # what would have been logged

    log = logging.getLogger("passpush.test")
    log.error("the insert failed", exc_info=raised.value)
    log.warning("answered %s: %r", "INTERNAL", raised.value)

    logged = capture.getvalue()
    assert "CheckViolationError" in logged
    assert 'violates check constraint "notes_body_check"' in logged
    assert "secret birthday" not in logged


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    """The root logger as `passpush serve` sets it up (text format), into a buffer."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging({})
    (handler,) = root.handlers
    assert isinstance(handler.formatter, SafeTextFormatter)
    buffer = io.StringIO()
    handler.setStream(buffer)  # type: ignore[attr-defined]
    try:
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_bad_log_level_or_format_is_refused_naming_the_variable(
    database_url: str, tmp_path: Path
) -> None:
    level, form = await asyncio.gather(
        run(PASSPUSH, "migrate", env=passpush_env(database_url, tmp_path, LOG_LEVEL="LOUD")),
        run(PASSPUSH, "migrate", env=passpush_env(database_url, tmp_path, LOG_FORMAT="xml")),
    )
    assert level.returncode == 2, level.output
    assert level.stderr.strip() == (
        "passpush: PASSPUSH_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, "
        "got 'LOUD'"
    )
    assert form.returncode == 2, form.output
    assert form.stderr.strip() == "passpush: PASSPUSH_LOG_FORMAT must be text or json, got 'xml'"
