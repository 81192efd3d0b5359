"""A model worker whose scores topic is deleted while it serves stops at once, in one line.

It went on for up to 30 s (librdkafka's topic.metadata.propagation.max.ms from when it first
wrote to the topic), its readiness flapping 'broker unreachable' as each commit's flush waited
on refused records, then ended with librdkafka's 'Unknown topic' (a review).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from services.client.client import make_request
from services.core.codec import codec
from services.core.settings import Topics
from services.localkafka.config import free_port
from services.model_worker.models import demo_rows
from tests.integration.harness import wait_until

pytestmark = pytest.mark.kafka

PARTITIONS = 4  # the `prefix` fixture's


def _scores_written(config: dict[str, Any], topic: str) -> int:
    probe = Consumer({**config, "group.id": "probe", "enable.auto.commit": False})
    try:
        return sum(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS))
    finally:
        probe.close()


def test_a_worker_whose_scores_topic_is_deleted_stops_at_once_saying_so(
    bootstrap: str, config: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    topics = Topics.from_prefix(prefix)
    log = tmp_path / "worker.log"  # a file, not a pipe: nothing reads it while the worker runs
    with log.open("w") as into:
        worker = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "model", "serve", "--bootstrap", bootstrap, "--topic-prefix",
             prefix, "--model", "demo:champion", "--name", "champion", "--metrics-port", str(free_port())],
            stderr=into, env=dict(os.environ))
    producer = Producer(config)
    requests, rows = codec("request"), demo_rows(8)
    sent = 0

    def send() -> None:
        nonlocal sent
        request = make_request(rows[sent % len(rows)], budget_ms=30_000, reply_topic=None, reply_partition=None)
        producer.produce(topics.requests, requests.encode(request), key=request["request_id"].encode(),
                         partition=sent % PARTITIONS)
        producer.flush(10)
        sent += 1

    def alive() -> None:
        assert worker.poll() is None, "the worker ended before its topic was deleted"

    def scoring() -> bool:
        send()
        return _scores_written(config, topics.scores) > 0

    def stopped() -> bool:  # requests keep coming, as they would
        send()
        return worker.poll() is not None

    try:
        wait_until(scoring, 120, "the worker's first scores", check=alive)
        admin = AdminClient(config)  # kept: the future fails once its client is collected
        admin.delete_topics([topics.scores])[topics.scores].result(30)
        wait_until(stopped, 120, "the worker to stop")
    finally:
        worker.kill()
        worker.wait()
    err = log.read_text()
    assert worker.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert f"{topics.scores} " in errors[0] and "while serving?)" in errors[0], errors[0]
