"""Topics grown under a running service (docs/helm.md: every topic keeps the requests' partition
count, grown together): its producer takes the new partitions at once.

librdkafka refuses a partition added since it last read the topic's metadata until its next
refresh (5 min by default): under two rendezvous instances, topics grown from 4 to 6 partitions
made one dead-letter 750 records of the new partitions as unexpected failures and the other stop on
a clock record, 'scores has no partition 4' (a review).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from services.core.errors import TopicGone
from services.core.kafka import Producer

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("transactional", [False, True])
def test_a_partition_added_under_a_producer_is_written_at_once(config: dict[str, Any], transactional: bool) -> None:
    topic = f"grown-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(config)  # kept: the futures fail once their client is collected
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    producer = Producer({**config, **({"transactional.id": f"tx-{topic}"} if transactional else {})})
    native = producer.native
    if transactional:
        native.init_transactions(30)
        native.begin_transaction()
    producer.produce(topic, b"before", partition=0)
    producer.flush(30)  # the client has read the topic's metadata: two partitions
    admin.create_partitions([NewPartitions(topic, 3)])[topic].result(30)

    producer.produce(topic, b"after", partition=2)
    with pytest.raises(TopicGone, match=f"{topic} has no partition 3"):
        producer.produce(topic, b"nowhere", partition=3)
    producer.flush(30)
    if transactional:
        native.commit_transaction(30)
    probe = Consumer({**config, "group.id": "probe", "isolation.level": "read_committed"})
    try:
        low, high = probe.get_watermark_offsets(TopicPartition(topic, 2), timeout=10)
    finally:
        probe.close()
    assert high - low >= 1
