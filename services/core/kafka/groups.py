"""Consumer groups through the admin API: waiting for them to be ready, listing them, their
members, lag and committed offsets."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import KafkaException, TopicPartition

from services.core import kafka_logs
from services.core.errors import (
    BrokerError,
)
from services.core.kafka.connect import admin, connect_timeout, new_client

log = logging.getLogger(__name__)


def wait_for_groups(
    config: Mapping[str, Any], groups: Sequence[str], timeout: float = 60.0, members: int = 1,
    check: Callable[[], None] | None = None,
) -> None:
    """Block until every consumer group is Stable with at least `members` members (real readiness).
    `check` runs between tries and may raise (e.g. "the process that should join has exited")."""
    from confluent_kafka import ConsumerGroupState

    client = admin(config)
    deadline = time.monotonic() + timeout
    waiting = list(groups)
    while waiting:
        futures = client.describe_consumer_groups(waiting, request_timeout=5)
        still = []
        for group, future in futures.items():
            try:
                description = future.result()
                ready = description.state == ConsumerGroupState.STABLE and len(description.members) >= members
            except KafkaException:
                ready = False
            if not ready:
                still.append(group)
        waiting = still
        if waiting and check is not None:
            check()
        if waiting and time.monotonic() > deadline:
            raise BrokerError(f"consumer group(s) {', '.join(waiting)} not ready within {timeout:g}s")
        if waiting:
            time.sleep(0.2)  # polling an external condition, not a readiness guess


def _listed_groups(config: Mapping[str, Any], timeout: float | None, whole: bool) -> list[Any]:
    """Every consumer group the cluster knows (id and state), within `timeout` (default: the
    command's --connect-timeout-s). A broker that failed to answer: a BrokerError with `whole`
    (a check that something is not there cannot pass on a part: the demo's check for something
    already serving its topics passed on a broker it could not reach; a review), else a warning
    and the groups of the brokers that answered (`models` names each model's group for its lag)."""
    client = admin(config)  # held until the result is in: a client collected meanwhile fails it
    try:
        listed = client.list_consumer_groups(request_timeout=connect_timeout() if timeout is None else timeout).result()
    except KafkaException as exc:
        raise BrokerError(f"cannot list the consumer groups: {exc}") from None
    if listed.errors and whole:
        raise BrokerError(f"cannot list the consumer groups: {listed.errors[0]}")
    if listed.errors:
        log.warning("the consumer groups listed are those of the brokers that answered: %s", listed.errors[0])
    return list(listed.valid)


def consumer_groups(config: Mapping[str, Any], timeout: float | None = None) -> list[str]:
    """The ids of the consumer groups the cluster knows (those of the brokers that answered)."""
    return [group.group_id for group in _listed_groups(config, timeout, whole=False)]


def groups_with_members(
    config: Mapping[str, Any], prefixes: Sequence[str], timeout: float | None = None
) -> list[str]:
    """The consumer groups whose ids start with one of `prefixes` and that have members now;
    BrokerError unless every broker answered."""
    return groups_by_members(config, prefixes, timeout)[0]


def groups_by_members(
    config: Mapping[str, Any], prefixes: Sequence[str], timeout: float | None = None
) -> tuple[list[str], list[str]]:
    """(those with members now, those without) of the consumer groups whose ids start with one of
    `prefixes`, from one listing; BrokerError unless every broker answered."""
    from confluent_kafka import ConsumerGroupState

    idle = (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD)
    listed = [g for g in _listed_groups(config, timeout, whole=True) if g.group_id.startswith(tuple(prefixes))]
    return (sorted(g.group_id for g in listed if g.state not in idle),
            sorted(g.group_id for g in listed if g.state in idle))


def group_member_count(config: Mapping[str, Any], group: str, timeout: float = 10.0) -> int:
    """How many members the consumer group has now (0 for a group that is empty or unknown)."""
    client = admin(config)  # held until the result is in: a client collected meanwhile fails it
    try:
        return len(client.describe_consumer_groups([group], request_timeout=timeout)[group].result().members)
    except KafkaException as exc:
        raise BrokerError(f"cannot describe consumer group {group}: {exc}") from None


def group_lag(config: Mapping[str, Any], group: str, topic: str, timeout: float = 10.0) -> int | None:
    """Records of `topic` the group has not committed yet (None: the group committed nothing)."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import OffsetSpec

    client = admin(config)
    try:
        request = ConsumerGroupTopicPartitions(group)
        committed = client.list_consumer_group_offsets([request], request_timeout=timeout)[group].result()
        positions = {tp.partition: tp.offset for tp in committed.topic_partitions
                     if tp.topic == topic and tp.offset >= 0}
        if not positions:
            return None
        ends = client.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in positions},
                                   request_timeout=timeout)
        return sum(max(0, future.result().offset - positions[tp.partition]) for tp, future in ends.items())
    except KafkaException as exc:
        raise BrokerError(f"cannot read the lag of group {group}: {exc}") from None


def committed_offsets(
    config: Mapping[str, Any], group: str, partitions: list[TopicPartition], *, stable: bool, timeout_s: float = 5.0
) -> list[TopicPartition]:
    """The group's committed offsets (with their metadata), read by a short-lived client.

    Not by the service's own consumer: after a broker restart a long-lived client can stay wedged
    on its old coordinator connection (its offset fetches time out while a new client's answer at
    once). `stable=True` reads as read_committed, which makes the broker answer "unstable" (and
    librdkafka retry until its timeout) while a transaction holding offsets for those partitions
    is open; `stable=False` gets the last *completed* commit at once."""
    isolation = "read_committed" if stable else "read_uncommitted"
    probe = new_client(_Consumer, kafka_logs.wired({**config, "group.id": group, "enable.auto.commit": False,
                                                      "isolation.level": isolation}))
    try:
        result: list[TopicPartition] = probe.committed(partitions, timeout=timeout_s)
        return result
    finally:
        probe.close()
