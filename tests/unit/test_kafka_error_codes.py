"""How a confluent-kafka exception is read: its error code, and what a refused commit means."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from services.core.errors import KafkaOperationError
from services.core.kafka.consumer import CommitRejected, Consumer
from services.core.kafka.error_kinds import kafka_code, kafka_message


def test_the_code_and_text_are_the_carried_errors_or_none() -> None:
    carried = KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, "not the leader"))
    assert kafka_code(carried) == KafkaError.NOT_LEADER_FOR_PARTITION
    assert kafka_message(carried) == "not the leader"
    bare = KafkaException("no error object")
    assert kafka_code(bare) is None
    assert kafka_message(bare) == "no error object"


class _Refusing:
    """Stands in for librdkafka's consumer at commit() only: raises what the broker answered."""

    def __init__(self, exc: KafkaException) -> None:
        self.exc = exc

    def commit(self, **_: object) -> None:
        raise self.exc


def _commit_raising(exc: KafkaException) -> KafkaOperationError:
    consumer = Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g"})
    real, consumer._consumer = consumer._consumer, _Refusing(exc)  # type: ignore[assignment]
    try:
        with pytest.raises(KafkaOperationError) as raised:
            consumer.commit([TopicPartition("t", 0, 5)])
        return raised.value
    finally:
        real.close()


@pytest.mark.parametrize("code", [KafkaError.REBALANCE_IN_PROGRESS, KafkaError.UNKNOWN_MEMBER_ID])
def test_a_commit_refused_for_a_rebalance_is_rejected_not_failed(code: int) -> None:
    assert isinstance(_commit_raising(KafkaException(KafkaError(code))), CommitRejected)


@pytest.mark.parametrize(("error", "retriable"), [
    (KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS), True),
    (KafkaError(KafkaError.UNKNOWN, retriable=True), True),
    (KafkaError(KafkaError.UNKNOWN), False),
    ("not a KafkaError", False),
])
def test_a_failed_commit_is_retriable_when_the_coordinator_is_only_away(error: object, retriable: bool) -> None:
    failure = _commit_raising(KafkaException(error))
    assert not isinstance(failure, CommitRejected)
    assert failure.retriable is retriable
