"""Which models are scoring now: the one "model is live" rule. Read from the scores topic (a
usable score in the last window) and from the workers' consumer groups (a model whose worker
left its group is not live, whatever it scored a moment ago; one whose worker is in its group is
live without traffic to score, but not while others scored and it did not, nor when all it scored
in the window were errors).

A schedule change that would prefer a model that is not scoring is refused by the commands
that publish it (`schedule set`, `promote`), unless forced. The rendezvous itself does not
apply it: which versions are in force must follow from the control records alone, so every
instance and every command agree (services/control/topic.py, `ScheduleBook.refusal`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Set
from typing import Any

import numpy as np

from services.control.schedule import Schedule
from services.core.codec import codec
from services.core.errors import BadInput, BrokerError
from services.core.kafka import groups_by_members
from services.core.runtime import now_ms
from services.core.topic_range import read_spans
from services.model_worker.settings import model_groups

Figures = dict[tuple[str, str], dict[str, float]]


def live_models(config: Mapping[str, Any], scores_topic: str, window_s: float) -> Figures:
    """Per (model, version) that scored in the last `window_s` seconds: scores, rate, errors,
    latency p50/p99 (worker time), replicas, seconds since its last score, and how many of its
    scores were of requests due within the window or later ("current": not a backfill's)."""
    start = now_ms() - int(window_s * 1000)
    scores = codec("score")
    rows: dict[tuple[str, str], list[tuple[int, bool]]] = defaultdict(list)
    current: dict[tuple[str, str], int] = defaultdict(int)
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
        # 0: the request set none (its schedule's default applied), so when it was due is unknown:
        # counted as current, else producers that never set one would hide a hung model (a review).
        current[key] += score["deadline"] <= 0 or score["deadline"] >= start
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
            "current": float(current[key]),
        }
    return figures


def workers(config: Mapping[str, Any], prefix: str) -> tuple[set[str], set[str]] | None:
    """(the models a worker's consumer group with members names now, those only groups without
    members name), from the groups' names (`model_groups`: a worker run with a --group of its
    own is not found); None when the cluster's groups cannot all be listed."""
    try:
        with_members, without = groups_by_members(config, [f"{prefix}model."])
    except BrokerError:
        return None
    running = set(model_groups(prefix, with_members))
    return running, set(model_groups(prefix, without)) - running


def live_names(figures: Figures, found: tuple[set[str], set[str]] | None) -> set[str]:
    """The live models: those with a usable score in the window (`figures`) but for those whose
    workers all left their groups (when every group with members is named after a model that
    scored), and, while no model scored in the window (no traffic), those with a worker in its
    group. `found`: `workers`' (running, stopped); None: scores alone."""
    usable = {model for (model, _version), f in figures.items() if f["errors"] < f["scores"]}
    if found is None:
        return usable
    running, stopped = found
    scored = {model for model, _version in figures}
    if any(not set(name.split("+")) <= scored for name in running):  # a co-hosted group: each of its models
        # A group with members not named after models that scored (a worker run with a --group of
        # its own, `<prefix>model.fraud-blue`, or one deployed and idle) may hold the workers of a
        # model whose default group is left empty: that empty group proves nothing (a review). So
        # a model just undeployed is taken for live while another is deployed and idle.
        stopped = set()
    # A worker in its group that scored nothing while others scored requests of the window is hung
    # or far behind: taken for live, `promote` could make a model that answers nothing the champion
    # (a review). Scores of older requests (a new worker's backfill of the topic) are no traffic.
    traffic = any(f["current"] > 0 for f in figures.values())
    idle = running - scored if not traffic else set()
    return (usable - stopped) | idle


def not_live(schedule: Schedule, live: set[str], window_s: float, stopped: Set[str] = frozenset(),
             running: Set[str] = frozenset()) -> str | None:
    """Why `schedule` would prefer a model that is not scoring (None: the ones it prefers are);
    `stopped`: models whose workers left their consumer groups; `running`: those with a worker in
    its group."""
    missing = [m for m in schedule.answering() if m not in live]
    if not missing:
        return None
    left = [m for m in missing if m in stopped]
    silent = [m for m in missing if m not in stopped and m not in running]
    in_group = [m for m in missing if m in running]  # scored nothing while others did, or errors only
    reasons = [f"{', '.join(left)} has no worker in its consumer group now"] if left else []
    for names, why in ((in_group, " though a worker is in its consumer group (hung, failing, or far behind?)"),
                       (silent, "")):
        if names:
            reasons.append(f"{', '.join(names)} sent no usable score (one without an error) in the last "
                           f"{window_s:.0f}s{why}")
    return f"{'; '.join(reasons)} (scoring: {', '.join(sorted(live)) or 'none'})"
