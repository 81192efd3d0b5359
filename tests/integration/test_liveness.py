"""/healthz follows the poll loop: a service whose loop is stuck while the broker answers is not alive."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from services.core.health import serve_http
from services.core.service import Probed, SimpleHandler, StreamService, StreamSpec
from services.core.settings import Topics
from services.localkafka.config import free_port
from tests.integration.harness import Services, wait_until

pytestmark = pytest.mark.kafka


class StuckOnFirstRecord(SimpleHandler, Probed):
    """Reads the requests topic; its first record holds the loop until `release` is set."""

    def __init__(self, config: dict[str, Any], topics: Topics, prefix: str):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()
        self.service = StreamService(StreamSpec(
            name="stuck", config=config, subscription=[topics.requests], group_id=f"{prefix}stuck", producer=False,
            stalled_after_s=1.0,
        ), self)
        self.ready = self.service.ready

    def run(self, stop: threading.Event) -> None:
        self.service.run(stop)

    def on_batch(self, messages: list[Message]) -> None:
        if messages and not self.entered.is_set():
            self.entered.set()
            self.release.wait(60)
        self.positions.advance(messages)


@pytest.fixture
def healthz(services: Services, config: dict[str, Any], topics: Topics, prefix: str) -> Iterator[
        tuple[StuckOnFirstRecord, str]]:
    handler = services.start(StuckOnFirstRecord(config, topics, prefix))
    port = free_port()
    server = serve_http(port, handler.readiness, "127.0.0.1", handler.liveness)
    assert server is not None
    yield handler, f"http://127.0.0.1:{port}/healthz"
    handler.release.set()
    server.shutdown()
    server.server_close()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_healthz_fails_while_the_loop_is_stuck_and_recovers_when_it_turns_again(
    healthz: tuple[StuckOnFirstRecord, str], config: dict[str, Any], topics: Topics
) -> None:
    handler, url = healthz
    assert get(url) == (200, "ok\n")
    producer = Producer(config)
    producer.produce(topics.requests, b"anything")
    assert producer.flush(30) == 0
    assert handler.entered.wait(60), "the record never reached the handler"

    wait_until(lambda: get(url)[0] == 503, 30, "/healthz to report the stuck loop")
    assert "the poll loop has not turned for" in get(url)[1]
    handler.release.set()
    wait_until(lambda: get(url) == (200, "ok\n"), 30, "/healthz to recover once the loop turns")


class FailsOnBoom(SimpleHandler):
    """Finishes every record until one reads b"boom", then raises: the loop ends with an error."""

    def __init__(self, config: dict[str, Any], topics: Topics, prefix: str):
        super().__init__()
        self.group = f"{prefix}fails"
        self.service = StreamService(StreamSpec(
            name="fails", config=config, subscription=[topics.requests], group_id=self.group, producer=False,
        ), self)

    def on_batch(self, messages: list[Message]) -> None:
        for msg in messages:
            if msg.value() == b"boom":
                raise RuntimeError("the handler broke")
            self.positions.advance([msg])


def test_a_service_ending_on_an_error_commits_what_it_finished_and_its_log_says_why(
    config: dict[str, Any], topics: Topics, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The consumer's close revokes the partitions on the way out: the revoke's line said
    "committing finished work", as after a rebalance, right before the error that ended it."""
    handler = FailsOnBoom(config, topics, prefix)
    producer = Producer(config)
    for value in (b"one", b"two", b"boom"):
        producer.produce(topics.requests, value, partition=0)
    assert producer.flush(30) == 0
    failed: list[BaseException] = []

    def run() -> None:
        try:
            handler.service.run(threading.Event())
        except RuntimeError as exc:
            failed.append(exc)

    caplog.set_level("INFO", logger="services.core.service")
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(90)
    assert not thread.is_alive() and [str(e) for e in failed] == ["the handler broke"]
    revokes = [r.getMessage() for r in caplog.records if "fails revoked" in r.getMessage()]
    assert revokes and all("stopping after an error (RuntimeError): committing the work finished before it" in line
                           for line in revokes), revokes
    consumer = Consumer({**config, "group.id": handler.group})
    try:
        committed = consumer.committed([TopicPartition(topics.requests, 0)], timeout=15)
    finally:
        consumer.close()
    assert committed[0].offset == 2  # "one" and "two" finished, "boom" not
