"""The rendezvous' bound on requests in flight (`--max-mailboxes`, service.py `_throttle`) with
stand-in consumer calls: it holds while a takeover still recovers some partitions."""

from __future__ import annotations

from types import SimpleNamespace

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
