"""An existing ticket is never NOT_FOUND to a watch that joins while the watched tickets
are being read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy.ext.asyncio import create_async_engine

from passpush.domain.errors import NotFound
from passpush.domain.model import Ticket
from passpush.service.status import ChangeFeed, TicketWatch
from passpush.store.db import make_sessions
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc

from support import World

LATE_WATCHES = 40


async def _until(condition: Callable[[], bool]) -> None:
    """Until `condition` holds (10 s at most)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the watches never joined")


async def test_a_watch_that_joins_during_a_read_gets_its_ticket(
    database_url: str,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
) -> None:
    """A stream that starts watching an existing ticket while the shared reader is reading
    other tickets gets that ticket's state, not NOT_FOUND."""
    world = World(passes)
    await world.apple_template("loyalty")
    await world.pass_("p1", "loyalty")
    send = npb.SendRequest(target=npb.Target(pass_id="p1"), content=npb.Content(body="Hi"))
    ids = [(await notifications.Send(send)).id for _ in range(1 + LATE_WATCHES)]

    # The reader's one connection, held by the test: its read of the first ticket waits
    # for it, as a read waits for a busy pool or a lock, and the other watches join meanwhile.
    engine = create_async_engine(database_url, pool_size=1, max_overflow=0)
    watch = TicketWatch(make_sessions(engine), ChangeFeed())
    streams = [watch.watch(world.project_id, ticket_id) for ticket_id in ids]
    try:
        held = await engine.connect()
        try:
            first = asyncio.create_task(anext(streams[0]))
            # Once the first watch joined, the reader it started has taken the ids to read
            # (the reader's first step runs before this wait's timer does) and waits for the
            # connection.
            await _until(lambda: watch.watched() == {ids[0]})
            late = [asyncio.create_task(anext(stream)) for stream in streams[1:]]
            await _until(lambda: watch.watched() == set(ids))
        finally:
            await held.close()
        answers = await asyncio.gather(first, *late, return_exceptions=True)
    finally:
        for stream in streams:
            await stream.aclose()
        await watch.stop()
        await engine.dispose()

    not_found = [a for a in answers if isinstance(a, NotFound)]
    assert not not_found, f"{len(not_found)} of {len(answers)} existing tickets NOT_FOUND"
    assert [a.id for a in answers if isinstance(a, Ticket)] == ids
