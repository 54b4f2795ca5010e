"""A device's update is one read: its serials query reads what the download of each pass
it lists needs, and the process keeps that for the download that follows. On PostgreSQL,
devices asking at the same time are read in one statement."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from test_shared_content import apple_template

from passpush.service.passkit import PassKitCore, PassKitSettings, PassPackager
from passpush.store.connectors import connect, connect_standalone
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from apple_passes import AppleCerts, pass_document, pass_files, unzip
from support import TOPIC, CountedSteps, token, upsert

DEVICE = "6b2f0d6b1c0e4d6f9a1b2c3d4e5f6a7c"
PASS_TOKEN = "a-token-of-at-least-16-characters"


async def pass_with_content(
    passes: passes_pb2_grpc.PassServiceStub, certs: AppleCerts, *others: str
) -> None:
    """p1 (and `others`) with files of their own, all with PASS_TOKEN."""
    await apple_template(passes, certs)
    await set_relevant_date(passes, "2026-12-24T10:00:00Z")
    for pass_id in ("p1", *others):
        if pass_id != "p1":
            await passes.UpsertPass(
                upsert(id=pass_id, template_id="loyalty", authentication_token=PASS_TOKEN)
            )
        await passes.SetPassContent(
            ppb.SetPassContentRequest(
                pass_id=pass_id, pass_json=json.dumps(pass_document()).encode(), files=pass_files()
            )
        )


async def set_relevant_date(passes: passes_pb2_grpc.PassServiceStub, date: str) -> None:
    """A new version of the pass, its files as they were."""
    values = ppb.ApplePassValues()
    values.pass_json.update({"relevantDate": date})
    await passes.UpsertPass(
        upsert(id="p1", template_id="loyalty", authentication_token=PASS_TOKEN, apple_values=values)
    )


def relevant_date(pkpass: bytes | None) -> str:
    assert pkpass is not None
    return str(json.loads(unzip(pkpass)["pass.json"])["relevantDate"])


async def test_a_device_update_reads_the_database_once(
    passes: passes_pb2_grpc.PassServiceStub,
    apple_certs: AppleCerts,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """After the serials query, downloading a pass it listed reads nothing more; a download
    with no serials query before it reads the pass as it is now."""
    await pass_with_content(passes, apple_certs)
    reads = CountedSteps(connect_standalone(engine))
    core = PassKitCore(reads, sessions, connect(engine), PassPackager(PassKitSettings()))
    try:
        await core.register(TOPIC, "p1", DEVICE, token(0xD1), PASS_TOKEN)
        # The first update fills what a process keeps of the template and its files.
        first = await core.updated_serials(DEVICE, TOPIC, None)
        await core.latest_pass(TOPIC, "p1", PASS_TOKEN, None)
        await set_relevant_date(passes, "2026-12-25T10:00:00Z")

        changed = await core.updated_serials(DEVICE, TOPIC, first.last_updated if first else None)
        before = reads.statements
        listed = await core.latest_pass(TOPIC, "p1", PASS_TOKEN, None)
        download_reads = reads.statements - before
        await set_relevant_date(passes, "2026-12-26T10:00:00Z")
        unlisted = await core.latest_pass(TOPIC, "p1", PASS_TOKEN, None)
    finally:
        await core.close()

    assert changed is not None and changed.serial_numbers == ["p1"]
    assert download_reads == 0
    assert relevant_date(listed.pkpass) == "2026-12-25T10:00:00Z"
    assert relevant_date(unlisted.pkpass) == "2026-12-26T10:00:00Z"


async def test_devices_asking_at_once_are_read_together_on_postgresql(
    passes: passes_pb2_grpc.PassServiceStub,
    apple_certs: AppleCerts,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Eight devices registering at once, then asking at once, each for its own pass: a
    few statements, not one each, and each device its own answer."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's reads run one at a time on the event loop's thread")
    pass_ids = [f"p{i}" for i in range(1, 9)]
    await pass_with_content(passes, apple_certs, *pass_ids[1:])
    reads = CountedSteps(connect_standalone(engine))
    core = PassKitCore(reads, sessions, connect(engine), PassPackager(PassKitSettings()))
    devices = {pass_id: f"{DEVICE[:-2]}{i:02x}" for i, pass_id in enumerate(pass_ids)}
    try:
        registered = await asyncio.gather(
            *(
                core.register(TOPIC, pass_id, device, token(0xE0 + i), PASS_TOKEN)
                for i, (pass_id, device) in enumerate(devices.items())
            )
        )
        registering_reads = reads.statements
        listed = await asyncio.gather(
            *(core.updated_serials(device, TOPIC, None) for device in devices.values())
        )
        asking_reads = reads.statements - registering_reads
    finally:
        await core.close()

    assert registered == [True] * 8
    # The first goes out at once, the seven asked meanwhile in one more; and the
    # open-write check of the serials queries, once for all.
    assert registering_reads <= 2
    assert asking_reads <= 3
    assert [answer.serial_numbers if answer else None for answer in listed] == [
        [pass_id] for pass_id in pass_ids
    ]
