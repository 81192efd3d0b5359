"""What the producer wrapper hears of deliveries: failures always, successes only when asked."""

from __future__ import annotations

import os
from typing import Any

import pytest

from services.core.commits import AtLeastOnce, TransactionAborted
from services.core.errors import DeliveryFailed
from services.core.health import BrokerHealth
from services.core.kafka import Producer
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


def test_lost_outputs_make_at_least_once_re_read_and_never_fail_a_later_produce(
    config: dict[str, Any], topics: Topics
) -> None:
    """Records the producer gave up on (here: refused as too large; in a long outage: timed out)
    void the work since the last commit: its offsets must not be committed, and the service
    re-reads instead of stopping. The next produce is not failed by them."""
    producer = Producer({**config, **TOO_LARGE})
    producer.produce(topics.requests, os.urandom(2_000_000), partition=0)
    producer.poll(10)  # the refusal is reported
    producer.produce(topics.requests, b"fits", partition=0)
    committer = AtLeastOnce(producer, None, lambda _what: None, BrokerHealth())  # type: ignore[arg-type]
    with pytest.raises(TransactionAborted, match="re-reading from the committed offsets"):
        committer.commit([], lambda: False)
    assert committer.commit([], lambda: False)  # reported once: the re-read work commits as usual
