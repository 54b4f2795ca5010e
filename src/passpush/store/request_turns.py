"""Turns for Google Wallet API requests, shared by every replica on one PostgreSQL database.

Google counts requests per second per issuer, whichever process makes them: three replicas
each pacing itself to the rate would together send three times it. So each request first
takes the issuer's next free turn in one row of the database (`google_request_turns`): the
row moves on by `1 / rate` seconds a turn, atomically, on the database's clock, and the
replica waits until its turn comes. Turns are handed out one interval apart whichever
replica asks; a turn taken by a replica that then stops is lost, never doubled.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

_NOW = "extract(epoch FROM clock_timestamp())::float8"
_TAKE_TURN = text(
    f"""
    INSERT INTO google_request_turns AS turns (issuer, next_turn)
    VALUES (:issuer, {_NOW} + CAST(:interval AS float8))
    ON CONFLICT (issuer) DO UPDATE
        SET next_turn = GREATEST(turns.next_turn, {_NOW}) + CAST(:interval AS float8)
    RETURNING turns.next_turn - CAST(:interval AS float8) AS turn, {_NOW} AS now
    """
)


class SharedRequestTurns:
    """An issuer's requests, `1 / rate` seconds apart across the replicas (PostgreSQL)."""

    def __init__(self, engine: AsyncEngine, rate: float) -> None:
        if rate <= 0:
            raise ValueError("the Google request rate must be positive")
        self._engine = engine
        self._interval = 1.0 / rate

    async def take_turn(self, issuer: str) -> tuple[float, float]:
        """The issuer's next free turn, taken: its time and the time now (seconds since
        the epoch, on the database's clock)."""
        async with self._engine.begin() as connection:
            row = (
                await connection.execute(_TAKE_TURN, {"issuer": issuer, "interval": self._interval})
            ).one()
        return float(row.turn), float(row.now)

    async def wait_turn(self, issuer: str) -> None:
        turn, now = await self.take_turn(issuer)
        if turn > now:
            await asyncio.sleep(turn - now)
