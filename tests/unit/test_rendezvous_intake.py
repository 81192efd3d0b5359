"""The rendezvous' bound on requests in flight (`--max-mailboxes`, service.py `_throttle`) with
stand-in consumer calls: it holds while a takeover still recovers some partitions."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from services.rendezvous.service import Rendezvous
from services.rendezvous.settings import RendezvousSettings
from tests.unit.test_join import request


class Consumer:
    def __init__(self, assignment: list[TopicPartition]):
        self._assignment = assignment
        self.paused: set[tuple[str, int]] = set()

    def assignment(self) -> list[TopicPartition]:
        return self._assignment

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def resume_in_place(self, partitions: list[TopicPartition]) -> None:
        self.resume(partitions)


def test_intake_is_bounded_while_one_partition_waits_for_its_recovery() -> None:
    """A partition whose outputs a transaction holds open stays pending (maybe until an operator
    acts) while the others flow: the bound on requests in flight was off all that time."""
    service = Rendezvous(RendezvousSettings(max_mailboxes=2, models=("champion",)))
    requests, scores = service.topics.requests, service.topics.scores
    consumer = Consumer([TopicPartition(t, p) for t in (requests, scores) for p in range(4)])
    service._ctx = SimpleNamespace(consumer=consumer, draining=False)  # type: ignore[assignment]
    service.takeover._pending = [TopicPartition(requests, 1), TopicPartition(scores, 1)]
    consumer.paused = {(requests, 1), (scores, 1)}  # as the takeover paused them
    for rid in ("a", "b"):
        service.join.on_request(request(rid))

    service._throttle()

    assert service._paused
    assert consumer.paused == {(requests, p) for p in range(4)} | {(scores, 1)}  # scores never paused
    for rid in ("a", "b"):
        service.join.mailboxes.pop(rid)
    service._throttle()
    # Resumed, but not the partition still being recovered: the takeover resumes it when done.
    assert not service._paused and consumer.paused == {(requests, 1), (scores, 1)}


def test_a_failed_clock_record_is_counted_as_one_not_as_a_reply() -> None:
    """Clock records go through the replies' producer: a failed one was counted as a reply that
    failed, and the scores topic was 'forgotten' as if it were a return address (a review)."""
    from confluent_kafka import KafkaError, Message

    from services.rendezvous import metrics as m

    service = Rendezvous(RendezvousSettings(models=("champion",)))
    forgotten: list[str] = []
    service._replies = SimpleNamespace(forget=forgotten.append)  # type: ignore[assignment]
    clock_failures = m.CLOCK_RECORD_FAILURES._value.get()
    reply_failures = m.REPLY_ERRORS.labels("delivery")._value.get()
    service._on_reply_failure(Message(topic=service.topics.scores, partition=2), KafkaError(KafkaError._MSG_TIMED_OUT))
    assert m.CLOCK_RECORD_FAILURES._value.get() == clock_failures + 1
    assert m.REPLY_ERRORS.labels("delivery")._value.get() == reply_failures and forgotten == []
    service._on_reply_failure(Message(topic="rdv.replies.a", partition=0), KafkaError(KafkaError._MSG_TIMED_OUT))
    assert m.REPLY_ERRORS.labels("delivery")._value.get() == reply_failures + 1 and forgotten == ["rdv.replies.a"]


def test_answers_failing_to_a_deleted_return_address_are_said_once_a_minute_with_how_many(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """~530 identical lines came at once when a client's return address was deleted under a flow
    of requests (a review); the counter still counts each."""
    from confluent_kafka import KafkaError, Message

    from services.rendezvous import metrics as m

    service = Rendezvous(RendezvousSettings(models=("champion",)))
    service._replies = SimpleNamespace(forget=lambda _topic: None)  # type: ignore[assignment]
    clock = [0.0]
    service._reply_failures.clock = lambda: clock[0]
    failures = m.REPLY_ERRORS.labels("delivery")._value.get()
    gone = KafkaError(KafkaError._UNKNOWN_TOPIC)
    with caplog.at_level(logging.WARNING, logger="services.rendezvous.service"):
        for _ in range(530):
            service._on_reply_failure(Message(topic="rdv.replies.a", partition=0), gone)
        clock[0] = 61.0
        service._on_reply_failure(Message(topic="rdv.replies.a", partition=0), gone)
    lines = [r.getMessage() for r in caplog.records if "answer to return address" in r.getMessage()]
    assert len(lines) == 2 and lines[0].startswith("answer to return address rdv.replies.a failed: ")
    assert lines[1].endswith("(529 more answers failed in the last 61 s)")
    assert m.REPLY_ERRORS.labels("delivery")._value.get() == failures + 531


def test_failed_answers_held_back_are_summed_up_once_the_minute_is_over_though_none_follows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Said only with the next failure, a burst that then stopped was never summed up (a review)."""
    from confluent_kafka import KafkaError, Message

    service = Rendezvous(RendezvousSettings(models=("champion",)))
    service._replies = SimpleNamespace(forget=lambda _topic: None)  # type: ignore[assignment]
    clock = [0.0]
    service._reply_failures.clock = lambda: clock[0]
    with caplog.at_level(logging.WARNING, logger="services.rendezvous.service"):
        gone = KafkaError(KafkaError._UNKNOWN_TOPIC)
        for _ in range(40):
            service._on_reply_failure(Message(topic="rdv.replies.a", partition=0), gone)
        service._say_held_reply_failures()  # within the minute: nothing yet
        clock[0] = 60.0
        service._say_held_reply_failures()
        service._say_held_reply_failures()  # said once
    lines = [r.getMessage() for r in caplog.records if "return address" in r.getMessage()]
    assert len(lines) == 2 and lines[1] == "39 more answers to return addresses failed in the last 60 s"


def test_a_resumed_intake_is_sought_to_where_it_was_so_librdkafka_fetches_it_again() -> None:
    """A resume soon after a pause can leave a partition not fetched (librdkafka #2190, #5591): a
    flood test once saw a resumed intake's 2,522 requests unread for 3 minutes. Each partition
    with a position is sought to it after the resume (the workaround); one without is only resumed."""
    from services.core.kafka import Consumer as KafkaConsumer

    calls: list[tuple[str, Any]] = []

    class Native:
        def resume(self, partitions: list[TopicPartition]) -> None:
            calls.append(("resume", [(tp.topic, tp.partition) for tp in partitions]))

        def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
            return [TopicPartition(tp.topic, tp.partition, {0: 40, 1: -1001}[tp.partition]) for tp in partitions]

        def seek(self, tp: TopicPartition) -> None:
            calls.append(("seek", (tp.topic, tp.partition, tp.offset)))

    consumer = KafkaConsumer.__new__(KafkaConsumer)
    consumer._consumer = Native()  # type: ignore[assignment]
    consumer.resume_in_place([TopicPartition("rdv.requests", 0), TopicPartition("rdv.requests", 1)])
    assert calls == [("resume", [("rdv.requests", 0), ("rdv.requests", 1)]), ("seek", ("rdv.requests", 0, 40))]
