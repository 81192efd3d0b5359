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


def test_a_topic_the_metadata_lacks_is_asked_about_once_for_all_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whether it is missing or refused to the principal: one describe per missing topic, each
    waiting 10 s, made a start with six topics and a broker gone wait a minute (a review)."""
    from concurrent.futures import Future
    from types import SimpleNamespace

    from confluent_kafka import KafkaException

    from services.core import kafka
    from services.core.errors import TopicMissing, TopicRefused

    asked: list[tuple[list[str], float]] = []

    def refused_or_unknown(topic: str) -> Future[None]:
        future: Future[None] = Future()
        code = KafkaError.TOPIC_AUTHORIZATION_FAILED if topic == "p.log" else KafkaError.UNKNOWN_TOPIC_OR_PART
        future.set_exception(KafkaException(KafkaError(code)))
        return future

    class Admin:
        def describe_topics(self, topics: Any, request_timeout: float) -> dict[str, Future[None]]:
            asked.append((list(topics.topic_names), request_timeout))
            return {t: refused_or_unknown(t) for t in topics.topic_names}

    monkeypatch.setattr(kafka.topics, "wait_for_broker", lambda _config, _timeout=None: SimpleNamespace(topics={}))
    monkeypatch.setattr(kafka.topics, "admin", lambda _config: Admin())
    with pytest.raises(TopicRefused, match=r"not authorized to describe topic\(s\) p\.log at b:9092"):
        kafka.partition_counts({"bootstrap.servers": "b:9092"}, ["p.log", "p.nope", "p.other"], timeout=3.0)
    assert asked == [(["p.log", "p.nope", "p.other"], 3.0)]
    with pytest.raises(TopicMissing, match=r"missing topic\(s\) p\.nope at b:9092; create them"):
        kafka.partition_counts({"bootstrap.servers": "b:9092"}, ["p.nope"], timeout=30.0)
    assert asked[-1] == (["p.nope"], 10.0)  # at most 10 s for the question
