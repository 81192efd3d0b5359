"""Short-lived groupless readers: a consumer that assigns its partitions itself (to read a range,
or ask for partition ends), under a scratch group id it never joins."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import TopicPartition

from services.core import kafka_logs
from services.core.kafka.client_config import FETCH_AHEAD
from services.core.kafka.connect import new_client


def partition_end(consumer: Any, tp: TopicPartition) -> int:
    """The partition's end offset now, asked of the broker (a native consumer's; KafkaException
    if it does not answer)."""
    _low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
    return int(high)


# The groups of one-off readers (`groupless`); granted as a prefix (services/control/acl.py),
# which no deployment's own groups may fall under.
SCRATCH_GROUP_PREFIX = "rdv-scratch-"


def groupless(config: Mapping[str, Any], purpose: str) -> dict[str, Any]:
    """The configuration of a consumer that assigns its partitions itself. librdkafka wants a
    group id all the same: a unique one named after `purpose`, never joined, never committed to
    (so no group is left behind on the broker)."""
    return {**config, "group.id": f"{SCRATCH_GROUP_PREFIX}{purpose}-{uuid.uuid4().hex}", "enable.auto.commit": False}


def reader(
    config: Mapping[str, Any], purpose: str, *, committed: bool = True, extra: Mapping[str, Any] | None = None
) -> _Consumer:
    """A short-lived native groupless consumer that reads partitions or asks for ends.
    `committed`: read_committed (stops at an open transaction) or read_uncommitted (everything
    written)."""
    return new_client(_Consumer, kafka_logs.wired({
        **FETCH_AHEAD, **groupless(config, purpose),
        "isolation.level": "read_committed" if committed else "read_uncommitted", **(extra or {}),
    }))


def end_offsets(
    config: Mapping[str, Any], partitions: Iterable[tuple[str, int]], *, committed: bool, timeout: float = 15.0
) -> dict[tuple[str, int], int]:
    """Each partition's end: the last stable offset (`committed`: what read_committed readers can
    reach; an open transaction holds it back) or the high watermark (all that was written)."""
    wanted = list(partitions)
    if not wanted:
        return {}
    probe = reader(config, "ends", committed=committed)
    try:
        return {(topic, p): probe.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                for topic, p in wanted}
    finally:
        probe.close()
