"""Which offsets may be committed: everything below the oldest record still in use.

Per partition, records are tracked in the order they were read (offsets increase). A record
is finished when its mailbox is closed (answered and logged), or at once when it needed no
mailbox (dead-lettered, or a late score for a closed request). The committable position is
the offset of the first unfinished record, or one past the last record read.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from confluent_kafka import Message, TopicPartition


class Finishable(Protocol):
    closed: bool


class PartitionOffsets:
    __slots__ = ("_next", "_pending")

    def __init__(self) -> None:
        self._pending: deque[tuple[int, Finishable | None]] = deque()
        self._next = -1

    def track(self, offset: int, owner: Finishable | None) -> None:
        if owner is not None and not owner.closed:
            self._pending.append((offset, owner))
        self._next = offset + 1

    def committable(self) -> int:
        """Next offset to read after a restart; -1 if nothing was read."""
        pending = self._pending
        while pending and (pending[0][1] is None or pending[0][1].closed):
            pending.popleft()
        return pending[0][0] if pending else self._next

    def __len__(self) -> int:
        return len(self._pending)


class OffsetBook:
    """Committable positions for every (topic, partition) this instance reads."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], PartitionOffsets] = {}
        self._committed: dict[tuple[str, int], int] = {}

    def track(self, msg: Message, owner: Finishable | None) -> None:
        """Remember a record read; it is finished when `owner` closes (None: finished now)."""
        key = (msg.topic() or "", msg.partition() or 0)
        offset = msg.offset() or 0
        part = self._parts.get(key)
        if part is None:
            part = self._parts[key] = PartitionOffsets()
        part.track(offset, owner)

    def to_commit(self) -> list[TopicPartition]:
        """Positions that moved since the last call to `mark_committed`."""
        moves = []
        for (topic, partition), part in self._parts.items():
            position = part.committable()
            if position >= 0 and position != self._committed.get((topic, partition)):
                moves.append(TopicPartition(topic, partition, position))
        return moves

    def mark_committed(self, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._parts.pop((tp.topic, tp.partition), None)
            self._committed.pop((tp.topic, tp.partition), None)
