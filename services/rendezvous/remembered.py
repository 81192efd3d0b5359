"""The ids the join closed, kept for a while: a late score is known as late, a repeated request
gets the same answer.

Each id is forgotten once *its own* requests partition is read past its time (so whether a retry
is a repeat depends on the requests' order alone, whatever was read of the scores). One queue of all
partitions, forgotten from its front, let an id of a partition that went quiet hold every later
id of every partition: they stayed until the count bound (200,000 by default, ≈ 160 MB at
200 req/s) pushed it out, and an id reused after its time on a busy partition was still taken
for a repeat. Hence a queue per partition, in the order remembered, beside the one mapping.

A partition's times are not strictly in order (an id's time counts from its request's append
time or its partition's clock, whichever is later), so an id can wait behind an earlier one of
its partition whose time is a little later: by that skew, never by another partition.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

# (partition, forget at (log time), its answer: decoded, or as a recovery scan read it; the
# digest of its inputs, None when a recovery scan found it)
Remembered = tuple[int, int, dict[str, Any] | bytes | None, bytes | None]


class RememberedIds:
    """Closed ids by request id, bounded by time (per partition) and in number (oldest first)."""

    def __init__(self, max_ids: int):
        self.max_ids = max_ids
        self._ids: OrderedDict[str, Remembered] = OrderedDict()
        self._due: dict[int, deque[tuple[int, str]]] = {}  # partition -> (forget at, id), as remembered
        # Entries in the queues, stale ones included (an id the count bound pushed out, or remembered
        # again): past twice the bound they are rebuilt from the mapping, so they stay bounded too.
        self._queued = 0

    def __contains__(self, rid: str) -> bool:
        return rid in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, rid: str) -> Remembered:
        return self._ids[rid]

    def get(self, rid: str) -> Remembered | None:
        return self._ids.get(rid)

    def add(self, rid: str, entry: Remembered) -> None:
        ids = self._ids
        ids[rid] = entry
        ids.move_to_end(rid)
        while len(ids) > self.max_ids:
            ids.popitem(last=False)
        self._queue_of(entry[0]).append((entry[1], rid))
        self._queued += 1
        if self._queued > 2 * self.max_ids:
            self._rebuild()

    def forget(self, rid: str) -> None:
        self._ids.pop(rid, None)  # its queue entry goes stale: skipped when it comes up

    def expire(self, partition: int, now: int) -> None:
        """Forget the ids of `partition` whose time its clock (`now`) has passed."""
        queue = self._due.get(partition)
        if not queue or queue[0][0] >= now:
            return  # per score: one lookup and one comparison
        ids = self._ids
        while queue and queue[0][0] < now:
            at, rid = queue.popleft()
            self._queued -= 1
            entry = ids.get(rid)
            if entry is not None and entry[0] == partition and entry[1] == at:  # not one remembered since
                del ids[rid]

    def drop_partitions(self, partitions: set[int]) -> None:
        for rid in [rid for rid, entry in self._ids.items() if entry[0] in partitions]:
            del self._ids[rid]
        for partition in partitions:
            self._queued -= len(self._due.pop(partition, ()))

    def _rebuild(self) -> None:
        self._due = {}
        for rid, entry in self._ids.items():
            self._queue_of(entry[0]).append((entry[1], rid))
        self._queued = len(self._ids)

    def _queue_of(self, partition: int) -> deque[tuple[int, str]]:
        queue = self._due.get(partition)  # not setdefault: that would make a deque per call
        if queue is None:
            queue = self._due[partition] = deque()
        return queue
