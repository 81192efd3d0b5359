"""A worker whose model gets stuck for good on one request, and what must follow: shared by
test_hung_model.py (a plain broker) and test_acl.py (SASL, an authorizer, only the model's grants).

The stuck batch's requests get error Scores, the worker exits (its watchdog) or is killed (its
rescue process, when the model holds the interpreter lock), and the same worker started again, as
its supervisor would, reads on after that batch and scores what comes next."""

from __future__ import annotations

import signal
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def hung_worker(log_file: Path, bootstrap: str, prefix: str, stuck: Stuck, *flags: str) -> Proc:
    """A worker (not started) hosting the stuck model and the champion after it; `flags`: more of
    its command line (e.g. --kafka-config)."""
    return Proc(["model", "serve", "--bootstrap", bootstrap, "--topic-prefix", prefix,
                 "--model", f"tests.faults.hanging_model:{stuck.factory}", "--co-host", "champion=demo:champion",
                 "--predict-timeout-s", "2", *flags], log_file)


def send(config: dict[str, Any], topic: str, rows: list[dict[str, float]]) -> list[str]:
    producer, requests = Producer(config), codec("request")
    ids = []
    for row in rows:
        record = make_request(row, budget_ms=60_000, reply_topic=None, reply_partition=None)
        producer.produce(topic, requests.encode(record), key=record["request_id"])
        ids.append(record["request_id"])
    assert producer.flush(30) == 0
    return ids


def stuck_batch_answered_and_worker_reads_on(worker: Proc, stuck: Stuck, topics: Topics,
                                             config: dict[str, Any]) -> None:
    """The scenario, on fresh topics; `config`: a client that may write requests and read scores."""
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
