"""Reading a range of a topic (services/core/topic_range.py): errors Kafka reports are said, and
the timeout bounds a stall of the broker, not the caller's own work. A stand-in for the
groupless consumer: the logic under test is the reading loop."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

from services.core import topic_range
from services.core.errors import BrokerError
from services.core.topic_range import PartitionSpan, read_together


class Record:
    def __init__(self, partition: int, offset: int, err: KafkaError | None = None):
        self._partition, self._offset, self._err = partition, offset, err

    def error(self) -> KafkaError | None:
        return self._err

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class Partitions:
    """`size` records in each partition, handed out ten at a time; `fails` errors instead."""

    def __init__(self, size: int, fails: KafkaError | None = None):
        self.size, self.fails, self.at = size, fails, {}

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.at = {tp.partition: tp.offset for tp in partitions}

    def consume(self, _count: int, _timeout: float) -> list[Record]:
        if self.fails is not None:
            return [Record(0, self.at[0], self.fails)]
        out = []
        for partition, offset in self.at.items():
            taken = list(range(offset, min(offset + 10, self.size)))
            out += [Record(partition, o) for o in taken]
            self.at[partition] = offset + len(taken)
        return out

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.at[tp.partition]) for tp in partitions]


def spans(*partitions: int, size: int) -> dict[tuple[str, int], PartitionSpan]:
    return {("t", p): PartitionSpan(p, 0, size) for p in partitions}


def test_an_error_kafka_reports_on_a_partition_is_raised_with_its_reason() -> None:
    """It was skipped: the read waited out its timeout, then blamed the broker (a review)."""
    denied = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed")
    with pytest.raises(BrokerError, match="replay: t-0: Topic authorization failed"):
        list(read_together(Partitions(100, fails=denied), spans(0, size=100), what="replay",  # type: ignore[arg-type]
                           timeout_s=600))


def test_the_timeout_bounds_a_stall_of_the_broker_not_the_time_the_caller_spends_on_the_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replay scoring 1,000 records in 200 s failed after 4,000 of 5,000 with 'did not reach the
    end in 600s', the broker never slow (a review)."""
    clock = [0.0]
    monkeypatch.setattr(topic_range.time, "monotonic", lambda: clock[0])
    read: list[Any] = []
    for record in read_together(Partitions(5000), spans(0, size=5000), what="replay",  # type: ignore[arg-type]
                                timeout_s=600):
        read.append(record)
        clock[0] += 0.2  # the caller scoring it
    assert len(read) == 5000 and clock[0] == pytest.approx(1000.0)
