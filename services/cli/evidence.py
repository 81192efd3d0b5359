"""The figures a promotion gate checks, measured on the comparison log (rdv.log).

Over the last `--window` of log records: the candidate's paired agreement, score distance
and latency against the champion on the same requests, its error rate and deadline hits.
"""

from __future__ import annotations

import numpy as np

from services.cli.lifecycle import LifecycleSettings
from services.compare_report.ranges import parse_duration_ms
from services.comparison.stats import PairedScores, agreement, ks_exact
from services.core.codec import codec
from services.core.errors import BadInput
from services.core.settings import KafkaSettings
from services.core.topic_range import read_spans


def gate_figures(settings: KafkaSettings, candidate: str, champion: str, now: int) -> dict[str, float]:
    window = settings.window if isinstance(settings, LifecycleSettings) else "10m"
    start = now - parse_duration_ms(window, "--window")
    log_codec = codec("comparison")
    latencies: list[float] = []
    candidate_scores: list[float] = []
    champion_scores: list[float] = []
    labels: tuple[list[str | None], list[str | None]] = ([], [])
    outputs = errors = on_time = 0
    paired = PairedScores()
    for msg in read_spans(settings.librdkafka(), settings.topics().log, start_ms=start, timeout_s=120):
        try:
            record = log_codec.decode(msg.value())
        except BadInput:
            continue
        by_model = {o["model"]: o for o in record["outputs"]}
        mine, theirs = by_model.get(candidate), by_model.get(champion)
        if mine is None:
            continue
        outputs += 1
        errors += mine["error"] is not None
        latencies.append(mine["latency_ms"])
        on_time += mine["error"] is None and mine["latency_ms"] <= record["deadline"] - record["created_at"]
        if theirs is None or mine["score"] is None or theirs["score"] is None:
            continue
        paired.add(mine["score"], theirs["score"])
        candidate_scores.append(mine["score"])
        champion_scores.append(theirs["score"])
        labels[0].append(theirs["label"])
        labels[1].append(mine["label"])
    return _figures(latencies, candidate_scores, champion_scores, labels, paired, outputs, errors, on_time)


def _figures(
    latencies: list[float],
    candidate_scores: list[float],
    champion_scores: list[float],
    labels: tuple[list[str | None], list[str | None]],
    paired: PairedScores,
    outputs: int,
    errors: int,
    on_time: int,
) -> dict[str, float]:
    nan = float("nan")
    quantiles = np.percentile(latencies, [50, 90, 99, 99.9]) if latencies else [nan] * 4
    return {
        "n": float(paired.n),
        "agreement": agreement(labels[0], labels[1]) if paired.n else nan,
        "p50": float(quantiles[0]),
        "p90": float(quantiles[1]),
        "p99": float(quantiles[2]),
        "p999": float(quantiles[3]),
        "mad": paired.mad(),
        "correlation": paired.correlation(),
        "ks": ks_exact(np.array(candidate_scores), np.array(champion_scores)) if paired.n else nan,
        "error_rate": errors / outputs if outputs else nan,
        "deadline_met": on_time / outputs if outputs else nan,
    }
