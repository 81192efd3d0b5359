"""A live fuzz run: 100,000 mutated and random records into the requests, scores and control topics
while valid traffic flows. The services stay up, every valid request is answered, every record
the services cannot use is dead-lettered exactly once, and memory stays bounded."""

from __future__ import annotations

import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from services.client.client import make_request
from services.control.schedule import Schedule
from services.control.topic import encode_schedule
from services.core.codec import codec
from services.core.errors import BadInput
from services.core.requests import request_problem
from services.core.settings import Topics
from services.model_worker.models import demo_rows
from tests.faults.procs import Proc, until
from tests.faults.test_failover import Replies, Requests
from tests.integration.harness import read_topic

pytestmark = pytest.mark.kafka

FUZZ = 100_000


def mutate(rng: random.Random, valid: bytes) -> bytes:
    """Random bytes, a truncation, bit flips, or a splice of a valid record."""
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 600))
    if kind == 1:
        return valid[: rng.randrange(0, len(valid))]
    if kind == 2:
        flipped = bytearray(valid)
        for _ in range(rng.randrange(1, 8)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if kind == 3:
        return valid[:10] + rng.randbytes(rng.randrange(0, 200))  # the right header, garbage body
    return valid + rng.randbytes(rng.randrange(1, 20))  # trailing bytes


def unusable(topic_kind: str, value: bytes) -> bool:
    """Whether the services must refuse the record (so dead-letter it)."""
    name = {"requests": "request", "scores": "score", "control": "schedule"}[topic_kind]
    try:
        record = codec(name).decode(value)
    except BadInput:
        return True
    if topic_kind == "requests":
        return not record["request_id"] or request_problem(record) is not None
    if topic_kind == "scores":
        return not record["request_id"] or not record["model"]
    return False  # a decodable schedule may be refused or accepted: checked as "at most once"


def test_a_hundred_thousand_hostile_records_beside_valid_traffic(
    tmp_path: Path, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    base = ["--bootstrap", bootstrap, "--topic-prefix", prefix]
    champion = Proc(["model", "serve", *base, "--model", "demo:champion"], tmp_path / "champion.log").start()
    rendezvous = Proc(["serve", *base, "--models", "champion", "--linger-ms", "200", "--max-orphans", "20000"],
                      tmp_path / "rendezvous.log").start()
    replies = Replies(config, topics.replies)
    try:
        replies.start()
        valid = Requests(config, topics, total=6_000, rate=200.0, budget_ms=30_000).start()
        rng = random.Random(11)
        samples = {
            "requests": codec("request").encode(make_request(demo_rows(1)[0], budget_ms=500, reply_topic=None,
                                                             reply_partition=None)),
            "scores": codec("score").encode({
                "request_id": "r", "model": "champion", "version": "v", "instance": "", "score": 0.5,
                "label": "benign", "error": None, "deadline": 1, "received_at": 1, "scored_at": 1, "compute_ms": 0.1}),
            "control": encode_schedule(Schedule(models=("champion",), version=7, effective_at=0)),
        }
        producer = Producer({**config, "linger.ms": 20})
        expected: Counter[str] = Counter()
        sent: Counter[str] = Counter()
        refused: list[str] = []
        for i in range(FUZZ):
            kind = rng.choices(("requests", "scores", "control"), weights=(6, 3, 1))[0]
            value = mutate(rng, samples[kind])
            topic = getattr(topics, kind)
            partition = 0 if kind == "control" else rng.randrange(4)
            # The compacted control topic takes only keyed records (the broker refuses others itself).
            key = rng.randbytes(rng.randrange(1 if kind == "control" else 0, 40)) or None
            producer.produce(topic, value, key=key, partition=partition,
                             on_delivery=lambda err, _msg: refused.append(str(err)) if err else None)
            sent[kind] += 1
            expected[kind] += unusable(kind, value)
            if i % 1000 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0
        assert not refused, f"the broker refused {len(refused)} fuzz records: {refused[:3]}"
        valid.join()
        result_ids = set(valid.ids)
        until(lambda: result_ids <= set(replies.answers), 300, "an answer for every valid request")
        dead = read_topic(config, topics.deadletter, expect=sum(expected.values()), decode="deadletter", timeout=300)
        sources = Counter((d["source_topic"], d["source_partition"], d["source_offset"]) for d in dead)
        by_topic = Counter(d["source_topic"] for d in dead)
        rss_mb = rendezvous.rss_peak_kb() / 1024
        print(f"FIGURES live fuzz: records_in={FUZZ} ({dict(sent)}) must_dead_letter={dict(expected)} "
              f"dead_lettered={dict(by_topic)} duplicate_dead_letters={sum(n - 1 for n in sources.values())} "
              f"valid={len(valid.ids)} valid_answered={len(result_ids & set(replies.answers))} "
              f"peak_rss_rendezvous={rss_mb:.0f}MB peak_rss_model={champion.rss_peak_kb() / 1024:.0f}MB "
              f"restarts=0 alive={rendezvous.alive() and champion.alive()}")
        assert rendezvous.alive() and champion.alive(), "no record stops a service"
        assert max(sources.values()) == 1, "every bad record is dead-lettered once"
        assert (by_topic[topics.requests], by_topic[topics.scores]) == (expected["requests"], expected["scores"])
        assert by_topic[topics.control] >= expected["control"]  # decodable ones may be refused too
        assert rss_mb < 1024, "memory stays bounded"
    finally:
        replies.stop()
        for proc in (rendezvous, champion):
            proc.kill(signal.SIGTERM)
            proc.wait(60)
