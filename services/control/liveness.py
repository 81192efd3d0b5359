"""Which models are scoring now, read from the scores topic: the one "model is live" rule.

A schedule change that would prefer a model that is not scoring is refused by the commands
that publish it (`schedule set`, `promote`), unless forced. The rendezvous itself does not
apply it: which versions are in force must follow from the control records alone, so every
instance and every command agree (services/control/topic.py, `ScheduleBook.refusal`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from services.control.schedule import Schedule
from services.core.codec import codec
from services.core.errors import BadInput
from services.core.runtime import now_ms
from services.core.topic_range import read_spans

Figures = dict[tuple[str, str], dict[str, float]]


def live_models(config: Mapping[str, Any], scores_topic: str, window_s: float) -> Figures:
    """Per (model, version) that scored in the last `window_s` seconds: scores, rate, errors,
    latency p50/p99 (worker time), replicas, seconds since its last score."""
    start = now_ms() - int(window_s * 1000)
    scores = codec("score")
    rows: dict[tuple[str, str], list[tuple[int, bool]]] = defaultdict(list)
    instances: dict[tuple[str, str], set[str]] = defaultdict(set)
    last: dict[tuple[str, str], int] = {}
    for msg in read_spans(config, scores_topic, start_ms=start, timeout_s=60):
        try:
            score = scores.decode(msg.value())
        except BadInput:
            continue  # clock records and bad input: not a model scoring
        key = (score["model"], score["version"])
        rows[key].append((score["scored_at"] - score["received_at"], score["error"] is not None))
        instances[key].add(score["instance"])
        last[key] = max(last.get(key, 0), score["scored_at"])
    figures = {}
    for key, seen in rows.items():
        latency = np.array([r[0] for r in seen], dtype=float)
        figures[key] = {
            "scores": float(len(seen)),
            "rate": len(seen) / window_s,
            "errors": float(sum(r[1] for r in seen)),
            "p50_ms": float(np.percentile(latency, 50)),
            "p99_ms": float(np.percentile(latency, 99)),
            "replicas": float(len(instances[key])),
            "last_seen_s": (now_ms() - last[key]) / 1000.0,
        }
    return figures


def not_live(schedule: Schedule, live: set[str], window_s: float) -> str | None:
    """Why `schedule` would prefer a model that is not scoring (None: the ones it prefers are)."""
    missing = [m for m in schedule.answering() if m not in live]
    if not missing:
        return None
    return (f"{', '.join(missing)} sent no usable score (one without an error) in the last {window_s:.0f}s "
            f"(scoring: {', '.join(sorted(live)) or 'none'})")
