"""Replay: recorded requests through a new model, compared with what the champion said then."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer

from services.cli.replay import Recorded, ReplaySettings, replay
from services.client.client import Client, make_request
from services.compare_report.summary import ModelSummary, Report
from services.core.codec import codec
from services.core.errors import ConfigError
from services.core.settings import Topics
from services.decoy.service import Decoy
from services.decoy.settings import DecoySettings
from services.model_worker.models import demo_rows, load_model
from services.model_worker.models.base import features_to_matrix
from tests.integration.harness import Services, read_topic, wait_until

pytestmark = pytest.mark.kafka


def row_of(report: Report, name: str) -> ModelSummary:
    return next(m for m in report.models if m.name == name)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def test_replay_from_the_archive_gives_the_same_report_as_from_the_topic(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any], tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    decoy: Decoy = services.start(Decoy(DecoySettings(bootstrap=bootstrap, topic_prefix=prefix,
                                                      archive_dir=str(archive))))
    services.worker(bootstrap, prefix, "demo:champion")
    services.worker(bootstrap, prefix, "demo:canary")
    services.rendezvous(bootstrap, prefix, models=("champion", "canary"))
    rows = demo_rows(400, seed=41)
    with Client(config, topics, budget_ms=20_000, answer_wait_s=60) as client:
        answers = client.score_many(rows)
    read_topic(config, topics.log, expect=400)
    wait_until(lambda: decoy.archived >= 400, 60, "the decoy to archive every request")
    services.stop_all()

    common = {"bootstrap": bootstrap, "topic_prefix": prefix, "model": "demo:challenger", "since": "1h"}
    from_topic = replay(ReplaySettings(**common))
    from_archive = replay(ReplaySettings(**common, source="archive", archive_dir=str(archive)))

    assert from_topic.requests == from_archive.requests == 400
    assert from_topic.without_log == 0
    for report in (from_topic.report, from_archive.report):
        assert {m.name for m in report.models} == {"champion", "canary", "challenger-replay"}
        assert report.champion == "champion"
    for a, b in zip(from_topic.report.models, from_archive.report.models, strict=True):
        assert a.name == b.name and a.n == b.n == 400 and a.paired == b.paired
        for figure in ("agreement", "ks", "psi", "mad", "correlation", "errors"):
            assert same(getattr(a, figure), getattr(b, figure)), (a.name, figure)
    # The replayed model against the champion's answers of the time, computed directly.
    challenger = load_model("demo:challenger").predict(features_to_matrix(rows, load_model("demo:challenger")
                                                                          .feature_names))
    by_id = {a.request_id: a.label for a in answers}
    expected = np.mean([p.label == by_id[a.request_id] for p, a in zip(challenger, answers, strict=True)])
    assert row_of(from_topic.report, "challenger-replay").agreement == pytest.approx(expected, abs=1e-12)
    # A live model's name is refused before a request is read or scored (it was found in the log
    # only after the scoring, hours of a real model's work thrown away).
    def never() -> Iterator[Recorded]:
        raise AssertionError("a request was read before --name was checked")
        yield b""

    with pytest.raises(ConfigError, match=r"^--name champion: a live model has that name"):
        replay(ReplaySettings(**common, name="champion"), requests=never())


def test_replay_of_100k_recorded_requests_matches_direct_scoring(
    bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    n = 100_000
    rows = demo_rows(n, seed=42)
    champion = load_model("demo:champion")
    champion_out = champion.predict(features_to_matrix(rows, champion.feature_names))
    # The history a replay reads: the requests, and the champion's outputs as the rendezvous
    # logged them (written here directly; running the live pipeline for 100k requests would
    # take minutes on this machine and is covered by the smaller test above).
    requests, log = codec("request"), codec("comparison")
    producer = Producer({**config, "linger.ms": 20, "batch.num.messages": 10_000})
    created = 1_700_000_000_000
    for i, (row, out) in enumerate(zip(rows, champion_out, strict=True)):
        request = make_request(row, budget_ms=200, reply_topic=None, reply_partition=None, request_id=f"r{i}",
                               created_at=created + i)
        producer.produce(topics.requests, requests.encode(request), key=request["request_id"])
        producer.produce(topics.log, log.encode({
            "request_id": request["request_id"], "created_at": request["created_at"], "deadline": request["deadline"],
            "answered_at": request["created_at"] + 5, "status": "OK", "chosen_model": "champion", "reason": "",
            "outputs": [{"model": "champion", "version": champion.version, "score": out.score, "label": out.label,
                         "error": None, "latency_ms": 5.0, "compute_ms": 0.1, "late": False}],
        }), key=request["request_id"])
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0

    result = replay(ReplaySettings(bootstrap=bootstrap, topic_prefix=prefix, model="demo:challenger",
                                   **{"from_": "offset:0"}))
    print(f"FIGURES replay: {result.requests:,} requests in {result.seconds:.1f}s = {result.rate:,.0f} requests/s")

    challenger = load_model("demo:challenger")
    direct = challenger.predict(features_to_matrix(rows, challenger.feature_names))
    replayed = row_of(result.report, "challenger-replay")
    assert result.requests == n and result.without_log == 0 and replayed.n == n and replayed.paired == n
    expected_agreement = np.mean([d.label == c.label for d, c in zip(direct, champion_out, strict=True)])
    expected_mad = np.mean([abs(d.score - c.score) for d, c in zip(direct, champion_out, strict=True)])
    assert replayed.agreement == pytest.approx(expected_agreement, abs=1e-12)
    assert replayed.mad == pytest.approx(expected_mad, rel=1e-9)
    assert replayed.errors == 0
