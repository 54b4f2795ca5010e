"""The database readiness probe stops when told, whatever its write is doing at that moment."""

from __future__ import annotations

import asyncio

from passpush.service.readiness import DatabaseReadiness


async def test_stop_ends_the_probe_when_it_lands_just_as_a_write_finishes() -> None:
    # The moment asyncio.wait_for of Python 3.11 swallows a cancellation in: the awaited
    # write has finished and the probe has not resumed yet. The probe then slept and wrote
    # on forever, and the server's stop() with it (CI runs where a teardown hung for 300 s).
    stopping: list[asyncio.Task[None]] = []
    stop_called = asyncio.Event()
    gave_up = False

    async def write() -> None:
        if gave_up:  # so that a failure does not leave the probe running
            raise GaveUp
        if not stopping:
            stopping.append(asyncio.get_running_loop().create_task(readiness.stop()))
            stop_called.set()

    async def on_change(writable: bool) -> None:
        pass

    readiness = DatabaseReadiness(write, on_change, every=0.01)
    readiness.start()
    await stop_called.wait()
    # A bound for a hang, not a timing: stop() takes one turn of the loop.
    done, _ = await asyncio.wait(stopping, timeout=10)
    gave_up = True
    assert done, "stop() did not end: the probe went on writing"


class GaveUp(BaseException):
    """Not an Exception: the probe counts those as failed writes and goes on."""
