"""Device registrations arriving together are written together: each told whether it is
new, the same device twice in one group new once with its last push token kept."""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from passpush.domain.clock import utcnow
from passpush.service.registration_groups import RegistrationGroups
from passpush.store.connectors import connect
from passpush.store.models import DeviceRegistrationRow
from passpush.store.registration_writes import NewRegistration
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from support import TOPIC, CountedSteps, token, upsert


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
    groups = RegistrationGroups(transactions, clock=utcnow)

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
    async with sessions() as session:
        rows = await session.execute(
            select(
                DeviceRegistrationRow.pass_id,
                DeviceRegistrationRow.device_library_identifier,
                DeviceRegistrationRow.push_token,
            )
        )
        tokens = {f"{pass_id}/{device}": push for pass_id, device, push in rows}

    assert before is True
    assert together == [True, True, False, False, True]
    assert written_together == 1  # one group, not written again one by one
    assert tokens == {
        "p1/device-a": token(5),
        "p2/device-a": token(3),
        "p2/device-c": token(4),
        "p3/device-b": token(6),
    }
