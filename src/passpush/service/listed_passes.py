"""The passes a device was just told changed, kept by its HTTP process for the downloads
that follow.

A device that hears a push asks which of its passes changed (the serials query) and then
downloads each one it was told of, on the same connection, so in the same process. The
serials query reads each pass with what its package is made of; kept here a few seconds,
that read serves the download too, and a device update is one read instead of two. Each
kept pass serves one download: a later one (a retry, a refresh) reads the pass as it is
then. The state a download takes is the one its serials query saw, at most TTL_SECONDS
old: a change committed after that read comes with a push of its own, and the device's
next serials query keeps the newer state.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from passpush.store.passkit import PassPackageState

# Long enough for a slow device between its two requests; a pass listed and never
# downloaded leaves after it.
TTL_SECONDS = 10.0
# A device lists at most store.passkit.MAX_DEVICE_PASSES (1,000) passes a query; a kept
# pass is about a kilobyte.
MAX_PASSES = 5_000

_Key = tuple[str, str]  # pass type identifier, serial number


class ListedPasses:
    """Passes by pass type identifier and serial number, oldest first out, each until it is
    downloaded or TTL_SECONDS old. Used from the event loop only (no lock)."""

    def __init__(
        self,
        max_passes: int = MAX_PASSES,
        ttl_seconds: float = TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_passes
        self._ttl = ttl_seconds
        self._clock = clock
        # By the time they were listed: the oldest first.
        self._kept: OrderedDict[_Key, tuple[float, list[PassPackageState]]] = OrderedDict()

    def keep(self, pass_type_identifier: str, listed: Sequence[PassPackageState]) -> None:
        """The passes a serials query listed, as it read them."""
        now = self._clock()
        by_serial: dict[_Key, list[PassPackageState]] = {}
        for state in listed:  # projects may share a pass type: one serial, several passes
            by_serial.setdefault((pass_type_identifier, state.serial_number), []).append(state)
        for key, states in by_serial.items():
            self._kept.pop(key, None)
            self._kept[key] = (now, states)
        while len(self._kept) > self._max:
            self._kept.popitem(last=False)
        self._drop_expired(now)

    def take(
        self, pass_type_identifier: str, serial_number: str, token: bytes
    ) -> PassPackageState | None:
        """The kept pass with that token (compared in constant time), no longer kept; None
        when none is (never listed, downloaded already, expired, another token)."""
        now = self._clock()
        self._drop_expired(now)
        kept = self._kept.pop((pass_type_identifier, serial_number), None)
        if kept is None:
            return None
        found = None
        for state in kept[1]:
            if hmac.compare_digest(state.named.authentication_token.encode(), token):
                found = found or state
        return found

    def _drop_expired(self, now: float) -> None:
        while self._kept:
            listed_at, _ = next(iter(self._kept.values()))
            if now - listed_at < self._ttl:
                return
            self._kept.popitem(last=False)

    def __len__(self) -> int:
        return len(self._kept)
