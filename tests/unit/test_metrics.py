"""The batched metrics (services/core/metrics.py `BatchedMetrics`) leave exactly what one call per event leaves."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.core.metrics import LATENCY_BUCKETS, BatchedMetrics, observe_many


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry except creation times, NaN made comparable."""
    found = {}
    for metric in registry.collect():
        for s in metric.samples:
            if not s.name.endswith("_created"):
                found[(s.name, tuple(sorted(s.labels.items())))] = -0.5 if math.isnan(s.value) else s.value
    return found


def _histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("h_seconds", "h", ["model"], buckets=LATENCY_BUCKETS, registry=registry)


values = st.lists(st.one_of(st.floats(allow_nan=True), st.sampled_from([*LATENCY_BUCKETS, 0.0, -1.0])), max_size=60)


@settings(max_examples=200, deadline=None)
@given(values=values)
def test_observe_many_equals_one_observe_per_value(values: list[float]) -> None:
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    single = _histogram(one_by_one).labels("m")
    for value in values:
        single.observe(value)
    observe_many(_histogram(at_once).labels("m"), values)
    assert _samples(at_once) == _samples(one_by_one)


def test_batched_metrics_apply_their_counts_and_observations_once_at_the_flush() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["status"], registry=registry)
    histogram = _histogram(registry)
    batched = BatchedMetrics()
    for value in (0.004, 0.004, 0.3):
        batched.inc(counter.labels("OK"))
        batched.observe(histogram.labels("champion"), value)
    batched.inc(counter.labels("TIMEOUT"), 2)
    assert registry.get_sample_value("c_total", {"status": "OK"}) == 0.0  # nothing before the flush
    batched.flush()
    batched.flush()  # a second flush adds nothing
    assert registry.get_sample_value("c_total", {"status": "OK"}) == 3.0
    assert registry.get_sample_value("c_total", {"status": "TIMEOUT"}) == 2.0
    assert registry.get_sample_value("h_seconds_count", {"model": "champion"}) == 3.0
    assert registry.get_sample_value("h_seconds_bucket", {"model": "champion", "le": "0.005"}) == 2.0
    assert registry.get_sample_value("h_seconds_sum", {"model": "champion"}) == pytest.approx(0.308)


class _OtherClientVersion:
    """A histogram child without the attributes observe_many reads."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def observe(self, value: float) -> None:
        self.seen.append(value)


def test_a_histogram_of_another_shape_is_observed_value_by_value() -> None:
    other = _OtherClientVersion()
    observe_many(other, [0.1, 0.2])
    assert other.seen == [0.1, 0.2]
