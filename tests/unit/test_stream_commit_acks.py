"""At least once, the skeleton's offset commits from the poll loop are asynchronous: a position is
committed when the broker acknowledges it (librdkafka's commit callback), not when it is sent.
Driven through the real StreamService.run with a stand-in consumer that answers commits as
librdkafka does: on a later consume()."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, TopicPartition

from services.core import service as service_module
from services.core.service import SimpleHandler, StreamService, StreamSpec

PASSES = 12  # poll-loop passes before the stop flag is raised (each pass asks for a commit)


class Broker:
    """What the group coordinator holds, and how it answers the commits sent to it."""

    def __init__(self, failures: int) -> None:
        self.failures = failures  # the first `failures` asynchronous commits are refused
        self.committed: dict[tuple[str, int], int] = {}
        self.async_commits: list[list[int]] = []

    def answer(self, offsets: list[TopicPartition]) -> KafkaError | None:
        if self.failures > 0:
            self.failures -= 1
            return KafkaError(KafkaError.REQUEST_TIMED_OUT, "OffsetCommit timed out", retriable=True)
        self.committed.update({(tp.topic, tp.partition): tp.offset for tp in offsets})
        return None


class StandInConsumer:
    """The wrapper's surface (services/core/kafka/consumer.py, Consumer) over a scripted group: the first
    consume assigns in[0] and returns five records; asynchronous commits are answered through the
    config's on_commit on the next consume, as librdkafka serves its callbacks."""

    def __init__(self, config: dict[str, Any], broker: Broker) -> None:
        self.on_commit = config.get("on_commit")
        self.broker = broker
        self.native = NativeConsumer(self)
        self.assigned: list[TopicPartition] = []
        self.answers: list[tuple[KafkaError | None, list[TopicPartition]]] = []
        self._on_assign: Any = None

    def subscribe(self, _topics: list[str], on_assign: Any = None, **_callbacks: Any) -> None:
        self._on_assign = on_assign

    def consume(self, *_args: Any) -> list[Message]:
        answers, self.answers = self.answers, []
        for err, offsets in answers:
            if self.on_commit is not None:
                self.on_commit(err, offsets)
        if not self.assigned:
            self._on_assign(self, [TopicPartition("in", 0)])
            return [Message(topic="in", partition=0, offset=o, value=b"r") for o in range(5)]
        return []

    def commit(self, offsets: list[TopicPartition]) -> None:
        """Synchronous (the revoke's, the drain's): committed when it returns."""
        self.broker.committed.update({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = list(partitions)

    def assignment(self) -> list[TopicPartition]:
        return self.assigned

    def pause(self, _partitions: list[TopicPartition]) -> None:
        return None

    def close(self) -> None:
        return None


class NativeConsumer:
    """confluent-kafka's consumer as AtLeastOnce.finish calls it from the loop."""

    def __init__(self, wrapper: StandInConsumer) -> None:
        self.wrapper = wrapper

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous, "the loop's commits are asynchronous"
        self.wrapper.broker.async_commits.append([tp.offset for tp in offsets])
        err = self.wrapper.broker.answer(offsets)
        self.wrapper.answers.append((err, [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in offsets]))


class Reader(SimpleHandler):
    """Finishes what it reads; raises the stop flag after `passes` passes of the poll loop."""

    def __init__(self, passes: int, stop: threading.Event) -> None:
        super().__init__()
        self.passes, self.stop = passes, stop

    def on_batch(self, messages: list[Message]) -> None:
        self.positions.advance(messages)

    def on_tick(self) -> None:
        self.passes -= 1
        if self.passes <= 0:
            self.stop.set()


def _run(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "Consumer", lambda config: StandInConsumer(config, broker))
    monkeypatch.setattr(service_module, "wait_for_broker", lambda *_args: None)
    monkeypatch.setattr(service_module, "tune_gc", lambda: None)
    stop = threading.Event()
    # durable: the commit lane runs on the loop's thread, so every pass does the same steps.
    spec = StreamSpec(name="svc", config={}, subscription=["in"], group_id="g", processing="durable",
                      producer=False, commit_interval_ms=0, max_wait_s=0.0)
    StreamService(spec, Reader(PASSES, stop)).run(stop)


def test_a_position_whose_asynchronous_commit_failed_is_committed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The position was marked committed when its commit was sent: refused by the broker (a timeout,
    a coordinator moving), it was never sent again while its partition stayed quiet, and the next
    owner re-read those records (duplicates, at least once)."""
    broker = Broker(failures=1)
    _run(broker, monkeypatch)
    assert broker.async_commits == [[5], [5]]  # refused, then sent again by the loop (not left to a drain)
    assert broker.committed == {("in", 0): 5}


def test_a_position_is_sent_once_while_its_acknowledgement_is_awaited_and_not_again_once_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unanswered, it is not sent again by the passes that follow (every pass asks for a commit here)."""
    broker = Broker(failures=0)
    _run(broker, monkeypatch)
    assert broker.async_commits == [[5]] and broker.committed == {("in", 0): 5}


def test_refused_commits_in_a_row_are_one_warning_that_counts_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every refused asynchronous commit was a warning: one per commit interval (100 ms) for as long
    as the coordinator was away."""
    broker = Broker(failures=5)
    with caplog.at_level("WARNING", logger=service_module.log.name):
        _run(broker, monkeypatch)
    warnings = [r.getMessage() for r in caplog.records if "offset commit failed" in r.getMessage()]
    assert len(broker.async_commits) == 6 and broker.committed == {("in", 0): 5}
    assert warnings == ["svc: offset commit failed (OffsetCommit timed out; 1 failed since the last warning): "
                        "sent again with the next commit"]
