"""A map bounded in bytes that drops its least recently used entries first."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BytesBoundedLru(Generic[K, V]):
    """At most `max_bytes` of values (each weighs `size(value)`); a value heavier than
    that is not kept. Used from one thread (no lock): the event loop's."""

    def __init__(self, max_bytes: int, size: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self._size = size
        self._values: OrderedDict[K, V] = OrderedDict()
        self._bytes = 0

    def get(self, key: K) -> V | None:
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        weight = self._size(value)
        if key in self._values or weight > self.max_bytes:
            return
        self._values[key] = value
        self._bytes += weight
        while self._bytes > self.max_bytes:
            _, dropped = self._values.popitem(last=False)
            self._bytes -= self._size(dropped)

    def __len__(self) -> int:
        return len(self._values)
