"""A rendezvous fenced out of its group.instance.id rejoins; fenced again soon after, it stops.

Seen once in the outage runs (docs/failover.md): after a broker restart the rendezvous' consumer
was fenced by its own rejoin as a static member ("Static consumer fenced by other consumer with
same group.instance.id", fatal for that client; no other process had the id) and the service
exited. It now rejoins with a new consumer. The fencing is made here by an intruder: a consumer
joining with the same group.instance.id, as the broker-side rejoin did. A second intruder soon
after is what a real misconfiguration looks like (two processes given one `--instance`): the
rendezvous must then stop with a clear error rather than fence the other process in turn.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from services.client.client import make_request
from services.core.codec import codec
from services.core.settings import Topics
from tests.faults.procs import Proc, until
from tests.integration.harness import read_topic

pytestmark = pytest.mark.kafka

INSTANCE = "rdv-0"


def _intruder(config: dict[str, Any], prefix: str, topics: Topics) -> Consumer:
    """A consumer that joins the rendezvous' group with its instance id and takes its partitions."""
    intruder = Consumer({**config, "group.id": f"{prefix}rendezvous", "group.instance.id": INSTANCE,
                         "partition.assignment.strategy": "range", "enable.auto.commit": False})
    intruder.subscribe([topics.requests, topics.scores])
    deadline = time.monotonic() + 60
    while not intruder.assignment():
        assert time.monotonic() < deadline, "the intruder was never assigned the rendezvous' partitions"
        intruder.poll(0.2)
    return intruder


def _answered(config: dict[str, Any], topics: Topics, request_id: str) -> bool:
    producer = Producer(config)
    record = make_request({"x": 1.0}, budget_ms=1_000, reply_topic=None, reply_partition=None, request_id=request_id)
    producer.produce(topics.requests, codec("request").encode(record), key=request_id.encode())
    assert producer.flush(10) == 0
    answers = read_topic(config, topics.answers, expect=1, decode="answer", timeout=60)
    return request_id in {a["request_id"] for a in answers}


def test_a_fenced_rendezvous_rejoins_and_stops_when_fenced_again(
    bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any], tmp_path: Path
) -> None:
    rendezvous = Proc(["serve", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--models", "champion",
                       "--instance", INSTANCE], tmp_path / "rendezvous.log").start()
    try:
        intruder = _intruder(config, prefix, topics)
        try:
            until(lambda: "rejoining the group with a new consumer" in rendezvous.log_file.read_text(), 60,
                  "the fenced rendezvous to rejoin", check=rendezvous._running)
            rendezvous.wait_ready(60)
        finally:
            intruder.close()
        assert _answered(config, topics, "after-the-rejoin"), "the rejoined rendezvous answers"

        second = _intruder(config, prefix, topics)
        try:
            code = rendezvous.wait(timeout=60)
        finally:
            second.close()
    finally:
        rendezvous.stop()
    assert code == 2
    # At the first fencing its partitions were dropped as lost (the fenced client no longer knows them).
    assert f"lost [('{topics.requests}', 0)" in rendezvous.log_file.read_text()
    assert "fenced twice within 60s: another process uses its group.instance.id" in rendezvous.log_file.read_text()
