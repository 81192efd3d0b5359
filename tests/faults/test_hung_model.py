"""A model stuck for good on one batch: its requests get error Scores, a fresh worker reads on.

Stuck in Python or in C code that releases the interpreter lock, the worker's own watchdog acts
(exit code 70); stuck holding the lock, no thread of the worker runs, and its rescue process acts
from outside (error Scores and the commit in one transaction, then SIGKILL). The scenario is in
hung.py; test_acl.py runs it on a broker with SASL and ACLs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.core.settings import Topics
from tests.faults.hung import HOLDING_THE_GIL, IN_PYTHON, Stuck, hung_worker, stuck_batch_answered_and_worker_reads_on
from tests.faults.procs import Proc

pytestmark = pytest.mark.kafka


@pytest.fixture(params=[IN_PYTHON, HOLDING_THE_GIL], ids=["in-python", "holding-the-gil"])
def stuck(request: pytest.FixtureRequest) -> Stuck:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def worker(tmp_path: Path, bootstrap: str, prefix: str, stuck: Stuck) -> Iterator[Proc]:
    proc = hung_worker(tmp_path / "worker.log", bootstrap, prefix, stuck)
    yield proc
    proc.stop()


def test_a_model_stuck_on_a_batch_gets_it_answered_with_errors_and_a_fresh_worker_reads_on(
    worker: Proc, stuck: Stuck, topics: Topics, config: dict[str, Any]
) -> None:
    stuck_batch_answered_and_worker_reads_on(worker, stuck, topics, config)
