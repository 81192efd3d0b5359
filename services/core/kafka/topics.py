"""Topics through the admin API: their configuration and limits, partition counts, creation
(with the settings the deployment relies on) and deletion. A topic missing, or not the principal's
to see, is said in one line."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from services.core.errors import (
    BrokerError,
    TopicMissing,
    TopicRefused,
)
from services.core.kafka.connect import admin, connect_timeout, wait_for_broker
from services.core.kafka.error_kinds import AUTHORIZATION_KINDS, kafka_code, kafka_error, kafka_message

log = logging.getLogger(__name__)
T = TypeVar("T")


def topic_config(config: Mapping[str, Any], topic: str, key: str, timeout: float = 15.0) -> str | None:
    """One configuration value of a topic as the broker has it (None if it does not say)."""
    return topic_configs(config, topic, timeout).get(key)


def topic_configs(config: Mapping[str, Any], topic: str, timeout: float = 15.0) -> dict[str, str]:
    """Every configuration value of a topic the broker tells, by name."""
    from confluent_kafka.admin import ConfigResource

    client = admin(config)  # kept referenced until the answer is in: a collected client cancels it
    futures = client.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)], request_timeout=timeout)
    try:
        entries = next(iter(futures.values())).result()
    except KafkaException as exc:
        if kafka_code(exc) in AUTHORIZATION_KINDS:
            raise ConfigsNotAuthorized(f"cannot read the configuration of {topic}: {exc}") from None
        raise BrokerError(f"cannot read the configuration of {topic}: {exc}") from None
    return {key: str(entry.value) for key, entry in entries.items()}


class ConfigsNotAuthorized(BrokerError):
    """The principal may not describe the topic's configuration (no DESCRIBE_CONFIGS on it)."""


def topic_limits(config: Mapping[str, Any], topics: Iterable[str], timeout: float = 15.0) -> dict[str, int]:
    """max.message.bytes of each topic, as the broker has it; one it does not tell (missing, no
    permission to describe, no answer) is left out, with a warning: only the producer's own
    limit is checked for it."""
    from confluent_kafka.admin import ConfigResource

    wanted = sorted(set(topics))
    if not wanted:
        return {}
    client = admin(config)  # kept referenced until the answers are in: a collected client cancels them
    futures = client.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, t) for t in wanted],
                                      request_timeout=timeout)
    limits: dict[str, int] = {}
    for resource, future in futures.items():
        try:
            entry = future.result().get("max.message.bytes")
            limits[resource.name] = int(entry.value)
        except (KafkaException, AttributeError, TypeError, ValueError) as exc:
            log.warning("max.message.bytes of %s unknown (%s): records for it are checked against the "
                        "producer's message.max.bytes only", resource.name, exc)
    return limits


def partition_counts(
    config: Mapping[str, Any], topics: Iterable[str], timeout: float | None = None
) -> dict[str, int]:
    """Partition count of each topic; `TopicMissing` names every missing one."""
    metadata = wait_for_broker(config, timeout)
    wanted = list(topics)
    missing = [t for t in wanted if t not in metadata.topics or metadata.topics[t].error is not None]
    if missing:
        raise _absent(config, missing, min(10.0, connect_timeout() if timeout is None else timeout))
    return {t: len(metadata.topics[t].partitions) for t in wanted}


def _absent(config: Mapping[str, Any], missing: list[str], timeout: float) -> TopicMissing:
    """Why the metadata lacks topics: not there, or not the principal's to see. A broker with an
    authorizer leaves a topic the principal may not describe out of the cluster's list, as if it did
    not exist: 'create them with topics create' sent its operator to create a topic that was there.
    Asked once for all of them, within `timeout` (a broker gone meanwhile: said missing, as before)."""
    where = config.get("bootstrap.servers")
    refused = [t for t, error in _described(config, missing, timeout).items() if not_authorized(error)]
    if refused:
        return topics_refused(refused, f" at {where}")
    return TopicMissing(f"missing topic(s) {', '.join(missing)} at {where}; create them with "
                        "`rendezvous topics create`")


def topics_refused(topics: Sequence[str], where: str = "") -> TopicRefused:
    return TopicRefused(f"not authorized to describe topic(s) {', '.join(topics)}{where}: the principal needs a "
                        "grant on them (see `rendezvous acl show`; the broker does not say whether they exist)")


def _described(config: Mapping[str, Any], topics: list[str], timeout: float) -> dict[str, KafkaError | None]:
    """Each topic's error when described by name: None, or the broker's error (UNKNOWN_TOPIC_OR_PART,
    TOPIC_AUTHORIZATION_FAILED, ...); a topic not answered within `timeout` is left out."""
    client = admin(config)  # held until the results are in: a client collected meanwhile fails them
    try:
        answers = describe_each(client, topics, timeout)
    except KafkaException:
        return {}
    return {topic: answer if isinstance(answer, KafkaError) else None for topic, answer in answers.items()}


def describe_each(client: AdminClient, topics: list[str], timeout: float) -> dict[str, Any]:
    """The broker's answer to describing each topic by name, in one request: its TopicDescription,
    or its KafkaError (UNKNOWN_TOPIC_OR_PART, TOPIC_AUTHORIZATION_FAILED, ...); a topic not answered
    within `timeout` is left out. By an admin client, which never has a topic created (a metadata
    request for a topic leaves a handle librdkafka goes on asking about). KafkaException if the
    request cannot be made."""
    from confluent_kafka import TopicCollection

    futures = client.describe_topics(TopicCollection(topics), request_timeout=max(0.5, timeout))
    answers: dict[str, Any] = {}
    for topic, future in futures.items():
        try:
            answers[topic] = future.result(timeout=max(0.5, timeout))
        except KafkaException as exc:
            error = kafka_error(exc)
            if error is not None:
                answers[topic] = error
        except Exception:  # noqa: BLE001 - no answer in time: nothing known of it
            continue
    return answers


def not_authorized(error: KafkaError | None) -> bool:
    """Whether a topic's metadata error is the broker refusing the principal (TOPIC_AUTHORIZATION_FAILED)."""
    return error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def create_topics(
    config: Mapping[str, Any],
    specs: Mapping[str, tuple[int, Mapping[str, str]]],
    timeout: float = 30.0,
) -> list[str]:
    """Create topics {name: (partitions, configs)}; existing ones get only the configs the
    deployment relies on (`CREATION_DEFAULTS` are left as their operator set them). Returns
    created. The broker is awaited for the command's connect timeout; `timeout` bounds each operation."""
    wait_for_broker(config)
    client = admin(config)
    new = [NewTopic(name, num_partitions=n, replication_factor=-1, config=dict(cfg))
           for name, (n, cfg) in specs.items()]
    created, existing = [], []
    # request_timeout too: librdkafka's own (60 s) held a command on a broker that answers
    # metadata but not the request (its advertised listener unreachable: a review).
    for name, future in client.create_topics(new, operation_timeout=timeout, request_timeout=timeout).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if kafka_code(exc) == KafkaError.TOPIC_ALREADY_EXISTS:
                existing.append(name)
                continue
            raise BrokerError(f"cannot create topic {name}: {kafka_message(exc)}") from None
    relied_on = {name: {k: v for k, v in specs[name][1].items() if k not in CREATION_DEFAULTS} for name in existing}
    _apply_configs(client, {name: configs for name, configs in relied_on.items() if configs}, timeout)
    _wait_for_leaders(client, list(specs), timeout)
    return created


# Configs a topic is created with as defaults, not imposed on one that exists: an operator's own
# retention of the replies or dead letters was set back at every `topics create` (every
# `helm upgrade` runs it; a review of the docs). The timestamp type and cleanup policy are relied on.
CREATION_DEFAULTS = frozenset({"retention.ms"})


def _apply_configs(client: AdminClient, configs: Mapping[str, Mapping[str, str]], timeout: float) -> None:
    """Give existing topics the settings the deployment relies on (other settings are left alone)."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    resources = [
        ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
            ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET) for key, value in entries.items()
        ])
        for name, entries in configs.items()
    ]
    if not resources:
        return
    for resource, future in client.incremental_alter_configs(resources, request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            raise BrokerError(f"cannot set {dict(configs[resource.name])} on {resource.name}: {exc}") from None


def _offsets_answer(client: AdminClient, metadata: Any, topics: list[str]) -> bool:
    """Every partition's leader answers a ListOffsets request (it is really serving)."""
    from confluent_kafka.admin import OffsetSpec

    wanted = {
        TopicPartition(t, p): OffsetSpec.latest() for t in topics for p in metadata.topics[t].partitions
    }
    try:
        for future in client.list_offsets(wanted, request_timeout=5).values():
            future.result()
    except KafkaException:
        return False
    return True


def _wait_for_leaders(client: AdminClient, topics: list[str], timeout: float) -> None:
    """A new topic is usable once every partition has a leader (metadata lags creation)."""
    deadline = time.monotonic() + timeout
    while True:
        metadata = client.list_topics(timeout=5)
        pending = [
            t for t in topics
            if t not in metadata.topics or metadata.topics[t].error is not None
            or not metadata.topics[t].partitions
            or any(p.leader < 0 or p.error is not None for p in metadata.topics[t].partitions.values())
        ]
        if not pending and _offsets_answer(client, metadata, topics):
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"topic(s) {', '.join(pending)} have no partition leader after {timeout:g}s")
        time.sleep(0.1)  # polling metadata until the controller has elected leaders


def delete_topics(config: Mapping[str, Any], names: Iterable[str], timeout: float = 30.0) -> None:
    client = admin(config)
    for name, future in client.delete_topics(list(names), operation_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            log.warning("cannot delete topic %s: %s", name, exc)
