"""`compare --workers`: the worker processes stop with the read (services/compare_report/workers.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from services.compare_report.columns import Columns
from services.compare_report.workers import read_parallel
from services.core.topic_range import PartitionSpan

MARKER_ENV = "TEST_COMPARE_WORKER_MARKER"


def _one_fails_while_the_other_reads(index: int, _config: dict[str, Any], _topic: str,
                                     _spans: list[PartitionSpan]) -> tuple[Columns, int]:
    """In a worker: the first reads on for a while (then leaves a marker), the second fails at once."""
    if index == 1:
        raise ValueError("partition 1 could not be read")
    time.sleep(20)
    Path(os.environ[MARKER_ENV]).write_text("read to the end")
    return Columns(), 0


def test_a_failing_worker_stops_the_others_and_its_error_is_said_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first worker's error was raised only once every other had read its partitions to the
    end (a stopped compare waited for them the same way): now the failure ends the others."""
    marker = tmp_path / "finished"
    monkeypatch.setenv(MARKER_ENV, str(marker))  # inherited by the spawned workers
    spans = [PartitionSpan(0, 0, 100), PartitionSpan(1, 0, 100)]
    with pytest.raises(ValueError, match="partition 1 could not be read"):
        read_parallel({}, "t.log", spans, 2, read=_one_fails_while_the_other_reads)
    assert not marker.exists()  # the other worker was ended, not waited for


def _kafka_refuses(_index: int, _config: dict[str, Any], _topic: str, _spans: list[PartitionSpan]) -> Any:
    from confluent_kafka import KafkaError, KafkaException

    raise KafkaException(KafkaError(KafkaError._FATAL, "fatal error: the consumer was fenced"))


def test_a_worker_s_kafka_error_reaches_the_command_as_its_own_one_line_error() -> None:
    """A KafkaException cannot be pickled back from a worker: the parent got a MaybeEncodingError,
    and the command printed a traceback where one process printed one line (a review)."""
    from services.core.errors import KafkaOperationError

    with pytest.raises(KafkaOperationError, match=r"Kafka client: .*the consumer was fenced"):
        read_parallel({}, "t.log", [PartitionSpan(0, 0, 10), PartitionSpan(1, 0, 10)], 2, read=_kafka_refuses)
