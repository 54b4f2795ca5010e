"""Device registrations arriving together are written together: each told whether it is
new, the same device twice in one group new once with its last push token kept; on
PostgreSQL the devices' tokens are checked by the statement that writes them."""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from passpush.app import Application
from passpush.domain.clock import utcnow
from passpush.domain.errors import Unauthenticated
from passpush.service.passkit import PassKitCore, PassKitSettings, PassPackager
from passpush.service.registration_groups import RegistrationGroups
from passpush.store.connectors import connect, connect_standalone
from passpush.store.models import DeviceRegistrationRow
from passpush.store.registration_writes import NewRegistration, register_devices
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from support import TOPIC, CountedSteps, channel_with_key, token, upsert


async def push_tokens(
    sessions: async_sessionmaker[AsyncSession], owner: InstrumentedAttribute[str]
) -> dict[str, str]:
    """Each registration's push token, by `owner` (its pass or its project) and device."""
    async with sessions() as session:
        rows = await session.execute(
            select(
                owner,
                DeviceRegistrationRow.device_library_identifier,
                DeviceRegistrationRow.push_token,
            )
        )
    return {f"{key}/{device}": push for key, device, push in rows}


async def test_registrations_arriving_together_are_each_told_whether_they_are_new(
    passes: passes_pb2_grpc.PassServiceStub,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await passes.CreateTemplate(
        ppb.CreateTemplateRequest(
            template_id="loyalty",
            template=ppb.Template(
                project_id="acme", platform=ppb.PLATFORM_APPLE, pass_type_identifier=TOPIC
            ),
        )
    )
    for pass_id in ("p1", "p2", "p3"):
        await passes.UpsertPass(upsert(id=pass_id, template_id="loyalty"))
    transactions = CountedSteps(connect(engine))
    groups = RegistrationGroups(transactions, register_devices, clock=utcnow)

    def registration(pass_id: str, device: str, push: int) -> NewRegistration:
        return NewRegistration("acme", pass_id, device, token(push))

    try:
        before = await groups.register(registration("p2", "device-c", 1))
        written_before = transactions.statements
        together = await asyncio.gather(
            *(
                groups.register(r)
                for r in (
                    registration("p1", "device-a", 2),
                    registration("p2", "device-a", 3),
                    registration("p2", "device-c", 4),  # registered before: a new token
                    registration("p1", "device-a", 5),  # twice in the group
                    registration("p3", "device-b", 6),
                )
            )
        )
        written_together = transactions.statements - written_before
    finally:
        transactions.close()
    tokens = await push_tokens(sessions, DeviceRegistrationRow.pass_id)

    assert before is True
    assert together == [True, True, False, False, True]
    assert written_together == 1  # one group, not written again one by one
    assert tokens == {
        "p1/device-a": token(5),
        "p2/device-a": token(3),
        "p2/device-c": token(4),
        "p3/device-b": token(6),
    }


async def test_registrations_check_their_tokens_in_the_statement_that_writes_them(
    server: Application,
    passes: passes_pb2_grpc.PassServiceStub,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Devices registering at once, two projects sharing the pass type: each registration
    goes to the pass whose token the device gave, a wrong token is refused and writes
    nothing, and on PostgreSQL the whole group is one statement (no read before it)."""
    _, other_key = await server.keys.create_key("umbrella", "other", ["all"], create_project=True)
    async with channel_with_key(server.port, other_key) as channel:
        other = passes_pb2_grpc.PassServiceStub(channel)
        for project, stub in (("acme", passes), ("umbrella", other)):
            await stub.CreateTemplate(
                ppb.CreateTemplateRequest(
                    template_id="loyalty",
                    template=ppb.Template(
                        project_id=project,
                        platform=ppb.PLATFORM_APPLE,
                        pass_type_identifier=TOPIC,
                    ),
                )
            )
            # The same serial number in both projects, each with its own token.
            await stub.UpsertPass(
                upsert(
                    id="p1",
                    template_id="loyalty",
                    authentication_token=f"{project}-token-at-least-16",
                )
            )
    standalone = CountedSteps(connect_standalone(engine))
    transactions = CountedSteps(connect(engine))
    core = PassKitCore(standalone, sessions, transactions, PassPackager(PassKitSettings()))

    async def register(device: str, push: int, pass_token: str) -> bool | str:
        try:
            return await core.register(TOPIC, "p1", device, token(push), pass_token)
        except Unauthenticated:
            return "refused"

    try:
        answers = await asyncio.gather(
            register("device-a", 1, "acme-token-at-least-16"),
            register("device-b", 2, "umbrella-token-at-least-16"),
            register("device-c", 3, "someone-elses-token-16"),
            register("device-a", 4, "acme-token-at-least-16"),  # twice in the group
            register("device-d", 5, "umbrella-token-at-least-16"),
        )
    finally:
        await core.close()
    written = await push_tokens(sessions, DeviceRegistrationRow.project_id)

    assert answers == [True, True, "refused", False, True]
    assert written == {
        "acme/device-a": token(4),
        "umbrella/device-b": token(2),
        "umbrella/device-d": token(5),
    }
    if engine.dialect.name == "postgresql":
        assert standalone.statements + transactions.statements == 1
