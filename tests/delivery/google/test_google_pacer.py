"""The pacer of Google Wallet requests: never above its rate, in any second."""

from __future__ import annotations

import asyncio
import time

from passpush.delivery.google.pacing import RequestPacer

RATE = 20.0


async def test_after_a_stall_the_pacer_holds_its_rate_in_every_second() -> None:
    """The turns granted in any one second are at most the rate (and one at its edge), even
    after the event loop stalled while turns fell due: those go late, not at once."""
    pacer = RequestPacer(RATE)
    loop = asyncio.get_running_loop()
    granted: list[float] = []

    async def request() -> None:
        await pacer.wait_turn()
        granted.append(loop.time())  # in the step that was granted the turn: no await between

    requests = [asyncio.create_task(request()) for _ in range(60)]  # three seconds' worth
    await asyncio.sleep(0.5)
    time.sleep(0.5)  # noqa: ASYNC251  # a stall, as on a loaded machine: ten turns fall due
    async with asyncio.timeout(60):
        await asyncio.gather(*requests)

    assert len(granted) == 60
    # Only upper bounds: a slower machine spaces the turns further, never closer.
    for first, start in enumerate(granted):
        in_this_second = [t for t in granted[first:] if t < start + 1.0]
        assert len(in_this_second) <= RATE + 1, f"{len(in_this_second)} turns from {start}"
