"""Bad input is dead-lettered with a reason; an outside client talks from schemas/ alone."""

from __future__ import annotations

import io
import json
import struct
import uuid
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from fastavro.schema import fingerprint, to_parsing_canonical_form

from services.client.client import make_request
from services.core.codec import codec
from services.core.settings import Topics
from services.model_worker.models import demo_rows
from tests.integration.harness import Services, read_topic

pytestmark = pytest.mark.kafka

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_garbage_and_wrong_schema_are_dead_lettered_while_good_requests_flow(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    services.worker(bootstrap, prefix, "demo:champion")
    services.rendezvous(bootstrap, prefix, models=("champion",))
    requests = codec("request")
    score_bytes = codec("score").encode({
        "request_id": "x", "model": "m", "version": "v", "deadline": 1, "received_at": 1,
        "scored_at": 1, "compute_ms": 0.0,
    })
    bad_values = {
        b"garbage": (b"\x00\x01not avro at all", "DecodeFailed"),
        b"wrong-schema": (score_bytes, "UnknownFingerprint"),
        b"truncated": (requests.encode(make_request(demo_rows(1)[0], budget_ms=100, reply_topic=None,
                                                    reply_partition=None))[:40], "DecodeFailed"),
        # An empty id: the client refuses to send one; another producer may.
        b"no-id": (requests.encode({**make_request(demo_rows(1)[0], budget_ms=100, reply_topic=None,
                                                   reply_partition=None), "request_id": ""}), "DecodeFailed"),
        b"empty": (requests.encode({**make_request(demo_rows(1)[0], budget_ms=100, reply_topic=None,
                                                   reply_partition=None), "features": {}}), "DecodeFailed"),
        b"null": (None, "DecodeFailed"),
    }
    producer = Producer(config)
    good_ids = []
    for i, row in enumerate(demo_rows(60, seed=8)):
        record = make_request(row, budget_ms=20_000, reply_topic=None, reply_partition=None)
        good_ids.append(record["request_id"])
        producer.produce(topics.requests, requests.encode(record), key=record["request_id"])
        key = list(bad_values)[i % len(bad_values)]
        producer.produce(topics.requests, bad_values[key][0], key=key)
    assert producer.flush(30) == 0

    # Requests that decode but cannot be scored (no features, no payload) still get an answer:
    # an explicit ERROR with the reason, never silence.
    # (The same encoded empty request is sent 10 times: one request id, answered once.)
    answers = read_topic(config, topics.answers, expect=61, decode="answer")
    good = [a for a in answers if a["request_id"] in set(good_ids)]
    assert sorted(a["request_id"] for a in good) == sorted(good_ids)
    assert {a["status"] for a in good} == {"OK"}
    refused = [a for a in answers if a["request_id"] not in set(good_ids)]
    assert len(refused) == 1
    assert all(a["status"] == "ERROR" and "neither features nor a payload" in a["reason"] for a in refused)
    dead = read_topic(config, topics.deadletter, expect=60, decode="deadletter")
    assert len(dead) == 60
    for letter in dead:
        assert letter["source_topic"] == topics.requests
        assert letter["service"] == "rendezvous"
        value, error_type = bad_values[letter["key"]]
        assert letter["value"] == value
        assert letter["error_type"] == error_type, letter["reason"]
        assert letter["reason"]
    offsets = {(d["source_partition"], d["source_offset"]) for d in dead}
    assert len(offsets) == 60, "each dead letter names its own source offset"


def _outside_encode(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """Single-object encoding exactly as the README documents it, with fastavro only."""
    parsed = fastavro.parse_schema(schema)
    fp = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")  # hex of the 8 LE bytes
    body = io.BytesIO()
    fastavro.schemaless_writer(body, parsed, record)
    return b"\xc3\x01" + bytes.fromhex(fp) + body.getvalue()


def test_outside_client_using_only_the_schema_files_is_answered(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    services.worker(bootstrap, prefix, "demo:champion")
    services.rendezvous(bootstrap, prefix, models=("champion",))
    request_schema = json.loads((SCHEMAS / "request.avsc").read_text())
    answer_schema = fastavro.parse_schema(json.loads((SCHEMAS / "answer.avsc").read_text()))

    reply_partition = 2
    reader = Consumer({**config, "group.id": f"outside-{uuid.uuid4().hex}"})
    _low, high = reader.get_watermark_offsets(TopicPartition(topics.replies, reply_partition), timeout=10)
    reader.assign([TopicPartition(topics.replies, reply_partition, high)])

    import time

    now = int(time.time() * 1000)
    request_id = f"outside-{uuid.uuid4().hex}"
    value = _outside_encode(request_schema, {
        "request_id": request_id, "created_at": now, "deadline": now + 20_000,
        "reply_to": {"topic": topics.replies, "partition": reply_partition},
        "features": demo_rows(1, seed=9)[0], "payload": None, "metadata": {"client": "outside"},
    })
    producer = Producer(config)
    producer.produce(topics.requests, value, key=request_id)
    assert producer.flush(30) == 0

    answer = None
    deadline = time.monotonic() + 60
    while answer is None and time.monotonic() < deadline:
        msg = reader.poll(0.2)
        if msg is None or msg.error() or msg.key() != request_id.encode():
            continue
        raw = msg.value()
        assert raw[:2] == b"\xc3\x01"
        expected_fp = fingerprint(to_parsing_canonical_form(answer_schema), "CRC-64-AVRO")
        assert raw[2:10].hex() == expected_fp
        assert struct.unpack("<Q", raw[2:10])[0] != 0
        answer = fastavro.schemaless_reader(io.BytesIO(raw[10:]), answer_schema)
    reader.close()
    assert answer is not None, "no answer reached the outside client's reply partition"
    assert answer["request_id"] == request_id
    assert answer["status"] == "OK" and answer["model"] == "champion"
    assert 0.0 <= answer["score"] <= 1.0


def test_two_clients_reading_one_reply_partition_each_take_their_own_answer_under_one_id(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    """Two clients read one reply partition and each send a request under one id, with other
    features: the rendezvous answers the first and refuses the second at its return address, and
    each client took whichever reply came first, one a confident score of features it did not
    send. A reply names the inputs it answers (its `rdv-inputs` header): each takes its own."""
    from services.client.client import Client

    services.worker(bootstrap, prefix, "demo:champion")
    services.rendezvous(bootstrap, prefix, models=("champion",))
    first, second = (Client(config, topics, reply_partition=0, budget_ms=20_000) for _ in range(2))
    try:
        request_id = f"shared-{uuid.uuid4().hex}"
        rows = demo_rows(2, seed=11)
        mine = first.submit(rows[0], request_id=request_id)
        first.flush()  # in the log before the second: the first under the id
        theirs = second.submit(rows[1], request_id=request_id)
        answered, refused = mine.result(60), theirs.result(60)
    finally:
        first.close()
        second.close()
    assert answered.status == "OK" and answered.model == "champion" and answered.score is not None
    assert refused.status == "ERROR" and "already used by a request with other features" in (refused.reason or "")
    # The one of the two replies read while both still waited was left by the client it was not for.
    assert first.foreign_answers + second.foreign_answers == 1
