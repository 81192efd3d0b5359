"""A new owner must not scan for finished requests while a transaction is still open on the
outputs: that transaction's answers lie beyond the last stable offset, unseen by the scan, and
would go out twice if it committed after the scan (recovery.py, `OpenTransaction`).

A previous owner, still alive (so never fenced), has committed the answers to the first request
of each partition with the offsets past them; the answers to the second are in a transaction it
has not committed yet when the new owner takes over. It commits once the new owner has scanned
(the old behaviour) or is waiting for it (the fixed one): either way, every request must end
up answered exactly once."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Producer, TopicPartition

from services.client.client import make_request
from services.core.codec import codec
from services.core.control_records import is_control_record
from services.core.kafka import group_lag, reader
from services.core.runtime import now_ms
from services.core.settings import Topics
from tests.integration.harness import Services, read_topic, send_offsets_as_member, wait_until

pytestmark = pytest.mark.kafka

PARTITIONS = range(4)
PER_PARTITION = 2


def _produce_requests(config: dict[str, Any], topic: str, tag: str, budget_ms: int) -> list[dict[str, int]]:
    """Two requests per partition (no return address): per position in their partition, ids -> partition."""
    requests, producer = codec("request"), Producer(config)
    rounds: list[dict[str, int]] = [{} for _ in range(PER_PARTITION)]
    for partition in PARTITIONS:
        for n in range(PER_PARTITION):
            record = make_request({"x": 1.0}, budget_ms=budget_ms, reply_topic=None, reply_partition=None,
                                  request_id=f"{tag}-{partition}-{n}")
            producer.produce(topic, requests.encode(record), key=record["request_id"].encode(), partition=partition)
            rounds[n][record["request_id"]] = partition
    producer.flush(10)
    return rounds


def _answer(request_id: str) -> dict[str, Any]:
    at = now_ms()
    return {"request_id": request_id, "status": "TIMEOUT", "model": None, "version": None, "score": None,
            "label": None, "reason": "answered by the previous owner", "created_at": at, "deadline": at,
            "answered_at": at, "schedule": "default", "schedule_version": 1}


def _previous_owner(config: dict[str, Any], topics: Topics, group: str, rounds: list[dict[str, int]]) -> Producer:
    """The first round answered and committed with the offsets past it; the second answered in a
    transaction left open."""
    first, second = rounds
    owner = Producer({**config, "transactional.id": f"previous-{uuid.uuid4().hex}", "transaction.timeout.ms": 120_000})
    owner.init_transactions(30)
    owner.begin_transaction()
    _produce_answers(owner, topics.answers, first)
    send_offsets_as_member(owner, config, group, [TopicPartition(topics.requests, p, 1) for p in PARTITIONS])
    owner.commit_transaction(30)
    owner.begin_transaction()
    _produce_answers(owner, topics.answers, second)
    owner.flush(10)
    return owner


def _produce_answers(producer: Producer, topic: str, ids: dict[str, int]) -> None:
    answers = codec("answer")
    for request_id, partition in ids.items():
        producer.produce(topic, answers.encode(_answer(request_id)), key=request_id.encode(), partition=partition)


def test_a_new_owner_waits_for_a_transaction_open_on_the_answers_and_answers_nothing_twice(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="services.rendezvous")
    rounds = _produce_requests(config, topics.requests, "first", budget_ms=1_000)
    owner = _previous_owner(config, topics, f"{prefix}rendezvous", rounds)
    first = {rid: p for ids in rounds for rid, p in ids.items()}

    # "absent" never scores: the rendezvous answers TIMEOUT, so any answer it gives is visible.
    services.rendezvous(bootstrap, prefix, models=("absent",), instance="new-owner", linger_ms=100)

    def scanned_or_waiting() -> bool:
        return any("transaction is still open" in m or m.startswith("recovery:") for m in caplog.messages)

    wait_until(scanned_or_waiting, 60, "the new owner's recovery to scan or to wait")
    owner.commit_transaction(30)

    later_rounds = _produce_requests(config, topics.requests, "later", budget_ms=300)
    later = {rid: p for ids in later_rounds for rid, p in ids.items()}
    # Every request finished (answered, logged) and committed by the new owner: any answer it
    # gave again is committed too by then.
    wait_until(lambda: group_lag(config, f"{prefix}rendezvous", topics.requests) == 0, 60, "all requests committed")
    answers = read_topic(config, topics.answers, expect=len(first) + len(later), timeout=90, decode="answer")
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer["request_id"]] = counts.get(answer["request_id"], 0) + 1
    assert {rid: counts.get(rid, 0) for rid in first} == dict.fromkeys(first, 1), "the first requests answered once"
    assert {rid: counts.get(rid, 0) for rid in later} == dict.fromkeys(later, 1), "the later requests answered"
    reasons = {a["reason"] for a in answers if a["request_id"] in first}
    assert reasons == {"answered by the previous owner"}
    assert any("transaction is still open" in m for m in caplog.messages), "recovery said what it waited for"


def test_a_transaction_open_on_one_partitions_answers_holds_back_that_partition_alone(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every rebalance makes all of an instance's partitions pending (the range assignor is eager):
    a transaction open on one partition's answers kept every other partition paused too. The
    previous owner committed the first round everywhere and has the second round's answer of
    partition 1 alone in a transaction still open: the new owner answers the second round of the
    other partitions meanwhile, and partition 1's once the transaction ends, nothing twice."""
    caplog.set_level(logging.DEBUG, logger="services.rendezvous")
    first, second = _produce_requests(config, topics.requests, "held", budget_ms=300)
    owner = _previous_owner(config, topics, f"{prefix}rendezvous", [first, {}])
    held = {rid: p for rid, p in second.items() if p == 1}
    _produce_answers(owner, topics.answers, held)
    owner.flush(10)
    elsewhere = {rid for rid, p in second.items() if p != 1}

    rendezvous = services.rendezvous(bootstrap, prefix, models=("absent",), instance="new-owner", linger_ms=100)
    wait_until(lambda: any("transaction is still open" in m for m in caplog.messages), 60,
               "the new owner's recovery to find the transaction open")
    seen = _answered_on(config, topics.answers, [p for p in PARTITIONS if p != 1], elsewhere)
    assert seen >= elsewhere, "the other partitions answered while the transaction was open"
    assert rendezvous.takeover.is_pending(TopicPartition(topics.requests, 1)), "partition 1 still held"
    assert not any(rendezvous.takeover.is_pending(TopicPartition(topics.requests, p)) for p in (0, 2, 3))

    owner.commit_transaction(30)
    wait_until(lambda: group_lag(config, f"{prefix}rendezvous", topics.requests) == 0, 60, "all requests committed")
    expected = len(first) + len(second)
    answers = read_topic(config, topics.answers, expect=expected, timeout=90, decode="answer")
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer["request_id"]] = counts.get(answer["request_id"], 0) + 1
    assert counts == dict.fromkeys([*first, *second], 1), "every request answered once"
    by_previous = {a["request_id"] for a in answers if a["reason"] == "answered by the previous owner"}
    assert by_previous == {*first, *held}


def _answered_on(config: dict[str, Any], topic: str, partitions: list[int], ids: set[str]) -> set[str]:
    """The request ids answered on `partitions` (read committed) once `ids` are among them."""
    answers, seen = codec("answer"), set()
    consumer = reader(config, "test-reader")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

    def all_seen() -> bool:
        for msg in consumer.consume(100, 0.2):
            if msg.error() is None and msg.value() is not None and not is_control_record(msg):
                seen.add(answers.decode(msg.value())["request_id"])
        return ids <= seen

    try:
        wait_until(all_seen, 60, f"answers to {sorted(ids)}")
    finally:
        consumer.close()
    return seen
