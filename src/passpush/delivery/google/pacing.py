"""Turns for Google Wallet requests: each issuer's requests kept under Google's requests per
second, within this process (replicas on one PostgreSQL database share their turns instead,
store/request_turns.py)."""

from __future__ import annotations

import asyncio
from typing import Protocol


class RequestPacer:
    """Spaces requests `1 / rate` seconds apart, in the order they ask, whoever asks.

    A token bucket that holds one token: Google counts requests per second per issuer, and
    a burst above the rate would be refused with 429 anyway. Each turn is spaced from the
    moment the one before was granted, not from when it was due: after a stall of the event
    loop, the turns that fell due meanwhile go one interval apart, not all at once.
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("the Google request rate must be positive")
        self._interval = 1.0 / rate
        self._last_turn = float("-inf")  # event loop time
        self._queue = asyncio.Lock()  # first come, first served

    async def wait_turn(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._queue:
            wait = self._last_turn + self._interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_turn = loop.time()


class RequestTurns(Protocol):
    """Waits until an issuer's next request may go."""

    async def wait_turn(self, issuer: str) -> None: ...


class ProcessRequestTurns:
    """Each issuer's requests paced within this process: its own RequestPacer each. Replicas
    on one PostgreSQL database share their turns instead (store/request_turns.py)."""

    def __init__(self, rate: float) -> None:
        RequestPacer(rate)  # a rate it cannot pace is refused now, not at the first request
        self._rate = rate
        self._pacers: dict[str, RequestPacer] = {}

    async def wait_turn(self, issuer: str) -> None:
        pacer = self._pacers.get(issuer)
        if pacer is None:
            pacer = self._pacers[issuer] = RequestPacer(self._rate)
        await pacer.wait_turn()
