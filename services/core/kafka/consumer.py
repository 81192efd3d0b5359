"""`Consumer`: a consumer whose records' errors are typed exceptions (partition EOF skipped,
transient ones logged and left to librdkafka), with explicit, synchronous commits."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from services.core import kafka_logs
from services.core.errors import (
    ConfigError,
    ConsumerFenced,
    KafkaOperationError,
    Source,
    TopicMissing,
)
from services.core.kafka.client_config import CONSUMER_DEFAULTS
from services.core.kafka.connect import new_client
from services.core.kafka.error_kinds import kafka_error, refusal

log = logging.getLogger(__name__)


# Errors a consumed message may carry that librdkafka gets past itself. Told by their codes: the
# binding builds a message's KafkaError with retriable() and fatal() always False, so every one
# stopped the service, _MAX_POLL_EXCEEDED too (one model call longer than max.poll.interval.ms,
# after which librdkafka rejoins the group; a review).
_CONSUME_TRANSIENT = frozenset({
    KafkaError._MAX_POLL_EXCEEDED, KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
})


# Commit errors that only mean "the coordinator is away for now": retry.
_TRANSIENT = {
    KafkaError._WAIT_COORD, KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN,
    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR, KafkaError.REQUEST_TIMED_OUT,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
}
# Commit errors that mean "these partitions were taken from us": the new owner re-reads them.
_REBALANCED = {
    KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.FENCED_INSTANCE_ID, KafkaError._STATE, KafkaError._ASSIGNMENT_LOST,
}


class CommitRejected(KafkaOperationError):
    """The group moved on (rebalance): the offsets were not committed, and need not be."""


class Consumer:
    """A consumer with typed errors and explicit, synchronous commits."""

    def __init__(self, config: Mapping[str, Any]):
        merged = kafka_logs.wired({**CONSUMER_DEFAULTS, **config})
        self._config = merged
        self._consumer = new_client(_Consumer, merged)
        self._subscribed = False
        # With auto.offset.reset=error: told of a partition whose position the topic does not hold
        # (its topic, partition and that position, or a negative one when it had none), on the
        # consuming thread, to move it on itself; unset, such an error stops the service.
        self.on_out_of_range: Callable[[TopicPartition], None] | None = None

    def renew(self) -> None:
        """Replace the client by a new one of the same configuration (after a fatal error: the
        old one can do nothing more; closing it leaves nothing behind to wait for)."""
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.info("closing the replaced consumer: %s", exc)
        self._consumer = new_client(_Consumer, self._config)
        self._subscribed = False

    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable[[Any, list[TopicPartition]], None] | None = None,
        on_revoke: Callable[[Any, list[TopicPartition]], None] | None = None,
        on_lost: Callable[[Any, list[TopicPartition]], None] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {}
        if on_assign:
            kwargs["on_assign"] = on_assign
        if on_revoke:
            kwargs["on_revoke"] = on_revoke
        if on_lost:
            kwargs["on_lost"] = on_lost
        self._consumer.subscribe(topics, **kwargs)
        self._subscribed = True

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._consumer.assign(partitions)

    def consume(self, max_messages: int, timeout: float, gather_s: float = 0.0) -> list[Message]:
        """Wait up to `timeout` for the first record, then take what is already queued, or
        what comes within `gather_s` after it.

        `Consumer.consume(n, timeout)` would hold a lone record until n arrive or the timeout
        passes; polling for one and draining without waiting keeps latency at one fetch while
        still handing out micro-batches under load. A reader for which latency costs nothing
        gathers instead: at 200 records/s, a wake-up per record cost more than the record.
        """
        first = self._consumer.poll(timeout)
        if first is None:
            return []
        messages = [first]
        if max_messages > 1:
            messages.extend(self._consumer.consume(max_messages - 1, gather_s))
        if not any(map(Message.error, messages)):
            return messages
        return self._without_errors(messages)

    def _without_errors(self, messages: list[Message]) -> list[Message]:
        good = []
        for msg in messages:
            err = msg.error()
            if err is None:
                good.append(msg)
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.code() == KafkaError._AUTO_OFFSET_RESET and self.on_out_of_range is not None:
                offset = msg.offset()
                self.on_out_of_range(TopicPartition(msg.topic() or "", msg.partition() or 0,
                                                    -1 if offset is None else offset))
            elif err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                raise TopicMissing(f"topic {msg.topic()} does not exist: {err.str()}")
            elif err.code() == KafkaError._FATAL and "group.instance.id" in err.str():
                # librdkafka reports FENCED_INSTANCE_ID as a generic fatal error; the Python client
                # does not expose the original code, only this text.
                raise ConsumerFenced(err.str())
            elif err.code() == KafkaError.INVALID_SESSION_TIMEOUT:
                timeout = self._config.get("session.timeout.ms", 45000)
                raise ConfigError(f"the broker refused the consumer's session timeout ({err.str()}): "
                                  f"session.timeout.ms {timeout} (--session-timeout-ms) must be within the broker's "
                                  "group.min.session.timeout.ms and group.max.session.timeout.ms (Kafka's defaults: "
                                  "6000 and 1800000; the project's local broker allows 1000)")
            elif err.code() in _CONSUME_TRANSIENT:
                log.warning("consume: transient error, librdkafka retries (or rejoins the group): %s", err.str())
            elif err.fatal() or not err.retriable():
                partition, offset = msg.partition(), msg.offset()
                # An error of the client's own (its group's) names no record: no source to give.
                source = None if msg.topic() is None else Source(
                    msg.topic() or "?", -1 if partition is None else partition, -1 if offset is None else offset)
                refused = refusal(err, "READ", msg.topic() or "?", self._config.get("group.id"))
                raise KafkaOperationError(refused or f"consume failed: {err.str()}", source=source)
            else:
                log.warning("consume: transient error, librdkafka retries: %s", err.str())
        return good

    def commit(self, offsets: list[TopicPartition]) -> None:
        """Commit exactly these positions (next offset to read), synchronously."""
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is not None and err.code() in _REBALANCED:
                raise CommitRejected(f"commit refused after a rebalance: {exc}") from None
            retriable = err is not None and (err.code() in _TRANSIENT or err.retriable())
            raise KafkaOperationError(f"commit failed: {exc}", retriable=retriable) from None

    def committed(self, partitions: list[TopicPartition], timeout: float = 10.0) -> list[TopicPartition]:
        result: list[TopicPartition] = self._consumer.committed(partitions, timeout=timeout)
        return result

    def assignment(self) -> list[TopicPartition]:
        result: list[TopicPartition] = self._consumer.assignment()
        return result

    def pause(self, partitions: list[TopicPartition]) -> None:
        self._consumer.pause(partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self._consumer.resume(partitions)

    def rewind(self, start: TopicPartition) -> bool:
        """Read `start`'s partition again from its offset (records of it already fetched are
        dropped); False if librdkafka refused the seek."""
        try:
            self._consumer.seek(start)
        except KafkaException as exc:
            log.debug("seek to %s[%d]@%d refused: %s", start.topic, start.partition, start.offset, exc)
            return False
        return True

    def resume_at(
        self, partitions: list[TopicPartition], starts: list[TopicPartition]
    ) -> list[tuple[TopicPartition, KafkaException]]:
        """Resume `partitions` and start those in `starts` fetching at once, at the offset given.

        Why the seek: librdkafka wakes its fetcher for a partition only when the partition's fetch
        state changes, and a resume is no such change when the partition found its start offset
        while paused. With every partition of the client paused, the fetcher then sleeps until its
        idle timeout: up to a second between the resume and the first fetch (measured 0.9 s when a
        rendezvous took over all its partitions). A seek right after the resume (queued behind it,
        so it sees the partition resumed) changes the state and wakes the fetcher. Returns the
        seeks librdkafka refused (e.g. a partition whose own start is still being looked up; it
        wakes the fetcher itself when that ends).
        """
        self._consumer.resume(partitions)
        refused = []
        for start in starts:
            try:
                self._consumer.seek(start)
            except KafkaException as exc:
                refused.append((start, exc))
        return refused

    def resume_in_place(self, partitions: list[TopicPartition]) -> None:
        """Resume `partitions` paused for a while (intake held back) and seek each to its position,
        the next record to hand out, so that none is read twice or skipped. Why the seek: librdkafka
        discards a pause or resume op it finds outdated, and a resume soon after a pause has left a
        partition not fetched (its issues #2190, whose workaround is a seek after the resume, and
        #5591); a flood test once saw 2,522 requests of a resumed intake not read for 3 minutes,
        every score read. A partition with no position yet (nothing read since its assignment) is
        only resumed: its fetch starts where the assignment said."""
        positions = [tp for tp in self._consumer.position(partitions) if tp.offset >= 0]
        for start, exc in self.resume_at(partitions, positions):
            log.debug("seek of %s[%d] to %d after its resume refused: %s", start.topic, start.partition,
                      start.offset, exc)

    def close(self) -> None:
        if self._subscribed:
            # A subscribe made during a rebalance (the rewind unsubscribes and subscribes again)
            # waits inside librdkafka until the rebalance is over; closed meanwhile, librdkafka
            # applies it during its own tear-down and aborts the process (rdkafka_cgrp.c,
            # rd_kafka_cgrp_destroy_final: `!rkcg->rkcg_subscription`, seen when SIGTERM came
            # within a second of a rewind). Unsubscribing first drops the waiting subscribe.
            try:
                self._consumer.unsubscribe()
            except KafkaException as exc:  # e.g. a fenced client, in a fatal state: still closed
                log.debug("unsubscribing before the close: %s", exc)
        self._consumer.close()

    @property
    def native(self) -> _Consumer:
        return self._consumer
