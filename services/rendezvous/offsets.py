"""Which offsets may be committed: everything below the oldest record still in use.

Per partition, records are tracked in the order they were read (offsets increase). A record
is finished when its mailbox is settled (answered, logged, and its replies acknowledged), or at
once when it needed no mailbox (dead-lettered, or a late score for a closed request). The
committable position is the offset of the first unfinished record, or one past the last read.

Each tracked record may carry a `mark` (e.g. where the outputs topics ended when it was read);
the mark of the first unfinished record travels with the committed offset as its metadata, so
a new owner of the partition knows from where to look for outputs of what it re-reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import TopicPartition


class Finishable(Protocol):
    @property
    def settled(self) -> bool: ...


class PartitionOffsets:
    __slots__ = ("_next", "_pending")

    def __init__(self) -> None:
        self._pending: deque[tuple[int, Finishable, str | None]] = deque()
        self._next = -1

    def track(self, offset: int, owner: Finishable | None, mark: str | None = None) -> None:
        if owner is not None and not owner.settled:
            self._pending.append((offset, owner, mark))
        self._next = offset + 1

    def start_at(self, offset: int) -> None:
        """Where reading starts, before anything is read (then records read move it)."""
        if self._next < 0 and not self._pending:
            self._next = offset

    def committable(self) -> tuple[int, str | None]:
        """Next offset to read after a restart (-1 if nothing was read), and its mark (None:
        nothing is in use, the caller's current mark applies)."""
        pending = self._pending
        while pending and pending[0][1].settled:
            pending.popleft()
        if pending:
            return pending[0][0], pending[0][2]
        return self._next, None

    def __len__(self) -> int:
        return len(self._pending)


class OffsetBook:
    """Committable positions for every (topic, partition) this instance reads."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], PartitionOffsets] = {}
        self._committed: dict[tuple[str, int], int] = {}

    def track(self, topic: str, partition: int, offset: int, owner: Finishable | None,
              mark: str | None = None) -> None:
        """Remember a record read; it is finished when `owner` closes (None: finished now)."""
        part = self._parts.get((topic, partition))
        if part is None:
            part = self._parts[(topic, partition)] = PartitionOffsets()
        part.track(offset, owner, mark)

    def to_commit(
        self, current_mark: Callable[[str, int, int], str | None] = lambda _t, _p, _o: None
    ) -> list[TopicPartition]:
        """Positions that moved since the last call to `mark_committed`, with their marks as metadata
        (`current_mark(topic, partition, position)` where no record in use carries one)."""
        moves = []
        for (topic, partition), part in self._parts.items():
            position, mark = part.committable()
            if position >= 0 and position != self._committed.get((topic, partition)):
                metadata = mark if mark is not None else current_mark(topic, partition, position)
                if metadata is None:
                    moves.append(TopicPartition(topic, partition, position))
                else:
                    moves.append(TopicPartition(topic, partition, position, metadata=metadata))
        return moves

    def start_at(self, topic: str, partition: int, offset: int) -> None:
        """A partition's position before anything is read from it (committed like any other)."""
        part = self._parts.get((topic, partition))
        if part is None:
            part = self._parts[(topic, partition)] = PartitionOffsets()
        part.start_at(offset)

    def mark_committed(self, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._parts.pop((tp.topic, tp.partition), None)
            self._committed.pop((tp.topic, tp.partition), None)

    def pending(self) -> int:
        return sum(len(part) for part in self._parts.values())
