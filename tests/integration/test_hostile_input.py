"""Hostile and careless input never stops a service (regressions of what probing found)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer

from services.client.client import Client, make_request
from services.core.codec import codec
from services.core.deadletter import DEFAULT_EXCERPT_BYTES, KEY_BYTES
from services.core.errors import RecordTooLarge
from services.core.kafka import create_topics
from services.core.requests import MAX_REQUEST_ID
from services.core.settings import Topics
from services.model_worker.models import demo_rows
from tests.integration.harness import Services, read_topic

pytestmark = pytest.mark.kafka

# Just under librdkafka's default message.max.bytes (1,000,000): the broker takes it as it is,
# but a dead letter wrapping all of it would not fit.
POISON_BYTES = 990_000


def test_a_record_near_the_size_limit_is_dead_lettered_as_an_excerpt_and_the_stream_goes_on(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    worker = services.worker(bootstrap, prefix, "demo:champion", dead_letter=True)
    rendezvous = services.rendezvous(bootstrap, prefix, models=("champion",))
    requests = codec("request")
    producer = Producer(config)
    poison = os.urandom(POISON_BYTES)
    long_key = b"k" * 1000
    producer.produce(topics.requests, poison, key=long_key, partition=0)
    good_ids = []
    for row in demo_rows(20, seed=3):
        record = make_request(row, budget_ms=20_000, reply_topic=None, reply_partition=None)
        good_ids.append(record["request_id"])
        producer.produce(topics.requests, requests.encode(record), key=record["request_id"])
    assert producer.flush(30) == 0

    answers = read_topic(config, topics.answers, expect=20, decode="answer")
    assert sorted(a["request_id"] for a in answers) == sorted(good_ids)
    assert {a["status"] for a in answers} == {"OK"}
    # One dead letter from the rendezvous, one from the worker (it was asked to dead-letter too).
    dead = read_topic(config, topics.deadletter, expect=2, decode="deadletter")
    assert sorted(d["service"] for d in dead) == ["model_worker", "rendezvous"]
    for letter in dead:
        assert letter["truncated"] is True
        assert letter["value_size"] == POISON_BYTES
        assert letter["value"] == poison[: len(letter["value"])]
        assert 0 < len(letter["value"]) <= DEFAULT_EXCERPT_BYTES
        assert letter["key"] == long_key[:KEY_BYTES]
        assert (letter["source_topic"], letter["source_partition"]) == (topics.requests, 0)
        assert "object at 0x" not in letter["reason"]
    assert worker.scored == 20 and rendezvous.answered == 20


def test_a_request_reusing_a_known_id_with_other_features_gets_an_error_not_the_first_answer(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    """Whoever sends an id first decided the answer of any request sent under it later, a
    different one included (a guessed id: docs/security.md). A true retry still gets the answer."""
    services.worker(bootstrap, prefix, "demo:champion")
    services.rendezvous(bootstrap, prefix, models=("champion",))
    requests = codec("request")
    producer = Producer(config)
    first = make_request(demo_rows(1, seed=5)[0], budget_ms=20_000, reply_topic=topics.replies, reply_partition=0)
    other = {**first, "features": {name: value + 1.0 for name, value in first["features"].items()}}
    for record in (first, other, first):
        producer.produce(topics.requests, requests.encode(record), key=first["request_id"])
        assert producer.flush(30) == 0

    replies = read_topic(config, topics.replies, expect=3, decode="answer")
    assert [r["request_id"] for r in replies] == [first["request_id"]] * 3
    refused = [r for r in replies if r["status"] == "ERROR"]
    answered = [r for r in replies if r["status"] != "ERROR"]  # the first's and its retry's, in either order
    assert len(refused) == 1 and "already used by a request with other features" in refused[0]["reason"]
    assert len(answered) == 2 and answered[0] == answered[1] and answered[0]["status"] == "OK"
    assert read_topic(config, topics.answers, expect=1, decode="answer") == [answered[0]]


def _score(request_id: str, model: str, label: str) -> dict[str, Any]:
    return {"request_id": request_id, "model": model, "version": "forged", "instance": "", "score": 0.5,
            "label": label, "error": None, "deadline": 0, "received_at": 0, "scored_at": 0, "compute_ms": 0.1}


def test_records_whose_outputs_could_not_be_written_as_they_are_never_stall_the_rendezvous(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    """Each of these once stopped the rendezvous for good: a return address with a NUL (the
    service died, and again on the re-read); an id too long for its answer to be written, and
    scores whose comparison record is over Kafka's record size (the mailbox never closed, so the
    partition's offsets never moved; such labels are refused as they are read now, and a record
    over a topic's own limit is cut: the next test). Requests after them on the same partition
    are answered."""
    rendezvous = services.rendezvous(bootstrap, prefix, models=("champion", "challenger"))
    requests, scores = codec("request"), codec("score")
    producer = Producer(config)
    row = demo_rows(1, seed=4)[0]

    def send(record: dict[str, Any]) -> str:
        producer.produce(topics.requests, requests.encode(record), partition=0)
        return str(record["request_id"])

    nul = send(make_request(row, budget_ms=1_000, reply_topic="replies\x00x", reply_partition=None))
    # An id over the limit: the client refuses to send one; another producer may.
    send({**make_request(row, budget_ms=20_000, reply_topic=None, reply_partition=None),
          "request_id": "r" * (MAX_REQUEST_ID + 1)})
    big = send(make_request(row, budget_ms=1_000, reply_topic=None, reply_partition=None))
    for model in ("champion", "challenger"):  # 600 KB labels: each Score fits, their comparison record would not
        producer.produce(topics.scores, scores.encode(_score(big, model, "x" * 600_000)), partition=0)
    after = send(make_request(row, budget_ms=1_000, reply_topic=None, reply_partition=None))
    assert producer.flush(30) == 0

    answers = {a["request_id"]: a for a in read_topic(config, topics.answers, expect=3, decode="answer")}
    assert set(answers) == {nul, big, after}
    assert answers[big]["status"] == answers[after]["status"] == "TIMEOUT"  # no worker runs: decided in turn
    logged = {r["request_id"]: r for r in read_topic(config, topics.log, expect=3, decode="comparison")}
    assert logged[big]["outputs"] == []  # its scores were refused as they were read
    dead = read_topic(config, topics.deadletter, expect=3, decode="deadletter")
    reasons = [d["reason"] for d in dead]
    assert sum(f"request_id of {MAX_REQUEST_ID + 1} characters" in r for r in reasons) == 1, reasons
    assert sum("a score with a label of 600000 characters (at most 1024)" in r for r in reasons) == 2, reasons
    assert rendezvous.answered == 3


def test_a_request_the_broker_refuses_fails_its_own_caller_not_the_next_one(
    bootstrap: str, config: dict[str, Any]
) -> None:
    """A refused request used to be raised by the next, unrelated `submit` (a gateway answered
    that call 503) while its own caller waited out its deadline."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    topics = Topics.from_prefix(prefix)
    create_topics(config, {topics.requests: (1, {"max.message.bytes": "2000"}), topics.replies: (1, {})})
    # The client's own limit is higher than the topic's: the broker refuses, after the send.
    with Client({**config, "message.max.bytes": 2_000_000}, topics, budget_ms=5_000, reply_partition=0) as client:
        big = client.submit({os.urandom(8).hex(): float(i) for i in range(1000)})  # ~25 KB, compressed or not
        # Refused for its size: a RecordTooLarge (the gateway's 413), not a retriable broker error.
        with pytest.raises(RecordTooLarge, match="too large for"):
            big.result(timeout=30)
        small = client.submit({"f": 1.0})  # raises nothing: the failure was its caller's
        assert not small.done()


def test_an_output_over_its_topics_own_limit_is_cut_to_fit_not_a_stop(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    """A comparison log whose max.message.bytes is set below the producer's limit: a comparison
    record over it once stopped the rendezvous (exactly once, the broker refuses it for good), and
    again on the request re-read after every restart. The topic's limit is read at start: the
    record is written with its strings cut, and the stream goes on."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    from services.core.kafka import admin

    entry = ConfigEntry("max.message.bytes", "3800", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topics.log, incremental_configs=[entry])
    client = admin(config)  # referenced until the answer is in: a collected client cancels it
    for future in client.incremental_alter_configs([resource]).values():
        future.result(30)
    rendezvous = services.rendezvous(bootstrap, prefix, models=("champion", "challenger"))
    requests, scores = codec("request"), codec("score")
    producer = Producer(config)
    row = demo_rows(1, seed=5)[0]
    ids = []
    for _ in range(2):
        record = make_request(row, budget_ms=20_000, reply_topic=None, reply_partition=None)
        producer.produce(topics.requests, requests.encode(record), partition=1)
        ids.append(record["request_id"])
    big, after = ids
    # Errors of 1,000 characters (as long as a score's may be) from both models: the answer's reason
    # quotes both (≈ 2,060 characters); the comparison record (≈ 4.3 kB) is over the log's 3,800
    # bytes, and fits with its strings cut to 1,024 characters (≈ 3.3 kB).
    error = os.urandom(500).hex()
    for model in ("champion", "challenger"):
        producer.produce(topics.scores, scores.encode({**_score(big, model, ""), "score": None, "label": None,
                                                       "error": error}), partition=1)
        producer.produce(topics.scores, scores.encode(_score(after, model, "fine")), partition=1)
    assert producer.flush(30) == 0

    answers = {a["request_id"]: a for a in read_topic(config, topics.answers, expect=2, decode="answer")}
    assert answers[big]["status"] == "ERROR" and answers[big]["reason"].count(error) == 2
    assert answers[after]["label"] == "fine"
    logged = {r["request_id"]: r for r in read_topic(config, topics.log, expect=2, decode="comparison")}
    assert len(logged[big]["reason"]) == MAX_REQUEST_ID and [o["error"] for o in logged[big]["outputs"]] == [error] * 2
    assert [o["label"] for o in logged[after]["outputs"]] == ["fine"] * 2
    assert rendezvous.logged == 2
