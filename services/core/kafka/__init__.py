"""confluent-kafka, wrapped once for every service and command: one module per job.

- `client_config`: the settings the project's clients start from (defaults, timeouts);
- `connect`: making a client, and waiting for a broker with one clear line for what is wrong;
- `error_kinds`: what a librdkafka error means for the work that met it (redo it, or not);
- `producer`, `consumer`: the clients every service uses, their failures typed exceptions;
- `topics`, `groups`, `readers`: admin helpers, and short-lived groupless readers.

What callers use is imported from here; a module's own internals (tests) from the module."""

from __future__ import annotations

from services.core.kafka.client_config import (
    CONSUMER_DEFAULTS,
    DELIVERY_TIMEOUT_KEYS,
    FETCH_AHEAD,
    LIBRDKAFKA_TRANSACTION_TIMEOUT_MS,
    MAX_TIMEOUT_MS,
    OUTPUTS_CHECKED_PROPAGATION_MS,
    PRODUCER_DEFAULTS,
    SERVING_DELIVERY_TIMEOUT_MS,
    delivery_timeout,
    outputs_checked_at_start,
    unless_given,
    within_transaction,
)
from services.core.kafka.connect import (
    LIBRDKAFKA_LOG,
    admin,
    connect_timeout,
    new_client,
    set_connect_timeout,
    wait_for_broker,
)
from services.core.kafka.consumer import CommitRejected, Consumer
from services.core.kafka.error_kinds import kafka_error, kafka_message, refusal, refused_for_good, topic_gone
from services.core.kafka.groups import (
    committed_offsets,
    consumer_groups,
    group_lag,
    group_member_count,
    groups_by_members,
    groups_with_members,
    wait_for_groups,
)
from services.core.kafka.producer import (
    BATCH_OVERHEAD,
    HEADER_OVERHEAD,
    LIBRDKAFKA_MESSAGE_MAX_BYTES,
    RECORD_OVERHEAD,
    Producer,
)
from services.core.kafka.readers import SCRATCH_GROUP_PREFIX, end_offsets, groupless, partition_end, reader
from services.core.kafka.topics import (
    CREATION_DEFAULTS,
    ConfigsNotAuthorized,
    create_topics,
    delete_topics,
    describe_each,
    not_authorized,
    partition_counts,
    topic_config,
    topic_configs,
    topic_limits,
    topics_refused,
)

__all__ = [
    "BATCH_OVERHEAD",
    "CONSUMER_DEFAULTS",
    "CREATION_DEFAULTS",
    "DELIVERY_TIMEOUT_KEYS",
    "FETCH_AHEAD",
    "HEADER_OVERHEAD",
    "LIBRDKAFKA_LOG",
    "LIBRDKAFKA_MESSAGE_MAX_BYTES",
    "LIBRDKAFKA_TRANSACTION_TIMEOUT_MS",
    "MAX_TIMEOUT_MS",
    "OUTPUTS_CHECKED_PROPAGATION_MS",
    "PRODUCER_DEFAULTS",
    "RECORD_OVERHEAD",
    "SCRATCH_GROUP_PREFIX",
    "SERVING_DELIVERY_TIMEOUT_MS",
    "CommitRejected",
    "ConfigsNotAuthorized",
    "Consumer",
    "Producer",
    "admin",
    "committed_offsets",
    "connect_timeout",
    "consumer_groups",
    "create_topics",
    "delete_topics",
    "delivery_timeout",
    "describe_each",
    "end_offsets",
    "group_lag",
    "group_member_count",
    "groupless",
    "groups_by_members",
    "groups_with_members",
    "kafka_error",
    "kafka_message",
    "new_client",
    "not_authorized",
    "outputs_checked_at_start",
    "partition_counts",
    "partition_end",
    "reader",
    "refusal",
    "refused_for_good",
    "set_connect_timeout",
    "topic_config",
    "topic_configs",
    "topic_gone",
    "topic_limits",
    "topics_refused",
    "unless_given",
    "wait_for_broker",
    "wait_for_groups",
    "within_transaction",
]
