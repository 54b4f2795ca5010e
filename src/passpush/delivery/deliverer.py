"""The one interface the worker hands claimed deliveries to: a deliverer per platform.

apple/deliverer.py and google/deliverer.py implement it, each over its platform's gateway;
the worker keeps a queue per platform and dispatches each delivery to that platform's
deliverer (worker.py).
"""

from __future__ import annotations

from typing import Protocol

from passpush.outbox.claiming import ClaimedDelivery
from passpush.outbox.recording import DeliveryResult


class Deliverer(Protocol):
    """Carries out claimed deliveries of one platform, many at once."""

    async def deliver(self, delivery: ClaimedDelivery) -> DeliveryResult:
        """Sends one delivery and judges the platform's answer: delivered, to be retried
        (with when), or failed (with why). A failure is a result, never an exception."""
        ...
