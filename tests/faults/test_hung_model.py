"""A model stuck for good on one batch: its requests get error Scores, a fresh worker reads on.

Stuck in Python or in C code that releases the interpreter lock, the worker's own watchdog acts
(exit code 70); stuck holding the lock, no thread of the worker runs, and its rescue process acts
from outside (error Scores and the commit in one transaction, then SIGKILL)."""

from __future__ import annotations

import signal
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Stuck:
    factory: str  # in tests.faults.hanging_model
    model: str  # the name it scores under
    exit_code: int
    error: str  # of its error Score
    log_says: str  # who acted
    log_lacks: str  # who could not


IN_PYTHON = Stuck("factory", "hang", EXIT_MODEL_HUNG, "model hang did not answer within 2 s",
                  "has not scored a batch", "held the interpreter lock")
HOLDING_THE_GIL = Stuck("gil_factory", "gil", -signal.SIGKILL,
                        "model gil did not answer within 2 s (stuck holding the interpreter lock)",
                        "held the interpreter lock", "has not scored a batch")


@pytest.fixture(params=[IN_PYTHON, HOLDING_THE_GIL], ids=["in-python", "holding-the-gil"])
def stuck(request: pytest.FixtureRequest) -> Stuck:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def worker(tmp_path: Path, bootstrap: str, prefix: str, stuck: Stuck) -> Iterator[Proc]:
    proc = Proc(["model", "serve", "--bootstrap", bootstrap, "--topic-prefix", prefix,
                 "--model", f"tests.faults.hanging_model:{stuck.factory}", "--co-host", "champion=demo:champion",
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
    worker: Proc, stuck: Stuck, topics: Topics, config: dict[str, Any]
) -> None:
    rows = demo_rows(30, seed=5)
    worker.start()
    before = send(config, topics.requests, rows[:10])
    until(lambda: worker.metric("rdv_model_scores_total", model="champion") >= 10, 60, "the first requests scored")

    hostile = send(config, topics.requests, [{**rows[10], DEMO_FEATURES[0]: HANG_AT}])[0]
    assert worker.wait(60) == stuck.exit_code, worker.tail()
    log = worker.log_file.read_text(errors="replace")
    assert stuck.log_says in log and stuck.log_lacks not in log, worker.tail()

    worker.start()  # as its supervisor would: it must read on after the batch, not hang on it again
    after = send(config, topics.requests, rows[11:30])
    until(lambda: worker.metric("rdv_model_scores_total", model="champion") >= len(after), 60,
          "the requests sent after the restart scored")
    assert worker.alive(), worker.tail()

    scores: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for score in read_topic(config, topics.scores, expect=2 * (len(before) + 1 + len(after)), decode="score"):
        scores[(score["request_id"], score["model"])].append(score)
    assert [s["error"] for s in scores[(hostile, stuck.model)]] == [stuck.error]
    assert [s["error"] for s in scores[(hostile, "champion")]] == [
        f"not scored: co-hosted model {stuck.model} hung on this batch"]
    for request_id in before + after:
        for model in (stuck.model, "champion"):
            assert any(s["error"] is None for s in scores[(request_id, model)]), (request_id, model)
