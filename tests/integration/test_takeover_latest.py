"""`--start-from latest` for a group that never committed (services/rendezvous/takeover.py): the
start is each partition's end when it was assigned, read from the broker, and it is committed
before anything is read, so that a next owner starts there too instead of at the end it finds."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition

from services.client.client import make_request
from services.core.codec import codec
from services.core.kafka import committed_offsets, group_lag, reader
from services.core.settings import Topics
from services.rendezvous.takeover import _ends
from tests.integration.harness import Services, read_topic, wait_until

pytestmark = pytest.mark.kafka

PARTITIONS = range(4)


def _produce_requests(config: dict[str, Any], topic: str, tag: str) -> set[str]:
    """One request per partition (no return address); their ids."""
    requests, producer, ids = codec("request"), Producer(config), set()
    for partition in PARTITIONS:
        record = make_request({"x": 1.0}, budget_ms=300, reply_topic=None, reply_partition=None,
                              request_id=f"{tag}-{partition}")
        producer.produce(topic, requests.encode(record), key=record["request_id"].encode(), partition=partition)
        ids.add(record["request_id"])
    producer.flush(10)
    return ids


def test_a_rendezvous_starting_at_latest_commits_where_it_started_and_answers_only_what_came_after(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    _produce_requests(config, topics.requests, "before")
    group = f"{prefix}rendezvous"
    # "absent" never scores: each request is answered TIMEOUT at its deadline.
    services.rendezvous(bootstrap, prefix, models=("absent",), start_from="latest", linger_ms=100)
    requests = [TopicPartition(topics.requests, p) for p in PARTITIONS]

    def started_committed() -> bool:
        return [tp.offset for tp in committed_offsets(config, group, requests, stable=False)] == [1] * len(requests)

    wait_until(started_committed, 60, "the start (the end when assigned) committed before any request is read")
    after = _produce_requests(config, topics.requests, "after")
    wait_until(lambda: group_lag(config, group, topics.requests) == 0, 60, "the later requests committed")
    answers = read_topic(config, topics.answers, expect=len(after), timeout=60, decode="answer")
    assert sorted(a["request_id"] for a in answers) == sorted(after), "only what came after the start answered"


def test_the_ends_at_assignment_are_asked_of_the_broker_and_one_it_does_not_tell_is_left_out(
    topics: Topics, config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    _produce_requests(config, topics.requests, "there")
    consumer = reader(config, "test-ends")
    try:
        ctx: Any = SimpleNamespace(consumer=SimpleNamespace(native=consumer))
        asked = [TopicPartition(topics.requests, 0), TopicPartition(topics.requests, 2),
                 TopicPartition(topics.requests, 9)]  # the topic has four partitions
        with caplog.at_level(logging.WARNING, logger="services.rendezvous.takeover"):
            ends = _ends(ctx, asked)
    finally:
        consumer.close()
    assert ends == {(topics.requests, 0): 1, (topics.requests, 2): 1}
    assert f"cannot read the end of {topics.requests}[9]" in caplog.text
