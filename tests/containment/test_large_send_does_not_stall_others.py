"""A large Send fans out in chunks, each its own transaction: other callers' Sends commit
between them, a stopped fan-out resumes where it was, and a later Send to a pass wins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from passpush.app import Application
from passpush.delivery.apple.gateway import ApnsGateway
from passpush.delivery.worker import WorkerSettings
from passpush.fakes.apns import FakeApns
from passpush.outbox.fanout import FanOut
from passpush.store.models import DeliveryEventRow, DeliveryRow
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from support import World, channel_with_key, seed_apple_passes, wait_terminal

CHUNK = 50  # the fan-out's chunk for these tests: the shape of 5,000 at a fraction of the cost
TEMPLATE = npb.Target(template=npb.TemplateRef(template_id="crowd"))


@pytest.fixture
async def server(
    engine: AsyncEngine,
    apns_gateway: ApnsGateway,
    worker_settings: WorkerSettings,
) -> AsyncIterator[Application]:
    server = Application(engine, apns_gateway, worker_settings=worker_settings, fanout_chunk=CHUNK)
    await server.start()
    yield server
    await server.stop(grace=1.0)


def _send(body: str, target: npb.Target = TEMPLATE) -> npb.SendRequest:
    return npb.SendRequest(target=target, content=npb.Content(body=body))


async def _ticket(
    notifications: notifications_pb2_grpc.NotificationServiceStub, ticket_id: int
) -> npb.Ticket:
    return await notifications.GetTicket(npb.GetTicketRequest(id=ticket_id))


async def _deliveries_per_pass(
    sessions: async_sessionmaker[AsyncSession], ticket_id: int
) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(
            select(DeliveryRow.pass_id, func.count())
            .where(DeliveryRow.ticket_id == ticket_id)
            .group_by(DeliveryRow.pass_id)
        )
        return {pass_id: count for pass_id, count in rows}


async def _passes_without_devices(
    world: World, count: int, tags: tuple[str, ...] = ()
) -> list[str]:
    """Passes p0000, p0001, ... of template "crowd" with no device, made (or remade, with
    these tags) through the API 25 calls at a time: hundreds, one after another, took
    seconds on PostgreSQL."""
    ids = [f"p{i:04}" for i in range(count)]
    for start in range(0, count, 25):
        await asyncio.gather(
            *(world.pass_(i, "crowd", devices=0, tags=tags) for i in ids[start : start + 25])
        )
    return ids


async def test_a_one_pass_send_commits_between_the_chunks_of_a_large_send(
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    sessions: async_sessionmaker[AsyncSession],
    database_url: str,
) -> None:
    """A one-pass Send made while a large Send fans out is committed before the fan-out
    ends: the large Send's chunks are separate transactions, and it waits for one at most."""
    audience = 40 * CHUNK
    await World(passes).apple_template("crowd")
    await seed_apple_passes(database_url, "acme", "crowd", audience)

    large = await notifications.Send(_send("Everyone"))
    assert large.counts.total < audience  # the first chunk: the others follow
    assert large.state == npb.TICKET_STATE_PENDING
    small = await notifications.Send(_send("Just you", npb.Target(pass_id="crowd-7")))
    large = await wait_terminal(notifications, large.id, seconds=120)

    async with sessions() as session:
        (small_delivery,) = await session.scalars(
            select(DeliveryRow.id).where(DeliveryRow.ticket_id == small.id)
        )
        large_after_small = await session.scalar(
            select(func.count()).where(
                DeliveryRow.ticket_id == large.id, DeliveryRow.id > small_delivery
            )
        )
    # Committed while the large Send was fanning out: chunks went in after it.
    assert large_after_small
    assert large.state == npb.TICKET_STATE_SUCCEEDED
    assert (large.counts.total, large.counts.delivered) == (audience, audience)
    assert set((await _deliveries_per_pass(sessions, large.id)).values()) == {1}


async def test_a_fan_out_stopped_between_chunks_resumes_and_reaches_every_pass_once(
    server: Application,
    api_key: str,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    database_url: str,
    apns_gateway: ApnsGateway,
    worker_settings: WorkerSettings,
    fake_apns: FakeApns,
) -> None:
    """A fan-out whose server stops between chunks is never finished early, and the next
    server carries it on from where it stood: every pass gets exactly one delivery."""
    audience = 5 * CHUNK + 17
    await World(passes).apple_template("crowd")
    tokens = await seed_apple_passes(database_url, "acme", "crowd", audience)
    await server.fanout.stop()  # the server "dies" after the Send's own first chunk

    accepted = await notifications.Send(_send("Everyone"))
    assert accepted.counts.total == CHUNK
    # The first chunk's deliveries are all recorded: the ticket is still not done.
    async with asyncio.timeout(30):
        while True:
            ticket = await _ticket(notifications, accepted.id)
            if ticket.counts.delivered == CHUNK:
                break
            await asyncio.sleep(0.02)
    assert ticket.state == npb.TICKET_STATE_RUNNING
    assert ticket.counts.total == CHUNK and ticket.counts.pending == 0
    await server.stop(grace=1.0)

    again = Application(engine, apns_gateway, worker_settings=worker_settings, fanout_chunk=CHUNK)
    await again.start()
    try:
        async with channel_with_key(again.port, api_key) as channel:
            stub = notifications_pb2_grpc.NotificationServiceStub(channel)
            ticket = await wait_terminal(stub, accepted.id, seconds=60)
    finally:
        await again.stop(grace=1.0)

    assert ticket.state == npb.TICKET_STATE_SUCCEEDED
    assert (ticket.counts.total, ticket.counts.delivered) == (audience, audience)
    per_pass = await _deliveries_per_pass(sessions, accepted.id)
    assert len(per_pass) == audience and set(per_pass.values()) == {1}
    assert sorted(fake_apns.tokens()) == sorted(tokens)


async def test_a_send_after_a_broadcast_shows_on_its_pass_though_the_broadcast_reaches_it_later(
    server: Application,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
) -> None:
    """The last notification sent to a pass is the one it shows, even when an earlier
    broadcast's chunk reaches the pass after it; the broadcast's other passes show it."""
    world = World(passes)
    await world.apple_template("crowd")
    await _passes_without_devices(world, CHUNK + 2)
    await server.fanout.stop()  # the broadcast's second chunk waits until told

    broadcast = await notifications.Send(_send("Everyone"))
    later = await notifications.Send(_send("Just you", npb.Target(pass_id=f"p{CHUNK + 1:04}")))
    await wait_terminal(notifications, later.id)
    before = await passes.GetPass(ppb.GetPassRequest(id=f"p{CHUNK:04}"))
    server.fanout.start()
    await wait_terminal(notifications, broadcast.id)

    mine = await passes.GetPass(ppb.GetPassRequest(id=f"p{CHUNK + 1:04}"))
    assert (mine.notification.body, mine.notification.ticket_id) == ("Just you", later.id)
    other = await passes.GetPass(ppb.GetPassRequest(id=f"p{CHUNK:04}"))
    assert (other.notification.body, other.notification.ticket_id) == ("Everyone", broadcast.id)
    assert other.update_tag > before.update_tag


async def test_a_broadcast_that_skips_every_pass_ends_with_its_last_chunk(
    server: Application,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A broadcast none of whose passes can be reached finishes when its last chunk is in,
    with each pass counted skipped once and one event for each."""
    world = World(passes)
    await world.apple_template("crowd")
    audience = 2 * CHUNK + 3
    await _passes_without_devices(world, audience)  # no device: each is skipped

    accepted = await notifications.Send(_send("Nobody hears"))
    ticket = await wait_terminal(notifications, accepted.id)

    assert ticket.state == npb.TICKET_STATE_SUCCEEDED
    assert (ticket.counts.total, ticket.counts.skipped) == (audience, audience)
    async with sessions() as session:
        events = await session.scalar(
            select(func.count()).where(DeliveryEventRow.ticket_id == accepted.id)
        )
    assert events == audience


async def test_two_servers_carrying_one_fan_out_on_never_write_a_chunk_twice(
    server: Application,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    sessions: async_sessionmaker[AsyncSession],
    database_url: str,
) -> None:
    """Two replicas that both carry an incomplete fan-out on take turns over its chunks:
    every pass still gets exactly one delivery."""
    audience = 8 * CHUNK + 5
    await World(passes).apple_template("crowd")
    await seed_apple_passes(database_url, "acme", "crowd", audience)
    await server.fanout.stop()
    accepted = await notifications.Send(_send("Everyone"))

    replicas = [FanOut(sessions, chunk=CHUNK), FanOut(sessions, chunk=CHUNK)]
    await asyncio.gather(*(replica.continue_all() for replica in replicas))

    per_pass = await _deliveries_per_pass(sessions, accepted.id)
    assert len(per_pass) == audience and set(per_pass.values()) == {1}
    ticket = await _ticket(notifications, accepted.id)
    assert ticket.counts.total == audience


async def test_a_delete_to_many_passes_clears_each_of_them_chunk_by_chunk(
    server: Application,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
) -> None:
    """A Delete to a large target goes out in chunks as a Send does, and clears the
    notification of every pass it reaches."""
    world = World(passes)
    await world.apple_template("crowd")
    pass_ids = await _passes_without_devices(world, CHUNK + 3)
    sent = await notifications.Send(_send("Everyone"))
    await wait_terminal(notifications, sent.id)

    deleted = await notifications.Delete(npb.DeleteRequest(target=TEMPLATE))
    ticket = await wait_terminal(notifications, deleted.id)

    assert (ticket.counts.total, ticket.counts.skipped) == (len(pass_ids), len(pass_ids))
    for pass_id in (pass_ids[0], pass_ids[-1]):
        shown = await passes.GetPass(ppb.GetPassRequest(id=pass_id))
        assert not shown.HasField("notification")


async def test_a_fan_out_whose_target_is_gone_ends_with_the_passes_it_reached(
    server: Application,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
) -> None:
    """A fan-out whose target no longer names anything (its tag is on no pass now) ends at
    its next chunk, terminal, with what its earlier chunks reached."""
    world = World(passes)
    await world.apple_template("crowd")
    pass_ids = await _passes_without_devices(world, CHUNK + 3, tags=("gold",))
    await server.fanout.stop()
    accepted = await notifications.Send(_send("Gold", npb.Target(tag=npb.TagRef(tag="gold"))))
    await _passes_without_devices(world, len(pass_ids))  # the tag is gone
    server.fanout.start()
    ticket = await wait_terminal(notifications, accepted.id)

    assert ticket.state == npb.TICKET_STATE_SUCCEEDED
    assert (ticket.counts.total, ticket.counts.skipped) == (CHUNK, CHUNK)
