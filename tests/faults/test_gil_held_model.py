"""A model stuck for good holding the interpreter lock: the worker's own watchdog cannot run, the
rescue process answers the batch with errors, commits past it and kills the worker."""

from __future__ import annotations

import signal
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.model_worker.models import demo_rows
from services.model_worker.models.demo import DEMO_FEATURES
from tests.faults.hanging_model import HANG_AT
from tests.faults.procs import Proc, until
from tests.faults.test_hung_model import send
from tests.integration.harness import read_topic

pytestmark = pytest.mark.kafka


@pytest.fixture
def worker(tmp_path: Path, bootstrap: str, prefix: str) -> Iterator[Proc]:
    proc = Proc(["model", "serve", "--bootstrap", bootstrap, "--topic-prefix", prefix,
                 "--model", "tests.faults.hanging_model:gil_factory", "--co-host", "champion=demo:champion",
                 "--predict-timeout-s", "2"], tmp_path / "worker.log")
    yield proc
    proc.stop()


def test_a_model_stuck_holding_the_gil_is_rescued_from_outside_and_a_fresh_worker_reads_on(
    worker: Proc, topics: Any, config: dict[str, Any]
) -> None:
    rows = demo_rows(30, seed=7)
    worker.start()
    before = send(config, topics.requests, rows[:10])
    until(lambda: worker.metric("rdv_model_scores_total", model="champion") >= 10, 60, "the first requests scored")

    hostile = send(config, topics.requests, [{**rows[10], DEMO_FEATURES[0]: HANG_AT}])[0]
    assert worker.wait(60) == -signal.SIGKILL, worker.tail()
    log = worker.log_file.read_text(errors="replace")
    assert "has not scored a batch" not in log  # the in-process watchdog never ran: the GIL was held
    assert "held the interpreter lock" in log and "killing the worker" in log, worker.tail()

    worker.start()  # as its supervisor would: it must read on after the batch, not hang on it again
    after = send(config, topics.requests, rows[11:30])
    until(lambda: worker.metric("rdv_model_scores_total", model="champion") >= len(after), 60,
          "the requests sent after the restart scored")
    assert worker.alive(), worker.tail()

    scores: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for score in read_topic(config, topics.scores, expect=2 * (len(before) + 1 + len(after)), decode="score"):
        scores[(score["request_id"], score["model"])].append(score)
    stuck, skipped = scores[(hostile, "gil")], scores[(hostile, "champion")]
    assert [s["error"] for s in stuck] == ["model gil did not answer within 2 s (stuck holding the interpreter lock)"]
    assert [s["error"] for s in skipped] == ["not scored: co-hosted model gil hung on this batch"]
    for request_id in before + after:
        for model in ("gil", "champion"):
            assert any(s["error"] is None for s in scores[(request_id, model)]), (request_id, model)
