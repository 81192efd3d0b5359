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


# A record for a topic that does not exist waits for a leader until its message.timeout.ms, the
# broker answering all along: as a record does for a partition librdkafka lost the leader of for
# good after a broker restart (issue #5430), which no test can bring about at will.
QUICK_TIMEOUT = {"message.timeout.ms": 1500}


def _nowhere() -> str:
    return f"t{uuid.uuid4().hex[:10]}.missing"


def test_a_producer_whose_record_timed_out_while_the_broker_answers_replaces_its_client(
    config: dict[str, Any], topics: Topics
) -> None:
    from services.core.metrics import PRODUCERS_REPLACED
    from tests.integration.harness import wait_until

    replaced = PRODUCERS_REPLACED.labels("timed_out")
    before = replaced._value.get()
    producer = Producer({**config, **QUICK_TIMEOUT})
    stuck = producer.native
    producer.produce(_nowhere(), b"lost", partition=0)
    wait_until(lambda: (stuck.poll(0.1), producer.timed_out)[1], 30, "the record's timeout reported")
    with pytest.raises(DeliveryFailed, match="Message timed out"):
        producer.flush(1)
    producer.produce(topics.requests, b"after", partition=0)  # on a new client
    producer.flush(30)
    assert producer.native is not stuck and not producer.timed_out
    assert replaced._value.get() == before + 1


def test_a_record_still_queued_in_a_replaced_client_is_sent_by_the_new_one_and_reported_once(
    config: dict[str, Any]
) -> None:
    """It was never sent (purged from the old client): the new client sends it, and its caller
    hears of it once, when the new client has it delivered (a reply, a score, a request)."""
    from tests.integration.harness import read_topic, wait_until

    topic = _nowhere()
    done: list[str] = []
    producer = Producer({**config, "message.timeout.ms": 60_000}, delivered=True)
    producer.produce(topic, b"queued", partition=0, on_done=lambda: done.append("queued"))  # waits for a leader
    stuck = producer.native
    producer._stuck = True  # as a timeout of one of its records would have set
    producer.poll(0)  # replaced here
    wait_until(lambda: (producer.poll(0.1), len(stuck) == 0 and not producer._retiring)[1], 30,
               "the old client let go, its record taken back")
    assert producer.native is not stuck and producer.pending() == 1 and done == []
    create_topics(config, {topic: (1, {})})
    producer.flush(60)
    assert done == ["queued"]
    assert [m.value() for m in read_topic(config, topic, expect=1)] == [b"queued"]


def test_an_exactly_once_output_that_timed_out_replaces_the_transactional_producer(
    config: dict[str, Any], topics: Topics
) -> None:
    """Aborting and re-reading alone would time out again every transaction if the client
    itself is stuck; the new one (same transactional id) commits."""
    from tests.integration.harness import read_topic

    producer = Producer({**config, "transactional.id": f"stuck-{uuid.uuid4().hex[:8]}",
                         "transaction.timeout.ms": 1500})
    committer = ExactlyOnce(producer, None, lambda _what: None, BrokerHealth())  # type: ignore[arg-type]
    committer.init()
    stuck = producer.native
    producer.produce(_nowhere(), b"lost", partition=0)
    with pytest.raises(TransactionAborted, match="an output timed out undelivered"):
        committer.commit([], lambda: False)
    assert producer.native is not stuck
    topic = f"t{uuid.uuid4().hex[:10]}.after"
    create_topics(config, {topic: (1, {})})
    producer.produce(topic, b"after", partition=0)
    assert committer.commit([], lambda: False)
    assert [m.value() for m in read_topic(config, topic, expect=1)] == [b"after"]
