"""Prometheus helpers: one HTTP endpoint per service process, shared bucket layouts.

Every metric is named `rdv_<what>_<unit>` in base units (seconds), labelled by model and
version where it is per model; label values come from model names, never request ids.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from prometheus_client import Counter

log = logging.getLogger(__name__)

# Serving latencies: 1 ms .. 10 s, dense where deadlines usually sit (50-500 ms).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
)

DECODE_ERRORS = Counter(
    "rdv_decode_errors_total", "Records that could not be decoded, by service, topic and error type.",
    ["service", "topic", "error"],
)
DEAD_LETTERS = Counter(
    "rdv_deadletters_total",
    "Records dead-lettered (handed to the producer for the dead-letter topic), by service, source topic and "
    "error type. A broker's refusal of a letter (the topic missing, an ACL) stops the service with its reason.",
    ["service", "topic", "error"],
)

PRODUCERS_REPLACED = Counter(
    "rdv_kafka_producers_replaced_total",
    "Kafka producers replaced by a new client, by why: timed_out (a record found no partition leader for its "
    "whole timeout: the outage, or a client stuck after a broker restart), or transaction (a transactional call "
    "failed for good or never returned).",
    ["why"],
)
# Each series from 0, so that its first replacement is an increase: a series born at 1 is none to
# increase(), and RdvProducerReplaced missed the one replacement after a broker restart (a review).
for _why in ("timed_out", "transaction"):
    PRODUCERS_REPLACED.labels(_why)


@lru_cache(maxsize=8192)
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, cached: the lookup costs about as much as an Avro decode on the
    hot path, and label values (model names, statuses) are few."""
    return metric.labels(*labels)


class BatchedMetrics:
    """Counter increments and histogram observations of one poll batch, applied by `flush` at
    its end. Why: each `inc` or `observe` of prometheus_client takes a lock (an observation two),
    ≈ 2 µs a call; the rendezvous made ten per request, 10% of its join's CPU. Per batch it is
    one `inc` per counter child and one pass per histogram child. Values are taken when counted
    (a latency is measured then, not at the flush); a scrape sees them at the end of the batch.
    (The comparison service keeps typed counts of its own, services/comparison/metrics.py `Tally`:
    its numpy fold adds them by label, not by metric child.)"""

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}
        self._observed: dict[Any, list[float]] = {}

    def inc(self, counter: Any, amount: float = 1) -> None:
        self._counts[counter] = self._counts.get(counter, 0) + amount

    def observe(self, histogram: Any, value: float) -> None:
        observed = self._observed.get(histogram)
        if observed is None:
            self._observed[histogram] = [value]
        else:
            observed.append(value)

    def flush(self) -> None:
        if self._counts:
            for counter, amount in self._counts.items():
                counter.inc(amount)
            self._counts.clear()
        if self._observed:
            for histogram, values in self._observed.items():
                observe_many(histogram, values)
            self._observed.clear()


def observe_many(histogram: Any, values: Sequence[float]) -> None:
    """`histogram.observe(v)` for each value, with one lock per bucket touched instead of two per
    value. It updates the child's buckets and sum as `observe` does (the first bucket whose upper
    bound is >= the value; NaN in none), through attributes prometheus_client has kept since 0.4;
    tests/unit/test_metrics.py compares the result with `observe`, and a child without them
    (another client version) is observed value by value."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts: dict[int, int] = {}
    for value in values:
        if value == value:  # NaN is counted in the sum only, as by `observe`
            index = bisect_left(bounds, value)
            counts[index] = counts.get(index, 0) + 1
    for index, count in counts.items():
        buckets[index].inc(count)
    total.inc(sum(values))
