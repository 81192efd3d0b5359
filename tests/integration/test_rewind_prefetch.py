"""What the skeleton's rewind relies on librdkafka for, on a real broker (services/core/service.py
`_rewind`: after an aborted transaction the service forgets its state, then leaves and re-joins
the group to read again from the committed offsets).

librdkafka fetches ahead of the application: thousands of records of the old assignment can sit
in the consumer's queue when the rewind unsubscribes. Were any of them returned before the revoke,
the service would handle them with its state forgotten and commit positions past the aborted work
(a review's suspicion). librdkafka pauses the partitions when the rebalance starts, which makes
what was fetched for them outdated: nothing fetched before the rewind comes out after it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition

from services.core.kafka import Consumer
from services.core.settings import Topics
from tests.integration.harness import wait_until

pytestmark = pytest.mark.kafka

RECORDS = 3_000


def test_records_fetched_before_a_rewind_never_come_out_after_it(topics: Topics, config: dict[str, Any]) -> None:
    producer = Producer(config)
    for n in range(RECORDS):
        producer.produce(topics.requests, str(n).encode(), partition=0)
    assert producer.flush(30) == 0
    queued = [0]

    def stats(text: str) -> None:
        """Fetched, not yet handed to the application: from the fetch position to the application's."""
        partition = json.loads(text).get("topics", {}).get(topics.requests, {}).get("partitions", {}).get("0", {})
        queued[0] = partition.get("next_offset", 0) - max(0, partition.get("app_offset", 0))

    events: list[str] = []

    def on_assign(consumer: Any, partitions: list[TopicPartition]) -> None:
        events.append("assign")
        consumer.assign(partitions)

    def on_revoke(consumer: Any, _partitions: list[TopicPartition]) -> None:
        events.append("revoke")
        consumer.unassign()

    consumer = Consumer({**config, "group.id": f"rewind-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "statistics.interval.ms": 100, "stats_cb": stats})
    try:
        consumer.subscribe([topics.requests], on_assign=on_assign, on_revoke=on_revoke)
        read: list[int] = []
        wait_until(lambda: bool(read.extend(m.offset() for m in consumer.consume(10, 0.2)) or len(read) >= 10),
                   60, "the first records")
        # Each poll serves the statistics callback (and takes a record: there are plenty).
        wait_until(lambda: consumer.consume(1, 0.1) is not None and queued[0] >= 1_000, 60,
                   "a thousand records fetched ahead and queued")
        # The rewind: nothing committed, so reading starts again at offset 0.
        consumer.native.unsubscribe()
        consumer.subscribe([topics.requests], on_assign=on_assign, on_revoke=on_revoke)
        events.clear()
        after: list[int] = []
        wait_until(lambda: bool(after.extend(m.offset() for m in consumer.consume(1_000, 0.2)) or after), 60,
                   "records after the rewind")
    finally:
        consumer.close()
    assert events[:1] == ["revoke"], events
    assert after[0] == 0 and after == list(range(len(after))), after[:20]
