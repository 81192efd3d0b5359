"""Prometheus helpers: one HTTP endpoint per service process, shared bucket layouts.

Every metric is named `rdv_<what>_<unit>` in base units (seconds), labelled by model and
version where it is per model; label values come from model names, never request ids.
"""

from __future__ import annotations

import logging
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
    "Records sent to the dead-letter topic, by service, source topic and error type.",
    ["service", "topic", "error"],
)


@lru_cache(maxsize=8192)
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, cached: the lookup costs about as much as an Avro decode on the
    hot path, and label values (model names, statuses) are few."""
    return metric.labels(*labels)
