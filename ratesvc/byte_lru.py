"""A map bounded by an estimate of the bytes its entries hold, oldest out first: the building
block of every cache and store kept in memory (see :mod:`ratesvc.quotes`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    """Entries from oldest to newest, under ``max_bytes`` by the size each was put with.

    ``put`` makes an entry the newest and drops the oldest ones while over the budget (never the
    one just put); ``touch`` makes an entry the newest again. Every operation is O(1).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        """The estimate of what the entries hold."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def size_of(self, key: K) -> int | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def touch(self, key: K) -> None:
        self._entries.move_to_end(key)

    def put(self, key: K, value: V, size: int) -> None:
        self.pop(key)
        self._entries[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            self.pop_oldest()

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self._bytes -= entry[1]
        return entry[0]

    def oldest(self) -> V | None:
        for value, _ in self._entries.values():
            return value
        return None

    def values(self) -> list[V]:
        """Every value, oldest first (a copy: the entries may change while it is used)."""
        return [value for value, _ in self._entries.values()]

    def pop_oldest(self) -> None:
        self._bytes -= self._entries.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
