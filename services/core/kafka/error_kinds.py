"""What a librdkafka error means for the work that met it: redo it (`OutputsLost`), the broker
would refuse the same record again (`RefusedForGood`: a missing permission, a record over a
topic's limit, the topic gone), or a producer refused for its own state."""

from __future__ import annotations

from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException

from services.core.errors import (
    DeliveryFailed,
    OutputsLost,
    RefusedForGood,
    TopicGone,
)

T = TypeVar("T")


# librdkafka's own verdict that a topic, or a partition of it, is not in the cluster's metadata.
GONE = {KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION}


# A produce refused for the producer's state, whatever the record: an abortable transaction's
# (_STATE), or a producer failed for good, fenced among others (_FATAL: its produce() raises that
# code, its fatal() flag unset; a review on a real broker).
_ERROR_STATES = {KafkaError._STATE, KafkaError._FATAL, KafkaError._FENCED}


def in_error_state(err: KafkaError) -> bool:
    """A produce refused for the producer's state, whatever the record (`ProducerInErrorState`)."""
    return err.code() in _ERROR_STATES or err.txn_requires_abort() or err.fatal()


def topic_gone(topic: str, partition: int | None, err: KafkaError) -> TopicGone:
    """The one line for records to a topic (or partition) the cluster does not have. Said of any
    topic a service writes, a client's reply topic too: what `topics create` makes is a hint."""
    hint = "if it is one of the deployment's, `rendezvous topics create` makes it again"
    if err.code() == KafkaError._UNKNOWN_PARTITION and partition is not None and partition >= 0:
        return TopicGone(f"{topic} has no partition {partition} (deleted, or made again with fewer partitions, "
                         f"while serving?): {hint} ({err.str()})")
    return TopicGone(f"{topic} does not exist (deleted while serving?): {hint} ({err.str()})")


# Delivery errors after which re-reading and producing again can succeed (the broker away or slow).
# _PURGE_QUEUE: taken back from a client replaced for being stuck (`Producer._replace_if_stuck`) and not
# queued again (a second time, or no room): as a timeout, redo the work.
_PASSING = {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError.REQUEST_TIMED_OUT,
            KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND, KafkaError._ALL_BROKERS_DOWN,
            KafkaError._PURGE_QUEUE}


# Delivery errors the broker would give the same record again.
_LASTING = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE,
            KafkaError.INVALID_RECORD, KafkaError.POLICY_VIOLATION, KafkaError.TOPIC_EXCEPTION}


def delivery_failure(err: KafkaError, topic: str, partition: int | None = None) -> DeliveryFailed:
    """A transient failure voids the work that made the record (`OutputsLost`: redo it); one the
    broker would repeat (`RefusedForGood`: a missing permission, a record the topic refuses, the
    topic gone) is raised as it is, as is anything else: redoing the work would not help."""
    if err.code() in GONE:
        return topic_gone(topic, partition, err)
    refused = refusal(err, "WRITE", topic)
    if refused:
        return RefusedForGood(refused)
    message = f"delivery to {topic} failed: {err.str()}"
    if err.code() in _LASTING:
        return RefusedForGood(message)
    if err.retriable() or err.code() in _PASSING:
        return OutputsLost(message, retriable=True)
    return DeliveryFailed(message, retriable=False)


def kafka_error(exc: KafkaException) -> KafkaError | None:
    """The KafkaError a confluent-kafka exception carries (None if it carries none)."""
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


def kafka_code(exc: KafkaException) -> int | None:
    """The error code a confluent-kafka exception carries (None if it carries no KafkaError)."""
    err = kafka_error(exc)
    return err.code() if err is not None else None


def kafka_message(exc: KafkaException) -> str:
    """What a confluent-kafka exception says, for a person: its error's text, not the
    `KafkaError{code=...,val=...,str="..."}` its str() gives (a review)."""
    err = kafka_error(exc)
    return err.str() if err is not None else str(exc)


def refused_for_good(err: KafkaError, where: str) -> RefusedForGood | None:
    """The failure as `RefusedForGood` if the broker would refuse the same record again (e.g. a
    transaction failed by a record over its topic's limit), else None."""
    failure = delivery_failure(err, where)
    return failure if isinstance(failure, RefusedForGood) else None


AUTHORIZATION_KINDS = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "group",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional_id",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
}


def refusal(err: KafkaError, operation: str, topic: str, group: str | None = None) -> str | None:
    """One line naming the missing permission on `topic` (or on `group`, a consumer's) if the
    broker refused for lack of one."""
    resource, name = "topic", topic
    kind = AUTHORIZATION_KINDS.get(err.code())
    if kind is None:
        return None
    if kind == "group" and group:  # it was said of topic "?" (a review)
        return (f"not authorized to use consumer group {group}: the principal needs READ on group {group} "
                f"(see `rendezvous acl show`; {err.str()})")
    if kind != resource:  # e.g. a write refused for want of an idempotent/transactional grant
        return f"not authorized: the broker refused {operation} on {resource} {name} ({err.str()}); " \
               f"the principal lacks a permission on a {kind} (see `rendezvous acl show`)"
    return (f"not authorized to {operation.lower()} {resource} {name}: the principal needs {operation} on "
            f"{resource} {name} (see `rendezvous acl show`)")
