"""Scores read no further ahead of their requests than the orphan budget allows.

Live, a score comes after its request, so scores flow freely: the join bounds the scores that
wait for a request (orphans, `max_orphans`) by dropping the oldest, which only forged or stray
scores ever reach. A backlog of both topics is different (a restart after an outage, a consumer
group reset): the consumer fetches the two topics at their own pace, and when the scores run
ahead, the scores of requests not yet read pile up as orphans. Beyond the budget the oldest were
dropped, and their requests, read later, waited for scores that would never come and were
answered TIMEOUT although every score had been written in time (measured: 11,166 of 100,000
pre-loaded requests in one `bench/rendezvous_throughput.py --requests 100000` run). By the log's
clock the answer after a backlog must be the one the request would have had live.

So while a partition's requests lag (at least as many records not read yet as one poll takes: a
backlog, not a fetch in flight) and orphans fill `HOLD_AT` of the budget (in number, or in bytes of
what `max_held_bytes` leaves them: scores with long labels or errors reach that one first), the scores of that
partition, if
it has orphans, wait: the consumer pauses them, which also frees its fetch queue for the
requests. They flow again once the partition has no orphans left or its requests are caught up,
once orphans in all are below `RELEASE_AT` of the budget, or when the rendezvous needs every
score now (request intake paused: its open requests must be able to finish; and the drain
before shutdown). Memory stays bounded: the drop rule is still there behind the brake. A
requests partition behind an open transaction of an outside transactional producer counts as
lagging (librdkafka's cached high watermark is not the last stable offset) until it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

# Share of max_orphans (or of the orphans' bytes budget) from which scores of partitions whose requests lag wait.
HOLD_AT = 0.5
RELEASE_AT = 0.25  # below this share, held scores flow again (hysteresis: no pause/resume flapping)


class ScoreBrake:
    def __init__(self, max_orphans: int, lag_from: int):
        self._max_orphans = max_orphans
        self._lag_from = lag_from  # records not read yet from which a requests partition lags
        self.held: set[int] = set()  # partitions whose scores wait now

    def decide(
        self,
        orphans: int,
        byte_fill: float,
        orphans_by_partition: Callable[[], Mapping[int, int]],
        requests_lag: Callable[[int], int],
        free: bool,
    ) -> tuple[set[int], set[int]]:
        """Partitions whose scores to pause now, and to resume now.

        `orphans`: scores waiting for their requests, in all; `byte_fill`: the orphans' bytes as a share
        of what the byte budget leaves them (join.py `orphan_byte_fill`: not the scores of unnamed
        models of requests read, which pausing cannot free); `orphans_by_partition()` the orphans by partition
        (asked only when it matters); `requests_lag(p)`: records of partition p's requests not read
        yet; `free`: hold nothing (every open request needs its scores now)."""
        fill = max(orphans / self._max_orphans, byte_fill)  # of the fuller budget
        if not self.held and (free or fill < HOLD_AT):
            return set(), set()  # the usual case, every turn of the loop: nothing to look at
        keep: set[int] = set()
        if not free and fill >= RELEASE_AT:
            waiting = orphans_by_partition()

            def ahead(partition: int) -> bool:
                return waiting.get(partition, 0) > 0 and requests_lag(partition) >= self._lag_from

            keep = {p for p in self.held if ahead(p)}
            if fill >= HOLD_AT:
                keep |= {p for p in waiting if ahead(p)}
        pause, resume = keep - self.held, self.held - keep
        self.held = keep
        return pause, resume

    def forget(self, partitions: set[int]) -> None:
        """Partitions given up: no longer held (a new owner starts them flowing)."""
        self.held -= partitions
