"""A model stuck for good on one batch: its requests get error Scores, a fresh worker reads on."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from services.client.client import make_request
from services.core.codec import codec
from services.core.settings import Topics
from services.model_worker.models import demo_rows
from services.model_worker.models.demo import DEMO_FEATURES
from services.model_worker.watchdog import EXIT_MODEL_HUNG
from tests.faults.hanging_model import HANG_AT
from tests.faults.procs import Proc, until
from tests.integration.harness import read_topic

pytestmark = pytest.mark.kafka


@pytest.fixture
def worker(tmp_path: Path, bootstrap: str, prefix: str) -> Iterator[Proc]:
    proc = Proc(["model", "serve", "--bootstrap", bootstrap, "--topic-prefix", prefix,
                 "--model", "tests.faults.hanging_model:factory", "--co-host", "champion=demo:champion",
                 "--predict-timeout-s", "2"], tmp_path / "worker.log")
    yield proc
    proc.stop()


def send(config: dict[str, Any], topic: str, rows: list[dict[str, float]]) -> list[str]:
    producer, requests = Producer(config), codec("request")
    ids = []
    for row in rows:
        record = make_request(row, budget_ms=60_000, reply_topic=None, reply_partition=None)
        producer.produce(topic, requests.encode(record), key=record["request_id"])
        ids.append(record["request_id"])
    assert producer.flush(30) == 0
    return ids


def test_a_model_stuck_on_a_batch_gets_it_answered_with_errors_and_a_fresh_worker_reads_on(
    worker: Proc, topics: Topics, config: dict[str, Any]
) -> None:
    rows = demo_rows(30, seed=5)
    worker.start()
    before = send(config, topics.requests, rows[:10])
    until(lambda: worker.metric("rdv_model_scores_total", model="champion") >= 10, 60, "the first requests scored")

    hostile = send(config, topics.requests, [{**rows[10], DEMO_FEATURES[0]: HANG_AT}])[0]
    assert worker.wait(60) == EXIT_MODEL_HUNG, worker.tail()

    worker.start()  # as its supervisor would: it must read on after the batch, not hang on it again
    after = send(config, topics.requests, rows[11:30])
    until(lambda: worker.metric("rdv_model_scores_total", model="champion") >= len(after), 60,
          "the requests sent after the restart scored")
    assert worker.alive(), worker.tail()

    scores: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for score in read_topic(config, topics.scores, expect=2 * (len(before) + 1 + len(after)), decode="score"):
        scores[(score["request_id"], score["model"])].append(score)
    stuck, skipped = scores[(hostile, "hang")], scores[(hostile, "champion")]
    assert [s["error"] for s in stuck] == ["model hang did not answer within 2 s"]
    assert [s["error"] for s in skipped] == ["not scored: co-hosted model hang hung on this batch"]
    for request_id in before + after:
        for model in ("hang", "champion"):
            assert any(s["error"] is None for s in scores[(request_id, model)]), (request_id, model)
