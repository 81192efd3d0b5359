"""What the producer wrapper hears of deliveries: failures always, successes only when asked."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from services.core.commits import AtLeastOnce, ExactlyOnce, TransactionAborted
from services.core.errors import DeliveryFailed, RecordTooLarge
from services.core.health import BrokerHealth
from services.core.kafka import Producer, create_topics, topic_limits
from services.core.settings import Topics

pytestmark = pytest.mark.kafka

# Above the broker's message.max.bytes (1 MiB by default) but within what the client lets through,
# so the broker itself refuses it: a failure only a delivery report can tell.
TOO_LARGE = {"message.max.bytes": 4_000_000, "compression.type": "none"}


def test_a_refused_record_is_reported_by_a_producer_that_hears_of_failures_only(
    config: dict[str, Any], topics: Topics
) -> None:
    producer = Producer({**config, **TOO_LARGE})
    producer.produce(topics.requests, b"fits", partition=0)
    producer.produce(topics.requests, os.urandom(2_000_000), partition=0)
    with pytest.raises(DeliveryFailed, match=topics.requests):
        producer.flush(30)
    assert producer.delivered_ends == {}  # no report of the record that went through


def test_a_producer_made_with_delivered_hears_of_every_delivery(config: dict[str, Any], topics: Topics) -> None:
    producer = Producer(config, delivered=True)
    done: list[int] = []
    for i in range(3):
        producer.produce(topics.requests, b"x", partition=1, on_done=lambda i=i: done.append(i))
    producer.flush(30)
    assert sorted(done) == [0, 1, 2]
    assert producer.delivered_ends[(topics.requests, 1)] >= 3


def test_on_done_needs_a_producer_made_with_delivered(config: dict[str, Any], topics: Topics) -> None:
    producer = Producer(config)
    with pytest.raises(ValueError, match="delivered=True"):
        producer.produce(topics.requests, b"x", on_done=lambda: None)


def test_a_record_refused_for_good_stops_at_least_once_with_the_reason_and_never_fails_a_later_produce(
    config: dict[str, Any], topics: Topics
) -> None:
    """Re-reading would only meet the refusal again (tests/unit/test_producer_loss.py: the
    transient case re-reads); the produce after it is not the one failed."""
    producer = Producer({**config, **TOO_LARGE})
    producer.produce(topics.requests, os.urandom(2_000_000), partition=0)
    producer.poll(10)  # the refusal is reported
    producer.produce(topics.requests, b"fits", partition=0)
    committer = AtLeastOnce(producer, None, lambda _what: None, BrokerHealth())  # type: ignore[arg-type]
    with pytest.raises(DeliveryFailed, match=f"delivery to {topics.requests} failed") as failed:
        committer.commit([], lambda: False)
    assert not isinstance(failed.value, TransactionAborted)


def test_a_record_refused_for_good_stops_exactly_once_with_the_reason_instead_of_re_reading_for_ever(
    config: dict[str, Any]
) -> None:
    """The transaction is aborted either way; re-reading would produce the same record and meet the
    same refusal, again and again: the reason is raised instead (the service stops saying it)."""
    topic = f"t{uuid.uuid4().hex[:10]}.small"
    create_topics(config, {topic: (1, {"max.message.bytes": "2000"})})
    producer = Producer({**config, "transactional.id": topic, "compression.type": "none"})
    committer = ExactlyOnce(producer, None, lambda _what: None, BrokerHealth())  # type: ignore[arg-type]
    committer.init()  # the first transaction is open
    producer.produce(topic, os.urandom(5_000), partition=0)
    with pytest.raises(DeliveryFailed, match=f"delivery to {topic} failed: Broker: Message size too large") as failed:
        committer.commit([], lambda: False)
    assert not isinstance(failed.value, TransactionAborted)


def test_records_for_a_topic_with_a_lower_limit_are_refused_at_once_and_batched_under_it(
    config: dict[str, Any]
) -> None:
    """The topic's max.message.bytes is read from the broker (a missing topic is left out); a
    record over it is refused before it is queued, and records that each fit are never batched
    into one the broker would refuse."""
    topic = f"t{uuid.uuid4().hex[:10]}.small"
    create_topics(config, {topic: (1, {"max.message.bytes": "2000"})})
    limits = topic_limits(config, [topic, f"{topic}.missing"])
    assert limits == {topic: 2000}
    producer = Producer({**config, "linger.ms": 200, "compression.type": "none"}, topic_limits=limits)
    with pytest.raises(RecordTooLarge, match=f"over what {topic} takes"):
        producer.produce(topic, os.urandom(1_990), partition=0)
    for _ in range(6):  # 6 x 1,500 bytes in one linger: one batch of ~9 KB without the limit
        producer.produce(topic, os.urandom(1_500), partition=0)
    producer.flush(30)  # raises if the broker refused any


def test_a_refusal_for_good_met_when_offsets_join_the_transaction_stops_exactly_once_too(
    config: dict[str, Any]
) -> None:
    """With input offsets to commit, the refusal can surface when they are added to the
    transaction: that path re-read into the same refusal for ever (seen with a comparison log
    whose max.message.bytes was below the record)."""
    from confluent_kafka import TopicPartition

    from services.core.kafka import Consumer
    from tests.integration.harness import wait_until

    topic = f"t{uuid.uuid4().hex[:10]}.small"
    create_topics(config, {topic: (1, {"max.message.bytes": "2000"})})
    producer = Producer({**config, "transactional.id": topic, "compression.type": "none"})
    consumer = Consumer({**config, "group.id": topic})
    committer = ExactlyOnce(producer, consumer, lambda _what: None, BrokerHealth())
    committer.init()
    producer.produce(topic, os.urandom(5_000), partition=0)
    wait_until(lambda: (producer.poll(0.1), producer.lasting_failure())[1] is not None, 30, "the refusal reported")
    group = consumer.native.consumer_group_metadata()
    with pytest.raises(DeliveryFailed, match="Message size too large") as failed:
        committer.commit([TopicPartition(topic, 0, 1)], lambda: False, group)
    assert not isinstance(failed.value, TransactionAborted)
    consumer.close()
