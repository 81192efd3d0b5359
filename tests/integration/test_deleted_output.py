"""A model worker whose scores topic, or a rendezvous whose comparison log, is deleted while it
serves stops at once, in one line; a client's return address deleted stops nothing.

The worker went on for up to 30 s (librdkafka's topic.metadata.propagation.max.ms from when it first
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
from confluent_kafka.admin import AdminClient, NewTopic

from services.client.client import make_request
from services.core.codec import codec
from services.core.settings import Topics
from services.localkafka.config import free_port
from services.model_worker.models import demo_rows
from tests.integration.harness import settled, wait_until

pytestmark = pytest.mark.kafka

PARTITIONS = 4  # the `prefix` fixture's


def _written(config: dict[str, Any], topic: str) -> int:
    probe = Consumer({**config, "group.id": "probe", "enable.auto.commit": False})
    try:
        return sum(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS))
    finally:
        probe.close()


def _written_yet(config: dict[str, Any], topic: str) -> bool:
    """Whether anything is written to `topic`; one created a moment ago may have no leader yet
    (NOT_LEADER_FOR_PARTITION once in CI, for a return address): nothing written yet."""
    return settled(lambda: _written(config, topic) > 0)()


class _Requests:
    """Requests sent one at a time, to each partition in turn, as a client keeps sending them."""

    def __init__(self, config: dict[str, Any], topic: str, budget_ms: int, reply_topic: str | None = None) -> None:
        self.producer, self.topic, self.budget_ms, self.reply_topic = Producer(config), topic, budget_ms, reply_topic
        self.codec, self.rows, self.sent = codec("request"), demo_rows(8), 0

    def send(self) -> None:
        request = make_request(self.rows[self.sent % len(self.rows)], budget_ms=self.budget_ms,
                               reply_topic=self.reply_topic, reply_partition=None)
        self.producer.produce(self.topic, self.codec.encode(request), key=request["request_id"].encode(),
                              partition=self.sent % PARTITIONS)
        self.producer.flush(10)
        self.sent += 1


def _start(commands: list[list[str]], bootstrap: str, prefix: str, logs: list[Path]) -> list[subprocess.Popen[bytes]]:
    processes = []
    for command, log in zip(commands, logs, strict=True):
        with log.open("w") as into:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", *command, "--bootstrap", bootstrap, "--topic-prefix",
                 prefix, "--metrics-port", str(free_port())], stderr=into, env=dict(os.environ)))
    return processes


def _committed(config: dict[str, Any], group: str, topic: str) -> int:
    probe = Consumer({**config, "group.id": group, "enable.auto.commit": False})
    try:
        offsets = probe.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        probe.close()


def test_a_worker_whose_scores_topic_is_deleted_stops_at_once_saying_so(
    bootstrap: str, config: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    topics = Topics.from_prefix(prefix)
    log = tmp_path / "worker.log"  # a file, not a pipe: nothing reads it while the worker runs
    [worker] = _start([["model", "serve", "--model", "demo:champion", "--name", "champion"]], bootstrap, prefix, [log])
    send = _Requests(config, topics.requests, budget_ms=30_000).send

    def alive() -> None:
        assert worker.poll() is None, "the worker ended before its topic was deleted"

    def scoring() -> bool:
        send()
        return _written_yet(config, topics.scores)

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


def test_the_rendezvous_whose_comparison_log_is_deleted_stops_at_once_saying_so(
    bootstrap: str, config: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    """It stalled for good: every transaction aborted on the missing topic, and its recovery waited
    for it, 'missing topic(s)' every 5 s, /readyz 503 (a review). Its outputs' topics are checked at
    start, as a worker's: one missing later was deleted while serving."""
    topics = Topics.from_prefix(prefix)
    logs = [tmp_path / "worker.log", tmp_path / "rendezvous.log"]
    commands = [["model", "serve", "--model", "demo:champion", "--name", "champion"],
                ["serve", "--models", "champion"]]
    processes = _start(commands, bootstrap, prefix, logs)
    rendezvous = processes[1]
    send = _Requests(config, topics.requests, budget_ms=5_000).send

    def alive() -> None:
        assert all(p.poll() is None for p in processes), "a service ended before the topic was deleted"

    def answering() -> bool:
        send()
        return _written_yet(config, topics.answers)

    def stopped() -> bool:
        send()
        return rendezvous.poll() is not None

    try:
        wait_until(answering, 120, "the rendezvous' first answers", check=alive)
        admin = AdminClient(config)
        admin.delete_topics([topics.log])[topics.log].result(30)
        wait_until(stopped, 120, "the rendezvous to stop")
    finally:
        for process in processes:
            process.kill()
            process.wait()
    err = logs[1].read_text()
    assert rendezvous.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert f"{topics.log} " in errors[0] and "while serving?)" in errors[0], errors[0]


def test_a_client_whose_return_address_is_deleted_stops_nothing(
    bootstrap: str, config: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    """Every request is still answered on the answers topic and committed, the service running.
    How soon is the reply producer's setting (a unit test in test_delivery_timeout.py): with
    librdkafka's default, the replies in flight held every offset behind them for 30 s."""
    topics = Topics.from_prefix(prefix)
    gone = f"{topics.replies}.gone"
    admin = AdminClient(config)  # kept: a future fails once its client is collected
    admin.create_topics([NewTopic(gone, PARTITIONS, 1)])[gone].result(30)
    logs = [tmp_path / "worker.log", tmp_path / "rendezvous.log"]
    processes = _start([["model", "serve", "--model", "demo:champion", "--name", "champion"],
                        ["serve", "--models", "champion"]], bootstrap, prefix, logs)
    requests = _Requests(config, topics.requests, budget_ms=5_000, reply_topic=gone)

    def alive() -> None:
        assert all(p.poll() is None for p in processes), "a service ended"

    def replying() -> bool:
        requests.send()
        return _written_yet(config, gone)

    try:
        wait_until(replying, 120, "the first replies to the client's topic", check=alive)
        admin.delete_topics([gone])[gone].result(30)
        for _ in range(40):
            requests.send()
        wait_until(settled(lambda: _committed(config, f"{prefix}rendezvous", topics.requests) == requests.sent), 120,
                   "every request sent to be committed", check=alive)
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert _written(config, topics.answers) >= requests.sent, logs[1].read_text()
