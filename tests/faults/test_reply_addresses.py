"""Return addresses are a client's word: on a broker that creates topics on demand (Kafka's own
default), a client named topics that were then created, and had answers written into another
deployment's topics (a security review). Real processes on a broker of the test's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from services.cli.common import ensure_topics
from services.client.client import make_request
from services.core.codec import codec
from services.core.kafka import end_offsets
from services.core.settings import Topics
from services.localkafka.broker import LocalBroker, ephemeral_broker
from services.model_worker.models import demo_rows
from tests.faults.procs import Proc, until
from tests.integration.harness import read_topic

pytestmark = pytest.mark.kafka


@pytest.fixture
def creating_broker(tmp_path: Path) -> Any:
    with ephemeral_broker(tmp_path, extra_properties={"auto.create.topics.enable": "true"}) as broker:
        yield broker


def test_a_return_address_creates_no_topic_and_reaches_no_other_deployment(
    creating_broker: LocalBroker, tmp_path: Path
) -> None:
    bootstrap = creating_broker.bootstrap
    config: dict[str, Any] = {"bootstrap.servers": bootstrap}
    topics, staging = Topics.from_prefix("rdv."), Topics.from_prefix("staging.")
    ensure_topics(config, topics, partitions=2)
    ensure_topics(config, staging, partitions=1)
    common = ["--bootstrap", bootstrap, "--connect-timeout-s", "60"]
    procs = [Proc(["model", "serve", *common, "--model", "demo:champion"], tmp_path / "champion.log").start(),
             Proc(["serve", *common, "--models", "champion", "--instance", "rdv-0"], tmp_path / "rendezvous.log")]
    rendezvous = procs[1].start()
    try:
        producer, requests = Producer(config), codec("request")
        # Allowed by name but missing; not allowed; another deployment's; ours.
        addresses = ["rdv.replies.made-by-a-client", "made-by-a-client", staging.control, topics.replies]
        for row, address in zip(demo_rows(len(addresses)), addresses, strict=True):
            record = make_request(row, budget_ms=20_000, reply_topic=address, reply_partition=None,
                                  request_id=f"to-{address}")
            producer.produce(topics.requests, requests.encode(record), key=record["request_id"])
        assert producer.flush(30) == 0
        answers = read_topic(config, topics.answers, expect=len(addresses), decode="answer", timeout=60)
        assert len(answers) == len(addresses)
        # The one allowed address got its reply; every other one was refused and counted.
        until(lambda: len(read_topic(config, topics.replies, expect=1, timeout=10)) == 1, 60, "the reply")
        until(lambda: sum(rendezvous.metric("rdv_reply_errors_total", reason=reason)
                          for reason in ("unknown_topic", "not_allowed")) >= 3, 60, "three return addresses refused")
        existing = set(AdminClient(config).list_topics(timeout=10).topics)
        assert not {"rdv.replies.made-by-a-client", "made-by-a-client"} & existing, sorted(existing)
        staging_control = end_offsets(config, [(staging.control, 0)], committed=False)[(staging.control, 0)]
        assert staging_control == 0, "an answer on another deployment's control topic"
    finally:
        for proc in procs:
            proc.stop()
