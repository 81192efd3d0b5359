"""`Producer`: a producer whose delivery failures surface as exceptions. A full local queue is
waited out (`BufferError` -> `poll`); a failure the delivery callback reports is raised by the next
`flush` (and a transaction's commit), not only logged, except for topics the caller marks "soft"
(clients' reply topics), whose failures go to a callback and are counted: a client's bad return
address must not stop the rendezvous. A client stuck after a broker restart is replaced."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import Producer as _Producer

from services.core import kafka_config, kafka_logs
from services.core.errors import (
    ConfigError,
    DeliveryFailed,
    KafkaOperationError,
    OutputsLost,
    ProducerInErrorState,
    RecordTooLarge,
    RefusedForGood,
)
from services.core.kafka.client_config import PRODUCER_DEFAULTS
from services.core.kafka.connect import new_client
from services.core.kafka.error_kinds import GONE, delivery_failure, in_error_state, kafka_error, topic_gone
from services.core.metrics import PRODUCERS_REPLACED
from services.core.rate_limit import OncePerPeriod

log = logging.getLogger(__name__)


# A produce to a partition the client does not know waits this long for the topic's metadata, and
# asks it this often at most (`Producer._in_cluster_now`).
PARTITIONS_ASKED_S = 1.0
PARTITIONS_ASKED_EVERY_S = 1.0


def _whole_bytes(config: Mapping[str, Any], key: str) -> int:
    """A size the producer reads before librdkafka checks the configuration: one it would refuse
    is a one-line `ConfigError`, not a traceback."""
    try:
        return int(config.get(key, LIBRDKAFKA_MESSAGE_MAX_BYTES))
    except (TypeError, ValueError):
        raise ConfigError(f"{kafka_config.FLAG}: {key} must be a whole number of bytes") from None


LIBRDKAFKA_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes
# Bytes librdkafka adds to a record's key and value when it checks message.max.bytes (its v2
# record's framing, measured at 36), and per header: with some margin.
RECORD_OVERHEAD = 64
HEADER_OVERHEAD = 16
# A topic's max.message.bytes bounds a whole record *batch*: its header (61 bytes in the v2
# format) comes on top of the records.
BATCH_OVERHEAD = 64


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
            self._failures.append(delivery_failure(err, topic, msg.partition()))

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
                err = kafka_error(exc)
                if err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise RecordTooLarge(f"a record of {len(value or b'') + len(key or b'')} bytes for {topic} "
                                         f"is over the producer's message.max.bytes") from None
                if err is not None and err.code() in GONE:
                    if not refreshed and self._in_cluster_now(topic, partition):
                        refreshed = True
                        continue
                    raise topic_gone(topic, partition, err) from None
                if err is not None and in_error_state(err):
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
