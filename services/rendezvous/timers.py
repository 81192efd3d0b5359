"""One deadline heap per rendezvous instance; the poll loop sleeps until its earliest entry.

Entries are never removed early: a popped entry whose mailbox has moved on is simply
re-evaluated (the evaluation is idempotent), which keeps push and pop O(log n).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

T = TypeVar("T")


class DeadlineHeap(Generic[T]):
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, T]] = []
        self._seq = itertools.count()  # ties pop in push order; items are never compared

    def push(self, at_ms: int, item: T) -> None:
        heapq.heappush(self._heap, (at_ms, next(self._seq), item))

    def earliest(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_ms: int) -> list[T]:
        """Every item whose time is <= now, earliest first."""
        due = []
        while self._heap and self._heap[0][0] <= now_ms:
            due.append(heapq.heappop(self._heap)[2])
        return due

    def __len__(self) -> int:
        return len(self._heap)
