"""Pass update tags: what a Wallet device sends back to ask which passes changed since.

A tag is the time of a pass's last change, in microseconds since the epoch, and never goes
back: a device that saw a tag must see every later change as newer, whatever the clock did.
"""

from __future__ import annotations

from datetime import datetime

MAX_UPDATE_TAG = 2**63 - 1  # a bigint column's largest value
_TAG_DIGITS = len(str(MAX_UPDATE_TAG))


def update_tag_at(now: datetime) -> int:
    """Apple's update tag: microseconds since the epoch, increasing with time."""
    return int(now.timestamp() * 1_000_000)


def next_update_tag(previous: int, now: datetime) -> int:
    """A pass's next update tag: the time's, but above the previous one whatever the clock
    did (a device that saw a tag must see every later change as newer)."""
    return max(previous + 1, update_tag_at(now))


def parse_update_tag(value: str | None) -> int | None:
    """A tag passpush made (a decimal), else None: the device then gets every serial."""
    # Longer than any tag would be is not one (and Python parses at most 4,300 digits).
    if value is None or len(value) > _TAG_DIGITS or not value.isascii() or not value.isdecimal():
        return None
    tag = int(value)
    return tag if tag <= MAX_UPDATE_TAG else None
