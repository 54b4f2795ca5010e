"""Push-to-fetch latency of a ticket, kept as a small fixed histogram.

A ticket is read up to ten times a second by each watch, and may have a million
deliveries: its p50 and p95 must not cost a scan of them. So each batch of fetch
confirmations adds its latencies to a histogram stored on the ticket (a few dozen
buckets at most), and a read takes the percentiles from it in microseconds.

Buckets grow by 2^(1/4) from 1 ms: bucket 0 holds everything under 1 ms, bucket i
[2^((i-1)/4), 2^(i/4)) ms, the last (100, from about 5.8 hours) everything longer. A
percentile is its bucket's geometric middle: within 9% of the true value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import timedelta

BUCKETS = 101
_STEPS_PER_DOUBLING = 4
_FIRST_EDGE_MS = 1.0


def bucket_of(latency: timedelta) -> int:
    """The histogram bucket of one latency (negative ones count as zero)."""
    ms = latency.total_seconds() * 1000
    if ms < _FIRST_EDGE_MS:
        return 0
    index = math.floor(math.log2(ms / _FIRST_EDGE_MS) * _STEPS_PER_DOUBLING) + 1
    return min(index, BUCKETS - 1)


def added(histogram: Mapping[str, int] | None, latencies: Iterable[timedelta]) -> dict[str, int]:
    """The histogram with these latencies counted in (JSON keys are strings)."""
    merged = dict(histogram or {})
    for latency in latencies:
        key = str(bucket_of(latency))
        merged[key] = merged.get(key, 0) + 1
    return merged


def percentile(histogram: Mapping[str, int] | None, fraction: float) -> timedelta | None:
    """The latency under which `fraction` of the fetches fell; None before any fetch."""
    counts = sorted((int(k), n) for k, n in (histogram or {}).items() if n > 0)
    total = sum(n for _, n in counts)
    if not total:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index, n in counts:
        seen += n
        if seen >= rank:
            return _middle(index)
    return _middle(counts[-1][0])  # pragma: no cover - rank <= total


def _middle(index: int) -> timedelta:
    if index == 0:
        return timedelta(milliseconds=_FIRST_EDGE_MS / 2)
    ms = _FIRST_EDGE_MS * 2 ** ((index - 0.5) / _STEPS_PER_DOUBLING)
    return timedelta(microseconds=round(ms * 1000))
