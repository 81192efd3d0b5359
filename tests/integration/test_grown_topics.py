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
from tests.integration.harness import wait_for_partitions

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("transactional", [False, True])
def test_partitions_added_under_a_producer_are_written_at_once(config: dict[str, Any], transactional: bool) -> None:
    """Two topics grown together (answers and log, say): both written at once, though the client
    asks the cluster's metadata once a second at most."""
    topics = [f"grown-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    admin = AdminClient(config)  # kept: the futures fail once their client is collected
    for future in admin.create_topics([NewTopic(topic, 2, 1) for topic in topics]).values():
        future.result(30)
    producer = Producer({**config, **({"transactional.id": f"tx-{topics[0]}"} if transactional else {})})
    native = producer.native
    if transactional:
        native.init_transactions(30)
        native.begin_transaction()
    for topic in topics:
        producer.produce(topic, b"before", partition=0)
    producer.flush(30)  # the client has read the topics' metadata: two partitions each
    for future in admin.create_partitions([NewPartitions(topic, 3) for topic in topics]).values():
        future.result(30)
    wait_for_partitions(config, topics, 3)  # the cluster's; the producer's own metadata is still of 2

    for topic in topics:
        producer.produce(topic, b"after", partition=2)
    with pytest.raises(TopicGone, match=f"{topics[0]} has no partition 3"):
        producer.produce(topics[0], b"nowhere", partition=3)
    producer.flush(30)
    if transactional:
        native.commit_transaction(30)
    probe = Consumer({**config, "group.id": "probe", "isolation.level": "read_committed"})
    try:
        written = [probe.get_watermark_offsets(TopicPartition(topic, 2), timeout=10) for topic in topics]
    finally:
        probe.close()
    assert all(high - low >= 1 for low, high in written), written


def test_a_control_topic_grown_past_one_partition_is_refused_by_every_reader_and_writer(config: dict[str, Any]) -> None:
    """Grown with the others, as the docs invited: new versions landed on any partition, running
    readers fixed to the first missed them, and a change read its own back and said "published"
    (a review). The rendezvous alone refused such a topic, at its start."""
    from services.control.follower import ScheduleFollower
    from services.control.schedule import Schedule
    from services.control.topic import load_books, publish
    from services.core.errors import ConfigError

    control = f"grown-control-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(config)
    settings = {"cleanup.policy": "compact", "message.timestamp.type": "LogAppendTime"}
    admin.create_topics([NewTopic(control, 1, 1, config=settings)])[control].result(30)
    publish(config, control, Schedule(models=("champion",)))  # one partition: fine
    admin.create_partitions([NewPartitions(control, 2)])[control].result(30)
    wait_for_partitions(config, [control], 2)
    said = f"{control} has 2 partitions: the control topic must have one"
    with pytest.raises(ConfigError, match=said):
        publish(config, control, Schedule(models=("challenger", "champion"), version=2))
    with pytest.raises(ConfigError, match=said):
        load_books(config, control, "default")
    with pytest.raises(ConfigError, match=said):
        ScheduleFollower(config, control, "default")
