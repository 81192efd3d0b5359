"""Thin wrappers over confluent-kafka, in one place.

- `Producer.produce` retries on a full local queue (`BufferError` -> `poll`), and a delivery
  failure reported by the callback is raised on the next `produce`/`flush` (not only logged),
  except for topics the caller marked "soft" (client reply topics), whose failures are handed
  to a callback and counted: a client's bad return address must not stop the rendezvous.
- `Consumer.consume` turns `msg.error()` into a typed exception (partition EOF is skipped).
- Admin helpers fail fast with one clear line when the broker or a topic is missing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka import Producer as _Producer
from confluent_kafka.admin import AdminClient, NewTopic

from services.core import kafka_config, kafka_logs
from services.core.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    ConsumerFenced,
    DeliveryFailed,
    KafkaOperationError,
    OutputsLost,
    ProducerInErrorState,
    RecordTooLarge,
    RefusedForGood,
    Source,
    StoppedWaiting,
    TopicGone,
    TopicMissing,
    TopicRefused,
)
from services.core.metrics import PRODUCERS_REPLACED
from services.core.rate_limit import OncePerPeriod
from services.core.runtime import stop_requested

log = logging.getLogger(__name__)
T = TypeVar("T")

PRODUCER_DEFAULTS: dict[str, Any] = {
    # Serving favours latency: send at once, but let librdkafka batch what piles up meanwhile.
    "linger.ms": 1,
    "acks": "all",
    "enable.idempotence": True,
    "compression.type": "lz4",
    # Java's partitioner, so keys land where a Java/Go client would put them.
    "partitioner": "murmur2_random",
    # As the consumers (and Java's clients): a lone small record is never held back by Nagle.
    "socket.nagle.disable": True,
}
# One setting under two names in librdkafka: a record's whole time to be delivered.
DELIVERY_TIMEOUT_KEYS = ("message.timeout.ms", "delivery.timeout.ms")
# What services give records on the serving path (scores, requests, at-least-once outputs): a
# minute, past any deadline such a record can still meet, yet longer than a broker restart takes
# (records queued during a 30 s outage are delivered, not failed and done again).
SERVING_DELIVERY_TIMEOUT_MS = 60_000


MAX_TIMEOUT_MS = 2**31 - 1  # the most librdkafka takes for a timeout
LIBRDKAFKA_TRANSACTION_TIMEOUT_MS = 60_000  # transaction.timeout.ms when none is given
# Timeouts librdkafka refuses in a transactional producer beyond its transaction's (+ this, ms).
_BOUND_BY_TRANSACTION = {"message.timeout.ms": 0, "delivery.timeout.ms": 0, "socket.timeout.ms": 100}


# How long librdkafka lets a topic missing from the metadata exist before it fails the records
# to it (topic.metadata.propagation.max.ms, 30 s by default, counted from when the client first
# learnt of the topic): for outputs checked at start, a topic missing is one deleted meanwhile.
OUTPUTS_CHECKED_PROPAGATION_MS = 1_000


def outputs_checked_at_start(config: Mapping[str, Any]) -> dict[str, Any]:
    """The producer setting for outputs whose topics the service checked at start, unless
    `config` (a --kafka-config) names it. A model worker whose scores topic was deleted went on
    for up to 30 s, its readiness flapping ('broker unreachable') as every commit's flush waited
    on records the broker refused, then stopped with librdkafka's 'Unknown topic' (a review)."""
    return unless_given(config, {"topic.metadata.propagation.max.ms": OUTPUTS_CHECKED_PROPAGATION_MS})


# librdkafka's own verdict that a topic, or a partition of it, is not in the cluster's metadata.
_GONE = {KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION}


# A produce refused for the producer's state, whatever the record: an abortable transaction's
# (_STATE), or a producer failed for good, fenced among others (_FATAL: its produce() raises that
# code, its fatal() flag unset; a review on a real broker).
_ERROR_STATES = {KafkaError._STATE, KafkaError._FATAL, KafkaError._FENCED}


def _in_error_state(err: KafkaError) -> bool:
    """A produce refused for the producer's state, whatever the record (`ProducerInErrorState`)."""
    return err.code() in _ERROR_STATES or err.txn_requires_abort() or err.fatal()


# A produce to a partition the client does not know waits this long for the topic's metadata, and
# asks it this often at most (`Producer._in_cluster_now`).
PARTITIONS_ASKED_S = 1.0
PARTITIONS_ASKED_EVERY_S = 1.0


def topic_gone(topic: str, partition: int | None, err: KafkaError) -> TopicGone:
    """The one line for records to a topic (or partition) the cluster does not have. Said of any
    topic a service writes, a client's reply topic too: what `topics create` makes is a hint."""
    hint = "if it is one of the deployment's, `rendezvous topics create` makes it again"
    if err.code() == KafkaError._UNKNOWN_PARTITION and partition is not None and partition >= 0:
        return TopicGone(f"{topic} has no partition {partition} (deleted, or made again with fewer partitions, "
                         f"while serving?): {hint} ({err.str()})")
    return TopicGone(f"{topic} does not exist (deleted while serving?): {hint} ({err.str()})")


def delivery_timeout(config: Mapping[str, Any], ms: int) -> dict[str, Any]:
    """The producer setting for a delivery timeout of `ms`, or none if `config` (a --kafka-config)
    names one itself: it wins. Why services shorten librdkafka's 300 s: a record later than its
    use (a reply, a score, a request past its deadline) serves no one, and a client left without a
    partition's leader by a broker restart (librdkafka #5430) is found, and replaced, only at its
    first timeout (Producer.timed_out)."""
    return unless_given(config, {"message.timeout.ms": min(ms, MAX_TIMEOUT_MS)}, *DELIVERY_TIMEOUT_KEYS)


def unless_given(config: Mapping[str, Any], setting: dict[str, Any], *names: str) -> dict[str, Any]:
    """`setting` (one librdkafka key), unless `config` (a --kafka-config) names it itself, under
    its key or any of its other `names`: the user's wins."""
    return {} if any(key in config for key in (*setting, *names)) else setting


def within_transaction(config: Mapping[str, Any], transaction_timeout_ms: int) -> dict[str, Any]:
    """`config` for a transactional producer: librdkafka refuses one whose delivery timeout is
    longer than its transaction's, or whose socket timeout is more than 100 ms longer (a
    --kafka-config given to every service, meant for the others), so such a timeout is cut."""
    within = dict(config)
    for key, allowance in _BOUND_BY_TRANSACTION.items():
        # Not set; or no number, which librdkafka refuses in one line of its own.
        with contextlib.suppress(KeyError, TypeError, ValueError):
            within[key] = min(int(within[key]), transaction_timeout_ms + allowance)
    return within


# librdkafka stops fetching for a consumer whose queue holds queued.min.messages (100,000) and
# looks again only after fetch.queue.backoff.ms, 1 s by default. A consumer reading a backlog
# faster than 100,000 records a second (the comparison service, `rendezvous compare`, recovery)
# emptied its queue within that second and sat idle for the rest of it: 0.5 s of a 1.5 s read
# of 200,000 records (bench/comparison_throughput.py). Looking again after 20 ms keeps it fed.
FETCH_AHEAD: dict[str, Any] = {"fetch.queue.backoff.ms": 20}
# Errors a consumed message may carry that librdkafka gets past itself. Told by their codes: the
# binding builds a message's KafkaError with retriable() and fatal() always False, so every one
# stopped the service, _MAX_POLL_EXCEEDED too (one model call longer than max.poll.interval.ms,
# after which librdkafka rejoins the group; a review).
_CONSUME_TRANSIENT = frozenset({
    KafkaError._MAX_POLL_EXCEEDED, KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
})
CONSUMER_DEFAULTS: dict[str, Any] = {
    **FETCH_AHEAD,
    # We commit explicitly, only what is finished (docs/architecture.md, "Commit orders").
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    # With fetch.min.bytes=1 the broker answers as soon as data arrives, so a longer wait adds
    # no latency; it only stops idle consumers from polling the broker 100 times a second.
    "fetch.wait.max.ms": 100,
    "socket.nagle.disable": True,
}


# librdkafka's own log lines go through Python logging (not straight to stderr), so the
# services' log format and level apply to them too; with its error events, one line per kind of
# event per client per period (kafka_logs).
LIBRDKAFKA_LOG = kafka_logs.LIBRDKAFKA_LOG


def new_client(kind: Callable[[dict[str, Any]], T], config: dict[str, Any]) -> T:
    """A librdkafka client; a configuration it refuses is a `ConfigError` that quotes no value."""
    try:
        return kind(config)
    except (KafkaException, ValueError, TypeError) as exc:
        err = exc.args[0] if exc.args else exc
        text = err.str() if isinstance(err, KafkaError) else str(err)
        raise ConfigError(f"{kafka_config.FLAG}: librdkafka refused the configuration: "
                          f"{kafka_config.describe_refusal(text, config)}") from None


def _whole_bytes(config: Mapping[str, Any], key: str) -> int:
    """A size the producer reads before librdkafka checks the configuration: one it would refuse
    is a one-line `ConfigError`, not a traceback."""
    try:
        return int(config.get(key, LIBRDKAFKA_MESSAGE_MAX_BYTES))
    except (TypeError, ValueError):
        raise ConfigError(f"{kafka_config.FLAG}: {key} must be a whole number of bytes") from None


# How long to wait for a broker when the caller names no timeout: --connect-timeout-s of the
# command (`set_connect_timeout`), so every wait of a command honours the one flag.
_connect_timeout_s = 15.0


def set_connect_timeout(seconds: float) -> None:
    global _connect_timeout_s
    _connect_timeout_s = seconds


def connect_timeout() -> float:
    return _connect_timeout_s


def _log_client_error(err: KafkaError) -> None:
    # librdkafka reports transient broker trouble here and retries by itself.
    level = logging.ERROR if err.fatal() else logging.WARNING
    log.log(level, "kafka client: %s", err.str())


LIBRDKAFKA_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes
# Bytes librdkafka adds to a record's key and value when it checks message.max.bytes (its v2
# record's framing, measured at 36), and per header: with some margin.
RECORD_OVERHEAD = 64
HEADER_OVERHEAD = 16
# A topic's max.message.bytes bounds a whole record *batch*: its header (61 bytes in the v2
# format) comes on top of the records.
BATCH_OVERHEAD = 64
# Delivery errors after which re-reading and producing again can succeed (the broker away or slow).
# _PURGE_QUEUE: taken back from a client replaced for being stuck (`Producer._replace_if_stuck`) and not
# queued again (a second time, or no room): as a timeout, redo the work.
_PASSING = {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError.REQUEST_TIMED_OUT,
            KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND, KafkaError._ALL_BROKERS_DOWN,
            KafkaError._PURGE_QUEUE}


# Delivery errors the broker would give the same record again.
_LASTING = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE,
            KafkaError.INVALID_RECORD, KafkaError.POLICY_VIOLATION, KafkaError.TOPIC_EXCEPTION}


def _delivery_failure(err: KafkaError, topic: str, partition: int | None = None) -> DeliveryFailed:
    """A transient failure voids the work that made the record (`OutputsLost`: redo it); one the
    broker would repeat (`RefusedForGood`: a missing permission, a record the topic refuses, the
    topic gone) is raised as it is, as is anything else: redoing the work would not help."""
    if err.code() in _GONE:
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


def kafka_message(exc: KafkaException) -> str:
    """What a confluent-kafka exception says, for a person: its error's text, not the
    `KafkaError{code=...,val=...,str="..."}` its str() gives (a review)."""
    err = kafka_error(exc)
    return err.str() if err is not None else str(exc)


def refused_for_good(err: KafkaError, where: str) -> RefusedForGood | None:
    """The failure as `RefusedForGood` if the broker would refuse the same record again (e.g. a
    transaction failed by a record over its topic's limit), else None."""
    failure = _delivery_failure(err, where)
    return failure if isinstance(failure, RefusedForGood) else None


class Producer:
    """A producer whose delivery failures surface as exceptions.

    `delivered`: hear of every record's delivery (`delivered_ends`, `produce(on_done=...)`).
    Without it, failures only (`delivery.report.only.error`, which confluent-kafka applies itself:
    librdkafka still reports every record to the binding, which calls no Python function for a
    delivered one — ~0.8 µs of the producing thread a record, docs/benchmarks.md); `poll` and
    `flush` serve the reports as before.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        soft_topics: Callable[[str], bool] = lambda _topic: False,
        on_soft_failure: Callable[[Message, KafkaError], None] | None = None,
        delivered: bool = False,
        topic_limits: Mapping[str, int] | None = None,
    ):
        merged = kafka_logs.wired({**PRODUCER_DEFAULTS, **config, "delivery.report.only.error": not delivered})
        self._max_record = _whole_bytes(merged, "message.max.bytes")
        # topic -> the largest record it takes: the producer's limit, or the topic's own if lower.
        self._limits = {t: min(self._max_record, limit - BATCH_OVERHEAD) for t, limit in (topic_limits or {}).items()}
        if self._limits:
            # librdkafka fills a batch up to batch.size: several records that each fit a topic
            # could still make a batch the broker refuses (for good, as they would be resent alike).
            merged["batch.size"] = max(1, min(_whole_bytes(merged, "batch.size"), *self._limits.values()))
        self._delivered = delivered
        self._config = merged
        self._producer = new_client(_Producer, merged)
        self._transactional = "transactional.id" in merged
        # A record of the current client timed out undelivered (`timed_out`). Which client a report
        # is of, its delivery callback says: an undelivered record carries no timestamp to tell.
        self._stuck = False
        self._generation = 0
        self._report = functools.partial(self._on_delivery, 0, None, False)
        # Clients replaced for being stuck, served by poll and flush until they hold nothing.
        self._retiring: list[_Producer] = []
        self._replace_lock = threading.Lock()
        # `close` let the clients go; what they still held is dropped, its reports ignored.
        self._closed = False
        # `_in_cluster_now`: when the cluster's metadata was last asked (monotonic), and each
        # topic's partition count it gave.
        self._partitions_asked_at = -math.inf
        self._partitions_seen: dict[str, int] = {}
        self._dropped = 0  # how many records that was (a flush after the close says so)
        # Appended by delivery reports on whichever thread polls, taken by flush on another.
        self._failures_lock = threading.Lock()
        self._failures: list[DeliveryFailed] = []
        self._is_soft = soft_topics
        self._on_soft_failure = on_soft_failure
        # (topic, partition) -> one past the highest offset delivered: where outputs end now
        # (kept with `delivered` only).
        self.delivered_ends: dict[tuple[str, int], int] = {}

    def _callback(self, on_done: Callable[[], None] | None,
                  sent_again: bool = False) -> Callable[[KafkaError | None, Message], None]:
        """The delivery callback of a record produced now: it knows its client's generation, and
        whether the record was taken back from a replaced client once already."""
        if on_done is None and not sent_again:
            return self._report
        return functools.partial(self._on_delivery, self._generation, on_done, sent_again)

    def _on_delivery(self, generation: int, on_done: Callable[[], None] | None, sent_again: bool,
                     err: KafkaError | None, msg: Message) -> None:
        if self._closed:
            return  # dropped by `close`: not reported, as before (a receipt would mark a reply sent)
        if err is None:  # inline: every record of a producer made with `delivered` comes here
            key = (msg.topic() or "", msg.partition() or 0)
            end = (msg.offset() or 0) + 1
            if end > self.delivered_ends.get(key, 0):
                self.delivered_ends[key] = end
        else:
            # Taken back from a client replaced for being stuck (only `_replace_if_stuck` purges):
            # sent on the current one; its report, and `on_done`, come from there. Once: each send
            # starts a new message.timeout.ms, and a broker away for long would replace client
            # after client, its records never failing (a gateway's caller waits for that failure).
            taken_back = err.code() == KafkaError._PURGE_QUEUE and generation != self._generation
            if taken_back and not sent_again and self._send_again(msg, on_done):
                return
            self._failed(generation, err, msg)
        if on_done is not None:
            on_done()

    def _send_again(self, msg: Message, on_done: Callable[[], None] | None) -> bool:
        kwargs: dict[str, Any] = {"on_delivery": self._callback(on_done, sent_again=True)}
        partition, headers = msg.partition(), msg.headers()
        if partition is not None and partition >= 0:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        try:
            self._producer.produce(msg.topic() or "", msg.value(), msg.key(), **kwargs)
        except (BufferError, KafkaException) as exc:
            more = _once_a_minute("not queued again")  # a full queue refuses thousands at once
            if more is not None:
                log.warning("a record taken back from a replaced client could not be queued again (%s): failed%s",
                            exc, more)
            return False
        return True

    def _failed(self, generation: int, err: KafkaError, msg: Message) -> None:
        if err.code() == KafkaError._MSG_TIMED_OUT and generation == self._generation:
            self._stuck = True
        topic = msg.topic() or "?"
        if self._is_soft(topic) and self._on_soft_failure is not None:
            self._on_soft_failure(msg, err)
            return
        with self._failures_lock:
            self._failures.append(_delivery_failure(err, topic, msg.partition()))

    def forget_ends(self, keys: Iterable[tuple[str, int]]) -> None:
        """Forget where these (topic, partition)s' outputs ended (partitions given up)."""
        for key in keys:
            self.delivered_ends.pop(key, None)

    def raise_failures(self) -> None:
        with self._failures_lock:
            failures, self._failures = self._failures, []
        if failures:
            # One that re-reading cannot mend (a missing permission, a refusal for good) first.
            first = next((f for f in failures if not isinstance(f, OutputsLost)), failures[0])
            if len(failures) > 1:
                raise type(first)(f"{first.message} (and {len(failures) - 1} more)", retriable=first.retriable)
            raise first

    def lasting_failure(self) -> RefusedForGood | None:
        """A failure that redoing the work would meet again, if one is pending."""
        with self._failures_lock:
            return next((f for f in self._failures if isinstance(f, RefusedForGood)), None)

    def topic_limit(self, topic: str) -> int | None:
        """The largest record `topic` takes, if its limit was read at start (`topic_limits`)."""
        return self._limits.get(topic)

    def check_size(
        self, value: bytes | None, key: bytes | str | None = None, headers: Sequence[tuple[str, bytes]] | None = None,
        topic: str | None = None,
    ) -> None:
        """`RecordTooLarge` if the client would refuse this record, or `topic` would (if its limit
        was given): checked before it is held or queued. librdkafka counts the record's framing
        and its headers too: the margin covers both."""
        size = len(value or b"") + len(key or b"") + RECORD_OVERHEAD
        for name, header in headers or ():
            size += len(name) + len(header or b"") + HEADER_OVERHEAD
        if size <= self._max_record and (topic is None or size <= self._limits.get(topic, size)):
            return
        if size > self._max_record:
            raise RecordTooLarge(f"a record of {size} bytes is over the producer's message.max.bytes "
                                 f"({self._max_record})")
        raise RecordTooLarge(f"a record of {size} bytes is over what {topic} takes (its max.message.bytes "
                             f"less a batch's framing: {self._limits.get(topic or '')})")

    def renew(self) -> None:
        """Replace the client with a new one of the same configuration (the old one is
        abandoned as it is: e.g. wedged inside a call that never returns)."""
        self._new_client()
        with self._failures_lock:
            self._failures = []

    def _new_client(self) -> _Producer:
        """The old client, replaced by a new one of the same configuration."""
        old, self._producer = self._producer, new_client(_Producer, self._config)
        self._generation += 1
        self._report = functools.partial(self._on_delivery, self._generation, None, False)
        self._stuck = False
        return old

    def discard_failures(self) -> None:
        """Forget delivery failures of outputs that were aborted with their transaction."""
        with self._failures_lock:
            self._failures = []
        self._stuck = False

    @property
    def timed_out(self) -> bool:
        """A record of this client found nobody to take it for its whole message.timeout.ms.

        While the broker is away, that is the outage. After a broker restart it can also be the
        client itself: librdkafka (2.16, issue #5430) may take a partition's "leader -1" of a
        Produce answer as news it cannot place ("new leader-1 not found in cache") and keep that
        partition without a leader for good, its records timing out while the broker answers
        everyone else. A new client does not inherit that. A transactional producer is replaced
        by its committer (a new one must fence the old); any other replaces itself at its next
        `produce` or `poll` (`_replace_if_stuck`)."""
        return self._stuck

    def _replace_if_stuck(self) -> None:
        """A new client for the records to come. What the old one still queues is taken back
        (purged) and sent again on the new one as its reports come; what it has in
        flight ends there. `poll` and `flush` serve it until it holds nothing: a failure of its
        records is raised by `flush` as any other (the timed-out one's too: kept)."""
        with self._replace_lock:
            if not self._stuck or self._closed:
                return  # another thread replaced it just now, or closed the producer (no client after that)
            old = self._new_client()
            old.purge(in_queue=True, in_flight=False, blocking=True)
            self._retiring.append(old)
        PRODUCERS_REPLACED.labels("timed_out").inc()
        more = _once_a_minute("replaced")  # while the broker is away, client after client
        if more is not None:
            log.warning("a record timed out undelivered while this client was in use: replaced it by a new one (after "
                        "a broker restart librdkafka can leave a client without a partition's leader for good, issue "
                        "#5430); records still queued in the old client are sent again on the new one%s", more)

    def _serve_retiring(self, timeout: float = 0.0) -> int:
        """Serve replaced clients' delivery reports (within `timeout` in all); those holding
        nothing more are let go. Returns how many records they still hold."""
        with self._replace_lock:
            retiring = list(self._retiring)
        deadline, left = time.monotonic() + timeout, 0
        for old in retiring:
            if timeout:
                held = old.flush(max(0.0, deadline - time.monotonic()))
            else:
                old.poll(0)
                held = len(old)
            if held:
                left += held
                continue
            with self._replace_lock:
                if old in self._retiring:  # another thread serving it may have let it go just now
                    self._retiring.remove(old)
        return left

    def pending(self) -> int:
        """Records queued or in flight, in the current client and in clients being replaced."""
        with self._replace_lock:
            retiring = list(self._retiring)
        return len(self._producer) + sum(len(old) for old in retiring)

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        on_done: Callable[[], None] | None = None,
        checked: bool = False,
        wait_when_full: bool = True,
        give_up_at: float | None = None,
    ) -> None:
        """`on_done` is called once the broker acknowledged or refused the record (from `poll`;
        only for a producer made with `delivered`). Failures of earlier records are raised by
        `flush` (and a transaction's commit), where they are handled, never by a later produce:
        that one would fail a caller, or a batch, they do not belong to. With librdkafka's local
        queue full it waits for room (`wait_when_full`), until `give_up_at` (time.monotonic) if given."""
        if on_done is not None and not self._delivered:
            raise ValueError("on_done needs a producer made with delivered=True")
        if not checked and topic in self._limits:  # `checked`: the caller just ran check_size
            # librdkafka knows only its own limit: the topic's would refuse the record later, for good.
            self.check_size(value, key, headers, topic)
        if self._stuck and not self._transactional:  # first: the record's callback names the new client
            self._replace_if_stuck()
        kwargs: dict[str, Any] = {"on_delivery": self._callback(on_done)}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = list(headers)
        refreshed = False
        while True:
            if self._closed:  # closed on another thread (while this waited for room): its client is gone, or going
                raise KafkaOperationError(f"produce to {topic} refused: the producer is closed")
            try:
                self._producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                # Room is waited for until give_up_at (never, without one), unless not at all.
                give_up = (give_up_at if give_up_at is not None else math.inf) if wait_when_full else -math.inf
                if time.monotonic() >= give_up:
                    raise KafkaOperationError(f"produce to {topic} refused: the client's local queue is full "
                                              "(the broker is not taking records as fast as they come)") from None
                # Local queue full: serve delivery reports until there is room again (a close on
                # another thread meanwhile ends the wait: the next produce is refused).
                with contextlib.suppress(RuntimeError):
                    self._producer.poll(0.05)
            except RuntimeError:  # confluent-kafka's "Producer has been closed"
                raise KafkaOperationError(f"produce to {topic} refused: the producer is closed") from None
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise RecordTooLarge(f"a record of {len(value or b'') + len(key or b'')} bytes for {topic} "
                                         f"is over the producer's message.max.bytes") from None
                if isinstance(err, KafkaError) and err.code() in _GONE:
                    if not refreshed and self._in_cluster_now(topic, partition):
                        refreshed = True
                        continue
                    raise topic_gone(topic, partition, err) from None
                if isinstance(err, KafkaError) and _in_error_state(err):
                    raise ProducerInErrorState(f"produce to {topic} failed: {exc}") from None
                raise KafkaOperationError(f"produce to {topic} failed: {exc}") from None

    def _in_cluster_now(self, topic: str, partition: int | None) -> bool:
        """Whether the topic (and `partition`, if one is asked for), unknown to the client, is in
        the cluster now. librdkafka refuses a partition added since it last read the topic's
        metadata until its next refresh (5 min by default): topics grown together under a running
        rendezvous (docs/helm.md) had it dead-letter 750 records of the new partitions, or stop on a
        clock record (a review). So too a topic deleted and made again: 18 replies to a return
        address made again were refused (a review). The whole cluster's metadata is asked (the
        client keeps it: every topic grown is known at once), once a second at most and for
        PARTITIONS_ASKED_S at most (the caller may hold a commit lane's lock); a produce between is
        answered from the last reply."""
        now = time.monotonic()
        if now - self._partitions_asked_at >= PARTITIONS_ASKED_EVERY_S:
            try:
                topics = self._producer.list_topics(timeout=PARTITIONS_ASKED_S).topics
                self._partitions_seen = {name: len(meta.partitions) for name, meta in topics.items()
                                         if meta.error is None}
            except (KafkaException, RuntimeError):  # RuntimeError: closed on another thread meanwhile
                pass  # the last answer stands
            # From the answer: stamped before, a question that timed out (1 s) let the next produce
            # ask, and wait, again at once (a review).
            self._partitions_asked_at = time.monotonic()
        count = self._partitions_seen.get(topic, 0)
        return count > 0 if partition is None or partition < 0 else partition < count

    def poll(self, timeout: float = 0.0) -> None:
        if self._closed:
            return
        if self._stuck and not self._transactional:
            self._replace_if_stuck()
        if self._retiring:
            self._serve_retiring()
        self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every record is acknowledged; raise if any was refused or still pending.
        Replaced clients first: what they took back is sent again on the current one. (A client
        replaced by another thread during this flush may have its records sent again after the
        current client's flush began; the flush still raises, because the timed-out record that
        made the replacement is a failure kept for it: at-least-once re-reads.)"""
        remaining = 0
        if not self._closed:
            with contextlib.suppress(RuntimeError):  # its client destroyed by a close on another thread meanwhile
                remaining = self._flush_all(timeout)
            self.raise_failures()
        if self._closed:  # closed before or during this flush: what the close dropped was not delivered
            if self._dropped or remaining:
                raise DeliveryFailed(f"{self._dropped or remaining} records were dropped undelivered when the "
                                     "producer was closed")
            return
        if remaining:
            raise DeliveryFailed(f"{remaining} records not acknowledged within {round(timeout, 2):g}s", retriable=True)

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is queued within `timeout`, then let the client go: its threads and
        sockets end now, not when the garbage collector finds this object (a Client and its
        producer refer to each other: a closed client's threads stayed for as long as it was
        kept). Best effort, never raises; returns how many records were still held (dropped).
        What is dropped is not reported, as with a client the collector destroyed: a rendezvous'
        reply purged here would have its receipt (`on_done`) mark it sent, and the request be
        committed at the revoke without its reply (a review). A produce after it raises
        KafkaOperationError; a poll, a flush and a second close do nothing."""
        if self._closed:
            return 0
        held = self.flush_quietly(timeout)
        with self._replace_lock:  # under the lock a replacement takes: no client is made after this
            # Set together: a flush on another thread that sees the close sees what it drops.
            self._closed, self._dropped = True, held
            clients, self._retiring = [*self._retiring, self._producer], []
        self._dropped = max(held, sum(_let_go(client) for client in clients))
        return self._dropped

    def flush_quietly(self, timeout: float) -> int:
        """Deliver what is queued within `timeout`; how many records are still held. Never raises
        (failures stay for `flush` or `raise_failures`)."""
        if self._closed:
            return 0
        try:
            return self._flush_all(timeout)
        except KafkaException as exc:
            log.warning("records still undelivered: %s", exc)
            return self.pending()

    def _flush_all(self, timeout: float) -> int:
        """Replaced clients first (what they took back is sent again on the current one), then
        the current client, within `timeout` in all; how many records are still held."""
        deadline = time.monotonic() + timeout
        left = self._serve_retiring(timeout) if self._retiring else 0
        return left + self._producer.flush(max(0.0, deadline - time.monotonic()))

    @property
    def native(self) -> _Producer:
        return self._producer


def _let_go(client: _Producer) -> int:
    """Destroy a producer client now; how many records it still held (dropped). They are dropped
    first: confluent-kafka's close flushes without a time limit (a broker away would hold the
    caller for good), and a client still holding records is left to the garbage collector, as
    before, rather than risked. Purged again while a produce on another thread that passed its
    check before the close adds one (a review)."""
    dropped = len(client)  # a record a racing produce adds in the next microseconds is not counted
    try:
        for _ in range(3):
            if not len(client):
                client.close()
                break
            client.purge(in_queue=True, in_flight=True, blocking=True)
            client.poll(0)  # the purged records' reports, ignored (`Producer._closed`)
    except (KafkaException, RuntimeError) as exc:  # already closed, or a client in a fatal state
        log.debug("producer client not closed: %s", exc)
    return dropped


_REPLACEMENTS_SAID: OncePerPeriod[str] = OncePerPeriod(60.0)
_REPLACEMENTS_SAID_LOCK = threading.Lock()


def _once_a_minute(kind: str) -> str | None:
    """None: a line of this kind was said less than a minute ago (counted). Else what to add to
    the line: how many were held back since the last."""
    with _REPLACEMENTS_SAID_LOCK:
        held = _REPLACEMENTS_SAID.passes(kind)
    return None if held is None else held.repeated()


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
                source = Source(msg.topic() or "?", -1 if partition is None else partition,
                                -1 if offset is None else offset)
                refused = refusal(err, "READ", msg.topic() or "?")
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
            err = exc.args[0] if exc.args else None
            code = err.code() if isinstance(err, KafkaError) else None
            if code in _REBALANCED:
                raise CommitRejected(f"commit refused after a rebalance: {exc}") from None
            retriable = code in _TRANSIENT or bool(isinstance(err, KafkaError) and err.retriable())
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


_AUTHORIZATION = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "group",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional_id",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
}


def refusal(err: KafkaError, operation: str, topic: str) -> str | None:
    """One line naming the missing permission on `topic` if the broker refused for lack of one."""
    resource, name = "topic", topic
    kind = _AUTHORIZATION.get(err.code())
    if kind is None:
        return None
    if kind != resource:  # e.g. a write refused for want of an idempotent/transactional grant
        return f"not authorized: the broker refused {operation} on {resource} {name} ({err.str()}); " \
               f"the principal lacks a permission on a {kind} (see `rendezvous acl show`)"
    return (f"not authorized to {operation.lower()} {resource} {name}: the principal needs {operation} on "
            f"{resource} {name} (see `rendezvous acl show`)")


def admin(config: Mapping[str, Any]) -> AdminClient:
    return new_client(AdminClient, kafka_logs.wired(dict(config)))


class _QuietLog:
    """librdkafka's log lines while waiting for the broker, at DEBUG: the wait reports its outcome
    once. Each line is handed to `seen` too (some failures reach its log alone, not error_cb)."""

    def __init__(self, seen: Callable[[str], None] = lambda _line: None) -> None:
        self._seen = seen

    def log(self, _level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        LIBRDKAFKA_LOG.log(logging.DEBUG, msg, *args, **kwargs)
        self._seen(msg % args if args else msg)


# Short first metadata attempts, so a refused login (reported through error_cb, served between
# attempts) ends the wait in about a second; then 2 s attempts as a slow link may need.
_ATTEMPT_TIMEOUTS = (0.25, 0.5, 1.0)
_ATTEMPT_TIMEOUT_MAX = 2.0


def _without_secrets(text: str, config: Mapping[str, Any]) -> str:
    """librdkafka's `text` with no value of a setting outside the allow-list, should it quote one."""
    masked = kafka_config.describe_refusal(text, config)
    for key, value in config.items():
        if key not in kafka_config.SHOWN and isinstance(value, str) and len(value) >= 3:
            masked = masked.replace(value, kafka_config.MASK)
    return masked


# Client errors that end the wait for a broker at once, with what to say: refused credentials, or
# a certificate we do not trust, will not mend by retrying until the timeout.
_FINAL_ERRORS = {
    KafkaError._AUTHENTICATION:
        "Kafka refused the credentials at {bootstrap}: {reason}; check sasl.username/sasl.password",
    KafkaError._SSL:
        "TLS handshake with {bootstrap} failed: {reason}; is ssl.ca.location the CA that signed the broker's "
        "certificate?",
}


# A client speaking SASL to a listener without it (the broker's own answer): said at once, not as
# refused credentials (a review).
_NO_SASL_THERE = re.compile(r"Request not valid in current SASL state|supported mechanisms:\s*(\(|$)")
# What a protocol mismatch looks like from the client, said with the timeout's error: not final,
# since a proxy or a broker restarting closes connections so too (a TLS wait ended at once on a
# proxy's first closes, though the broker came 4 s later: the review of a first form). A TLS
# handshake closed (librdkafka's own guess: a plaintext listener), or a plaintext client's first
# request closed (what a TLS listener does).
_MISMATCH_HINTS = {
    "PLAINTEXT broker listener?": ("closed the TLS handshake, as a plaintext listener does", {
        "ssl": "PLAINTEXT", "sasl_ssl": "SASL_PLAINTEXT"}),
    "in state APIVERSION_QUERY": ("closed each connection at the client's first request, as a TLS listener does "
                                  "to a plaintext client", {"plaintext": "SSL", "sasl_plaintext": "SASL_SSL"}),
}
WAIT_SAID_AFTER_S = 5.0  # a wait for the broker longer than this is logged once (at start-up, said)


def _final_error(err: KafkaError, bootstrap: Any) -> str | None:
    """What to say of a client error that ends the wait for a broker at once, or None."""
    reason = err.str()
    if err.code() == KafkaError._AUTHENTICATION and _NO_SASL_THERE.search(reason):
        return (f"the listener at {bootstrap} does not use SASL ({reason}): check security.protocol "
                "(PLAINTEXT or SSL there) and the port")
    template = _FINAL_ERRORS.get(err.code())
    return template.format(bootstrap=bootstrap, reason=reason) if template else None


def _mismatch_hint(reason: str, protocol: str) -> str | None:
    """A hint for the timeout's error, if `reason` looks like a protocol mismatch for `protocol`."""
    for sign, (what, instead) in _MISMATCH_HINTS.items():
        if sign in reason and protocol.lower() in instead:
            return f"it {what}: security.protocol={instead[protocol.lower()]}?"
    return None


# How a connection's failure reads, in error_cb's text and in librdkafka's log lines.
_CONNECTION_FAILED = ("Disconnected", "Connect to", "handshake failed")


# A connection to a broker the cluster advertised failing: librdkafka names such a broker
# `host:port/<its id>` (a bootstrap address is `host:port/bootstrap`).
_ADVERTISED_FAILED = re.compile(r"(?:^|\s)([^\s/]+:\d+)/\d+: (?:Connect to|Disconnected)")


class _LatestFailure:
    """The hint of the latest connection failure seen (None: it looked like no mismatch): kept for
    the whole wait, a few handshakes a proxy closed told a TLS client whose broker was then down
    to use PLAINTEXT (a review). `advertised`: an address the cluster advertised that failed (in
    librdkafka's lines, or a connection of ours after its metadata came)."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.hint: str | None = None
        self.advertised: str | None = None

    def see(self, text: str) -> None:
        if any(sign in text for sign in _CONNECTION_FAILED):
            # A connection not even made (the listener gone) clears the hint; another close,
            # worded without the sign, does not (a CI run lost the hint to one, under load).
            hint = _mismatch_hint(text, self.protocol)
            if hint is not None or "Connect to" in text:
                self.hint = hint
            found = _ADVERTISED_FAILED.search(text)
            if found:
                self.advertised = found.group(1)


def partition_end(consumer: Any, tp: TopicPartition) -> int:
    """The partition's end offset now, asked of the broker (a native consumer's; KafkaException
    if it does not answer)."""
    _low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
    return int(high)


def wait_for_broker(config: Mapping[str, Any], timeout: float | None = None) -> Any:
    """Return cluster metadata once a broker answers; `BrokerUnavailable` after `timeout`
    (default: the command's --connect-timeout-s, see `set_connect_timeout`); `StoppedWaiting`
    as soon as the process is asked to stop (a service's SIGTERM would wait out the timeout).

    A broker that refuses the client's SASL credentials ends the wait at once with `BrokerError`
    (librdkafka itself would retry until the timeout). Other client errors are expected while a
    broker starts: they are logged at DEBUG (fatal ones at ERROR) and summed up in the final error.
    """
    timeout = _connect_timeout_s if timeout is None else timeout
    bootstrap = config.get("bootstrap.servers")
    final: list[str] = []  # what to say of errors retrying cannot mend (`_final_error`)
    latest = _LatestFailure(str(config.get("security.protocol", "plaintext")))  # for the timeout's error
    caller_cb = config.get("error_cb")

    def on_error(err: KafkaError) -> None:
        said = _final_error(err, bootstrap)
        if said is not None:
            final.append(_without_secrets(said, config))
        elif err.fatal():
            _log_client_error(err)
        else:
            latest.see(err.str())
            log.debug("kafka client, waiting for the broker: %s", err.str())
        if callable(caller_cb):
            caller_cb(err)

    merged: dict[str, Any] = {**config, "error_cb": on_error, "logger": _QuietLog(latest.see)}
    client = new_client(AdminClient, merged)
    started = time.monotonic()
    deadline = started + timeout
    last = "no answer"
    attempt = 0
    said_waiting = False
    while True:
        step = _ATTEMPT_TIMEOUTS[attempt] if attempt < len(_ATTEMPT_TIMEOUTS) else _ATTEMPT_TIMEOUT_MAX
        attempt += 1
        try:
            metadata = client.list_topics(timeout=min(step, max(0.1, deadline - time.monotonic())))
            unreachable = _advertised_unreachable(metadata, max(0.2, min(2.0, deadline - time.monotonic())))
            if unreachable is None:
                return metadata
            latest.advertised, last = unreachable, "its metadata came"
        except KafkaException as exc:
            err = kafka_error(exc)
            last = err.str() if err is not None else str(exc)
        client.poll(0)  # serves error_cb (and log lines) queued during the attempt
        if stop_requested():
            raise StoppedWaiting(f"asked to stop while waiting for a Kafka broker at {bootstrap!r}")
        if final:
            raise BrokerError(final[0])
        now = time.monotonic()
        if now >= deadline:
            # The bootstrap answered, and the address it advertises (another one) did not.
            if latest.advertised not in (None, *str(bootstrap).split(",")) and latest.hint is None:
                said = ADVERTISED_UNREACHABLE.format(bootstrap=bootstrap, unreachable=latest.advertised)
                raise BrokerUnavailable(f"{said} ({last})")
            mismatch = f" ({latest.hint})" if latest.hint else ""
            raise BrokerUnavailable(
                f"no Kafka broker answered at {bootstrap!r} within {timeout:g}s "
                f"({last}){mismatch}; start one with `rendezvous broker start`, or check --bootstrap (and, for a "
                "cluster that wants TLS or SASL, --kafka-config security.protocol=...)"
            )
        if not said_waiting and now - started >= WAIT_SAID_AFTER_S:
            said_waiting = True  # once: the service's log was silent until the timeout's error (a review)
            log.warning("no Kafka broker answered at %r for %.0fs yet (%s); waiting up to %gs", bootstrap,
                        now - started, last, timeout)


ADVERTISED_UNREACHABLE = ("the broker at {bootstrap} answered, but advertises {unreachable}, which does not answer "
                          "from here: check its advertised.listeners (a container's or a NAT's inside address?)")
# Advertised broker addresses this process has reached once: asked again of none (a command's waits
# for the broker are several, a service's one per client).
_REACHED: set[tuple[str, int]] = set()


def _advertised_unreachable(metadata: Any, timeout_s: float) -> str | None:
    """The addresses the cluster advertises, if not one of them takes a connection from here; None
    when one does (or it advertises none). A broker reached at its bootstrap address but advertising
    one unreachable from here (advertised.listeners naming a container's address, or a NAT's
    inside one) failed every later call slowly, in librdkafka's words: 'Failed to get watermark
    offsets: Local: Broker handle destroyed', a topic's creation timed out after 60 s (a review)."""
    addresses = sorted({(str(b.host), int(b.port)) for b in getattr(metadata, "brokers", {}).values()})
    if not addresses or any(address in _REACHED for address in addresses):
        return None
    failed = []
    for host, port in addresses:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                _REACHED.add((host, port))
                return None
        except OSError as err:
            failed.append(f"{host}:{port} ({err.strerror or type(err).__name__})")
    return ", ".join(failed)


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
        if exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].code() in _AUTHORIZATION:
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
        raise _absent(config, missing, min(10.0, _connect_timeout_s if timeout is None else timeout))
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
    """The broker's answer to describing each topic by name: None, or its error (UNKNOWN_TOPIC_OR_PART,
    TOPIC_AUTHORIZATION_FAILED, ...); a topic not answered within `timeout` is left out. One request,
    by an admin client, which never has a topic created."""
    from confluent_kafka import TopicCollection

    client = admin(config)  # held until the results are in: a client collected meanwhile fails them
    try:
        futures = client.describe_topics(TopicCollection(topics), request_timeout=max(0.5, timeout))
    except KafkaException:
        return {}
    answers: dict[str, KafkaError | None] = {}
    for topic, future in futures.items():
        try:
            future.result(timeout=max(0.5, timeout))
            answers[topic] = None
        except KafkaException as exc:
            if exc.args and isinstance(exc.args[0], KafkaError):
                answers[topic] = exc.args[0]
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
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
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
