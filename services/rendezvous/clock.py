"""The log's clock, one per scores partition, and the timers it drives.

Every decision the join takes is measured against the time the *broker* appended records to
the scores partition (LogAppendTime): a partition's clock is the newest append time read from
it. A model is given up once that clock has passed its give-up time, and a score counts if it
was appended by then. Any instance that reads the same partition decides the same, which is
what lets a new owner of a partition re-decide exactly as a crashed one did.

A quiet partition's clock does not move by itself. When a timer is due by the wall clock but
the partition has not shown a later append time, the service writes a clock record (no value,
header `rdv-clock`) to that partition; the broker stamps it, and reading it back moves the clock.
`markers_due` says which partitions need one. "Due by the wall clock" is by this host's clock
corrected by how far the broker's runs ahead of it (`BrokerLead`): timers are in the broker's time.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

NEVER = -(2**62)


@dataclass
class _Partition(Generic[T]):
    now: int = NEVER
    timers: list[tuple[int, int, T]] = field(default_factory=list)
    marker_sent_at: float = -1.0  # wall time (s) of the last clock record asked for


class BrokerLead:
    """How far each scores partition's broker runs ahead of this host's clock (negative: behind),
    in ms, from the clock records this host asked for there. One asked at wall time `sent`
    (carried in its header with this process' token), appended at `log_time` and read back at
    wall time `read` proves the lead is between `log_time - read` and `log_time - sent`. The
    estimate is 0 (in step) where that allows it, else the nearer bound: never more than the
    record proves, so one read late behind a backlog leaves it at 0 instead of asking that much
    later. Without it a host 1.5 s behind the broker asked for a quiet partition's clock record
    1.5 s after its timer, and every TIMEOUT came that late; one 1 s ahead wrote one per 0.5 s
    until the broker's time reached the timer (a review). The first timer of a partition goes by
    this host's clock: nothing is proven yet. A lead learnt from batches read (any record) was
    tried first: a backlog made every quiet partition's TIMEOUT late by its age (a review)."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._of: dict[int, int] = {}

    def header(self, sent_ms: int) -> bytes:
        """The clock record's header value: when it was asked for, and by whom."""
        return b"%d %s" % (sent_ms, self._token)

    def note(self, partition: int, log_time: int, read_ms: int, header: bytes | None) -> None:
        """A clock record of `partition` read back; any other's (another instance's, an older
        version's empty header) proves nothing about this host's clock."""
        sent, _, token = (header or b"").partition(b" ")
        if token != self._token or not sent.isdigit():
            return
        low, high = log_time - read_ms, log_time - int(sent)
        if low > high:  # this host's clock stepped between the ask and the read
            return
        self._of[partition] = min(max(0, low), high)

    def of(self, partition: int) -> int:
        return self._of.get(partition, 0)


def _always(_at: int, _item: object) -> bool:
    return True


class LogClocks(Generic[T]):
    """Per-partition log clocks with timers in log time.

    `live(at, item)` says whether a timer still matters (default: always). Timers are never
    removed from the middle of a heap; one that no longer matters (its mailbox closed before it
    fired) is dropped when it reaches the top, so it neither asks for a clock record nor wakes
    the poll loop early. Without that, nearly every request's give-up timer, left behind once all
    its scores were in, cost a clock record on a scores partition quieter than a few ms.
    """

    def __init__(self, live: Callable[[int, T], bool] = _always) -> None:
        self._parts: dict[int, _Partition[T]] = {}
        self._seq = itertools.count()  # ties pop in push order; items are never compared
        self._live = live
        self.moves = 0  # times any clock moved: a reader compares it to know whether one did since it last looked

    def _part(self, partition: int) -> _Partition[T]:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition()
        return part

    def now(self, partition: int) -> int:
        part = self._parts.get(partition)
        return NEVER if part is None else part.now

    def advance(self, partition: int, log_time: int) -> list[T]:
        """Move the clock to `log_time` (if later); the items whose time it has now passed."""
        part = self._parts.get(partition)  # per record: `_part` only for a new partition
        if part is None:
            part = self._part(partition)
        if log_time <= part.now:
            return []
        part.now = log_time
        self.moves += 1
        part.marker_sent_at = -1.0
        due = []
        timers = part.timers
        while timers and timers[0][0] < log_time:
            due.append(heapq.heappop(timers)[2])
        return due

    def wake(self, partition: int, at: int, item: T) -> None:
        """Hand `item` back once the partition's clock passes `at`."""
        part = self._parts.get(partition) or self._part(partition)  # per request: `_part` only for a new one
        heapq.heappush(part.timers, (at, next(self._seq), item))

    def markers_due(self, wall_ms: int, delay_ms: int, resend_s: float, wall_s: float,
                    lead: Callable[[int], int] = lambda _p: 0) -> list[int]:
        """Partitions whose earliest timer is `delay_ms` overdue by the wall clock (plus how far
        the partition's broker runs ahead of it, `lead`) while their log clock has not passed it
        (and no clock record was asked for in the last `resend_s`)."""
        due = []
        for partition, part in self._parts.items():
            self._drop_dead_top(part)
            if not part.timers or part.timers[0][0] + delay_ms > wall_ms + lead(partition):
                continue
            if part.marker_sent_at >= 0 and wall_s - part.marker_sent_at < resend_s:
                continue
            part.marker_sent_at = wall_s
            due.append(partition)
        return due

    def earliest(self, lead: Callable[[int], int] = lambda _p: 0) -> int | None:
        """The earliest timer of any partition, for the poll loop's wake-up: in this host's wall
        time given each partition's broker's `lead` (in log ms without one)."""
        earliest: int | None = None
        for partition, part in self._parts.items():
            self._drop_dead_top(part)
            if part.timers:
                at = part.timers[0][0] - lead(partition)
                if earliest is None or at < earliest:
                    earliest = at
        return earliest

    def _drop_dead_top(self, part: _Partition[T]) -> None:
        timers = part.timers
        while timers and not self._live(timers[0][0], timers[0][2]):
            heapq.heappop(timers)

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._parts.pop(partition, None)

    def pending(self) -> int:
        return sum(len(part.timers) for part in self._parts.values())
