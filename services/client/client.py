"""Send scoring requests over Kafka and await their answers.

The return address is a reply topic and a partition of it that this client reads. Either
- one partition, assigned directly (no consumer group): the default, for scripts and tests; or
- the partitions a consumer group gives it (`reply_group`): several long-lived clients (the HTTP
  gateways) join one group on the replies topic, so each partition has exactly one reader, and
  every request names one of the partitions its client owns at that moment. A partition that
  moves to another member fails only the requests waiting on it (`ReplyPartitionLost`).

Answers are correlated by request_id and the digest of the inputs they answer (the reply's
`rdv-inputs` header, core/request_inputs.py); answers for other clients that share the partition
are ignored, under the same id too. The client starts reading a partition at its end offset *before* it sends anything
naming it, so no answer can slip past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import numbers
import random
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_END, KafkaError, KafkaException, Message, TopicPartition

from services.core import kafka_config
from services.core.codec import codec
from services.core.errors import (
    BadInput,
    BrokerError,
    ConfigError,
    DeliveryFailed,
    LookupsSpent,
    RecordTooLarge,
    RendezvousError,
)
from services.core.futures import fail, settle
from services.core.kafka import (
    MAX_TIMEOUT_MS,
    SERVING_DELIVERY_TIMEOUT_MS,
    Consumer,
    Producer,
    delivery_timeout,
    groupless,
    partition_counts,
)
from services.core.rate_limit import OncePerPeriod
from services.core.request_inputs import encoded_with_digest, inputs_in
from services.core.requests import id_too_long, request_problem
from services.core.runtime import now_ms
from services.core.settings import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    request_id: str
    status: str
    model: str | None
    version: str | None
    score: float | None
    label: str | None
    reason: str
    created_at: int
    deadline: int
    answered_at: int
    schedule: str
    schedule_version: int
    received_at: int
    # The reply record's timestamp: when the rendezvous produced it (a replies topic with CreateTime,
    # as `topics create` makes it), or when the broker appended it (LogAppendTime). None if unknown.
    replied_at: int | None = None

    @property
    def latency_ms(self) -> int:
        """Created to received by this client: the end-to-end latency."""
        return self.received_at - self.created_at

    @classmethod
    def from_record(cls, record: Mapping[str, Any], received_at: int, replied_at: int | None = None) -> Answer:
        # Only the fields this client knows: newer writers may add defaulted fields.
        known = {name: record[name] for name in cls.__dataclass_fields__ if name in record}
        return cls(**{**known, "received_at": received_at, "replied_at": replied_at})


class AnswerTimeout(RendezvousError):
    """No answer arrived within the client's wait (the service may be down)."""

    retriable = True


class NoReplyPartition(RendezvousError):
    """The client owns no partition of the replies topic right now (its group has not assigned
    it one yet, or there are more members than partitions): it cannot name a return address."""

    retriable = True


class ReplyPartitionLost(RendezvousError):
    """The reply partition a request named moved to another member of the group: its answer
    will be read (and ignored) there. The request itself was processed normally."""

    retriable = True


class InvalidRequest(BadInput):
    """A request this client refuses to send (a feature that is not a number, an empty id, a
    budget that is not a positive number of ms): the message names what."""


class UnreadableAnswer(RendezvousError):
    """A record came back for this request that is not an Answer this client can read (someone
    else wrote to the return address, or a writer schema this client does not know)."""


class ClosedClient(RendezvousError):
    """The client was closed: a request still waiting gets no answer, and none is sent."""


MAX_LONG = 2**63 - 1


def checked_features(features: Mapping[str, float]) -> dict[str, float]:
    """The features as floats: each name a non-empty string, each value a real number (not a
    bool, not text that would read as one: a caller's mistake must not get a confident score)."""
    if not isinstance(features, Mapping):
        raise InvalidRequest(f"features must map names to numbers, got {type(features).__name__}")
    checked: dict[str, float] = {}
    for name, value in features.items():
        # isascii() inline: a call of _utf8 for every feature of every request cost 1.6 µs in 30.
        if type(name) is not str or not name or (not name.isascii() and not _utf8(name)):
            raise InvalidRequest(f"feature name {name!r:.80}: must be a non-empty string of text")
        if type(value) is float:  # the common case, first: this runs for every feature of every request
            checked[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidRequest(f"feature {name!r:.80}: {type(value).__name__} {value!r:.40} is not a number")
        try:
            checked[name] = float(value)
        except (OverflowError, ValueError) as exc:
            raise InvalidRequest(f"feature {name!r:.80}: {exc}") from None
    return checked


def _utf8(text: str) -> bool:
    if text.isascii():  # the usual case, without an encode
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _request_id_of(key: bytes | str | None) -> str | None:
    """The request id a reply's key names (the rendezvous keys every reply by it), if it is text."""
    if isinstance(key, str) or not key:
        return key or None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _checked_id(request_id: Any) -> str:
    if type(request_id) is not str or not request_id or not _utf8(request_id):
        raise InvalidRequest(f"request_id {request_id!r:.80}: must be a non-empty string of text")
    if too_long := id_too_long(request_id):
        raise InvalidRequest(too_long)
    return request_id


def _checked_payload(payload: Any) -> dict[str, Any] | None:
    """A request's payload, given as (content type, bytes): anything else was a TypeError,
    ValueError or IndexError from deep inside the encoder."""
    if payload is None:
        return None
    if (type(payload) is not tuple or len(payload) != 2 or type(payload[0]) is not str or not _utf8(payload[0])
            or not isinstance(payload[1], (bytes, bytearray))):
        raise InvalidRequest(f"payload must be a (content type: str, data: bytes) pair, got {type(payload).__name__} "
                             f"{_short_repr(payload)}")
    return {"content_type": payload[0], "data": bytes(payload[1])}


def _checked_metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidRequest(f"metadata must map strings to strings, got {type(metadata).__name__}")
    # Text each: a lone surrogate ('\ud800') was a UnicodeEncodeError from the encoder (a review).
    bad = next(((k, v) for k, v in metadata.items()
                if type(k) is not str or type(v) is not str or not _utf8(k) or not _utf8(v)), None)
    if bad is not None:
        raise InvalidRequest(f"metadata must map strings of text to strings of text: {_short_repr(bad[0])} -> "
                             f"{_short_repr(bad[1])}")
    return dict(metadata)


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _sent_as(value: bytes | None) -> int | None:
    """What tells a waiter's record from another send of its request_id (the record's bytes)."""
    return None if value is None else hash(value)


def make_request(
    features: Mapping[str, float],
    *,
    budget_ms: int,
    reply_topic: str | None,
    reply_partition: int | None,
    request_id: str | None = None,
    payload: tuple[str, bytes] | None = None,
    metadata: Mapping[str, str] | None = None,
    created_at: int | None = None,
) -> dict[str, Any]:
    """A Request record (see schemas/request.avsc); `InvalidRequest` names what is wrong with one."""
    created = created_at if created_at is not None else now_ms()
    if type(budget_ms) is not int or budget_ms <= 0:
        raise InvalidRequest(f"budget_ms must be a positive number of milliseconds, got {budget_ms!r:.40}")
    if type(created) is not int or not 0 <= created <= MAX_LONG - budget_ms:
        raise InvalidRequest(f"created_at {created!r:.40} plus budget_ms {budget_ms} is no time in epoch ms")
    record = {
        "request_id": uuid.uuid4().hex if request_id is None else _checked_id(request_id),
        "created_at": created,
        "deadline": created + budget_ms,
        "reply_to": {"topic": reply_topic, "partition": reply_partition} if reply_topic else None,
        "features": checked_features(features),
        "payload": _checked_payload(payload),
        "metadata": _checked_metadata(metadata),
    }
    problem = request_problem(record)  # what every service refuses (core/requests.py), refused here first
    if problem is not None:
        raise InvalidRequest(problem)
    return record


class Waiting(Future[Answer]):
    """A request's Future, knowing the request it waits for (a wait that times out drops it)
    and its inputs' digest (core/request_inputs.py): a reply naming other inputs is another
    request's under the id, and another request of this client under it must carry the same
    (`Client._check_reuse`)."""

    def __init__(self, request_id: str, inputs_digest: bytes) -> None:
        super().__init__()
        self.request_id = request_id
        self.inputs_digest = inputs_digest


READER_JOIN_S = 5.0  # how long close() waits for the reader's loop to see the stop

# Requests given up on before their answer came, remembered until it comes (their ids are not
# reused with other inputs meanwhile): a bound on memory, the oldest forgotten first.
MAX_GIVEN_UP = 10_000
UNREADABLE_SAID_EVERY_S = 60.0  # a line for a record on the reply partitions that is no answer, at most
# An answer whose schema the registry could not be asked about for now (away, refusing for now) is
# read again every second, for this long: failed at once as unreadable, an answer that had come was
# lost to a registry's passing failure (a review).
READ_AGAIN_EVERY_S = 1.0
READ_AGAIN_FOR_S = 30.0
MAX_READ_AGAIN = 10_000  # answers held to be read again, at most (a registry away under a flood)
MAX_READ_AGAIN_BYTES = 64 * 1024 * 1024  # and their bytes at most (anyone may write the replies topic)
# `_resolve`'s arguments of an answer held to be read again: value, received_at, partition, replied_at, key, inputs.
HeldAnswer = tuple[bytes | None, int, int | None, int | None, bytes | str | None, bytes | None]


# A request's delivery timeout, unless the config names one (a gateway's does): a minute, or its
# client's budget plus answer wait if longer. librdkafka's 300 s would leave a client stuck after
# a broker restart (librdkafka #5430) failing one partition's requests that long before its first
# timeout replaces it (Producer.timed_out); a request a minute late is answered by no one waiting.
# A `submit(budget_ms=...)` longer than the client's is not covered: give such a client its budget.
def request_delivery_timeout_ms(budget_ms: Any, answer_wait_s: Any) -> int:
    """At most librdkafka's largest (an endless wait too); a budget or wait that is no number
    leaves the minute (`submit` refuses such a budget)."""
    try:
        wait_ms = answer_wait_s * 1000
        if wait_ms == math.inf:
            return MAX_TIMEOUT_MS
        longest = int(budget_ms + math.ceil(wait_ms))
    except (TypeError, ValueError, OverflowError):
        return SERVING_DELIVERY_TIMEOUT_MS
    return min(max(SERVING_DELIVERY_TIMEOUT_MS, longest), MAX_TIMEOUT_MS)


PRODUCER_ONLY = frozenset({"message.timeout.ms", "delivery.timeout.ms", "linger.ms", "queue.buffering.max.ms",
                           "acks", "request.required.acks", "compression.type", "enable.idempotence"})


class Client:
    """A scoring client: `score()` (sync), `submit()` (a Future), `score_many()`, `ascore()`."""

    def __init__(
        self,
        config: Mapping[str, Any],
        topics: Topics,
        *,
        budget_ms: int = 200,
        reply_partition: int | None = None,
        answer_wait_s: float = 10.0,
        reply_group: str | None = None,
        wait_when_full: bool = True,
        expire_waiters: bool = True,
    ):
        """`wait_when_full=False`: a submit meeting librdkafka's local queue full raises (a server on
        an event loop must not wait for room: everything else it serves would wait too).
        `expire_waiters=False`: a request with no answer is not given up on once its budget and
        answer_wait_s are out (a caller that gives up on every wait itself, with waits of its own)."""
        if reply_group is not None and reply_partition is not None:
            raise ConfigError("a client either reads one reply partition or joins a reply group, not both")
        # An application's own config gets them too (a command's has them from its settings).
        config = {**kafka_config.CONNECTION_DEFAULTS, **config}
        self.topics = topics
        self.budget_ms = budget_ms
        self.answer_wait_s = answer_wait_s
        counts = partition_counts(config, [topics.requests, topics.replies])
        partitions = counts[topics.replies]
        if reply_partition is not None and not 0 <= reply_partition < partitions:
            raise ConfigError(
                f"reply partition {reply_partition} not in {topics.replies} (0..{partitions - 1})"
            )
        self._requests = codec("request")
        self._answers = codec("answer")
        self._wait_when_full = wait_when_full
        # A request the broker refused fails its own caller, not the next one to send (every topic
        # soft: its failure goes to `_undelivered`, never raised by a later produce).
        timeout = delivery_timeout(config, request_delivery_timeout_ms(budget_ms, answer_wait_s))
        self._producer = Producer({**config, **timeout}, soft_topics=lambda _topic: True,
                                  on_soft_failure=self._undelivered)
        # The producer's settings given for the requests (a gateway's message.timeout.ms) are not the
        # reader's: librdkafka warned of each at every start ("a producer property and will be ignored").
        reader_config = {k: v for k, v in config.items() if k not in PRODUCER_ONLY}
        # request_id -> waiters (future, reply partition, hash of the record sent): the same id may
        # be in flight twice, and a delivery failure fails the one whose record it was.
        self._pending: dict[str, list[tuple[Waiting, int, int | None]]] = {}
        # request_id -> the inputs' digest of requests given up on, and how many of them: each is
        # answered (a retry of the same id too), and the id may be reused once every answer came.
        self._given_up: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        # (when it is given up on, time.monotonic; a tie-break; the waiter): a future of `submit`
        # nobody waits on with a timeout fails then, instead of waiting, and being kept, for good.
        self._expiries: list[tuple[float, int, Waiting]] = []
        self._expiry_order = itertools.count()
        self._expire_waiters = expire_waiters
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._turn = itertools.count()
        try:
            if reply_group is None:
                self.reply_partition: int | None = (
                    random.randrange(partitions) if reply_partition is None else reply_partition
                )
                self._consumer = Consumer(groupless(reader_config, "client"))
                self._start_reading(self.reply_partition)
                self._owned: tuple[int, ...] = (self.reply_partition,)
            else:
                self.reply_partition = None
                self._owned = ()
                # Cooperative rebalancing: a member joining or leaving moves only the partitions it
                # must, so the other members' requests in flight are not failed by every rebalance.
                self._consumer = Consumer({**reader_config, "group.id": reply_group,
                                           "partition.assignment.strategy": "cooperative-sticky"})
                self._consumer.subscribe([topics.replies], on_assign=self._on_assign,
                                         on_revoke=self._on_revoke, on_lost=self._on_revoke)
        except BaseException:
            # A client that never was leaves no Kafka client behind (a producer's and a consumer's
            # threads and sockets, for as long as the process lives).
            consumer = getattr(self, "_consumer", None)
            if consumer is not None:
                with contextlib.suppress(Exception):
                    consumer.close()
            self._producer.close(0)
            raise
        # Why the reader of answers stopped for good (a consumer error it cannot get past), if it did:
        # no request is sent after that, it could never be answered.
        self.stopped: str | None = None
        # The reader closes the consumer as its loop ends: close() was called on it (an answer's
        # callback), or while it was still busy (see close). Both flags under the lock.
        self._closed_from_reader = False
        self._reader_done = False
        # Records on the reply partitions that are no readable Answer (counted on the reading thread).
        self.undecodable_answers = 0
        # Answers under an id this client waits on that name other inputs (another client's): not taken.
        self.foreign_answers = 0
        self._foreign_said = OncePerPeriod[str](UNREADABLE_SAID_EVERY_S)
        self._unreadable_said = OncePerPeriod[str](UNREADABLE_SAID_EVERY_S)
        self._read_again: deque[tuple[float, float, HeldAnswer]] = deque()  # (due, first tried, the answer)
        self._read_again_bytes = 0
        # request id -> why its answers are held and how many are (said by a wait that ends): two
        # answers held under one id (a retry's, another reply partition's) each keep the reason.
        self._held_why: dict[str, tuple[str, int]] = {}
        self._reader = threading.Thread(target=self._read_answers, name="rdv-client-answers", daemon=True)
        self._reader.start()

    def _start_reading(self, partition: int) -> None:
        tp = TopicPartition(self.topics.replies, partition)
        try:
            _low, high = self._consumer.native.get_watermark_offsets(tp, timeout=10.0)
        except KafkaException as exc:
            raise BrokerError(
                f"cannot read the end of {tp.topic}[{tp.partition}]: {exc}"
            ) from None
        self._consumer.assign([TopicPartition(self.topics.replies, partition, high)])

    # -- reply partitions of a group member (called on the reader thread, inside consume) ---

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        starts = []
        for tp in partitions:
            try:
                _low, high = consumer.get_watermark_offsets(tp, timeout=10.0, cached=False)
            except KafkaException as exc:
                # Reading from the end as the broker resolves it: an answer arriving before the
                # first fetch would be missed; its request then waits until its own timeout.
                log.warning("cannot read the end of %s[%d] (%s): reading from its end", tp.topic, tp.partition, exc)
                high = OFFSET_END
            starts.append(TopicPartition(tp.topic, tp.partition, high))
        consumer.incremental_assign(starts)
        self._owned = tuple(sorted({*self._owned, *(tp.partition for tp in partitions)}))
        log.info("reply partitions now %s of %s", list(self._owned), self.topics.replies)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        with self._lock:
            self._owned = tuple(p for p in self._owned if p not in gone)
        consumer.incremental_unassign(partitions)
        moved = ReplyPartitionLost(f"reply partition(s) {sorted(gone)} of {self.topics.replies} moved "
                                   "to another reader; the request was sent, its answer is read elsewhere")
        self._fail_where(lambda partition: partition in gone, moved)
        log.info("reply partitions now %s of %s", list(self._owned), self.topics.replies)

    @property
    def owned_partitions(self) -> tuple[int, ...]:
        """The reply partitions requests may name now (empty: cannot send)."""
        return self._owned

    def _pick_partition(self) -> int:
        owned = self._owned
        if not owned:
            raise NoReplyPartition(f"this client owns no partition of {self.topics.replies} yet")
        return owned[next(self._turn) % len(owned)]

    # -- sending ---------------------------------------------------------------------------

    def submit(
        self,
        features: Mapping[str, float],
        *,
        budget_ms: int | None = None,
        request_id: str | None = None,
        payload: tuple[str, bytes] | None = None,
        metadata: Mapping[str, str] | None = None,
        created_at: int | None = None,
        give_up_at: float | None = None,
    ) -> Future[Answer]:
        """Send one request; the Future resolves to its Answer. With librdkafka's local queue full
        (the broker away), it waits for room up to answer_wait_s, or until `give_up_at` (a
        time.monotonic() time) when given (unless made with wait_when_full=False), then raises
        KafkaOperationError."""
        until = time.monotonic() + self.answer_wait_s if give_up_at is None else give_up_at
        return self._submit(features, until, budget_ms=budget_ms,
                            request_id=request_id, payload=payload, metadata=metadata, created_at=created_at,
                            expires=self._expire_waiters)

    def _submit(
        self,
        features: Mapping[str, float],
        give_up_at: float,
        *,
        budget_ms: int | None = None,
        request_id: str | None = None,
        payload: tuple[str, bytes] | None = None,
        metadata: Mapping[str, str] | None = None,
        created_at: int | None = None,
        expires: bool = False,
    ) -> Future[Answer]:
        """`submit`, waiting for room in librdkafka's queue until `give_up_at` (time.monotonic): a
        call waited without end there (the broker away: 57 s for a 1 s wait; a review). `expires`:
        given up on by the reader once its budget and answer wait are out (`_expire`), for a future
        handed to a caller; score, score_many and ascore give up on theirs themselves."""
        if self.stopped is not None:
            raise (ClosedClient if self._stop.is_set() else BrokerError)(f"this client {self.stopped}")
        partition = self._pick_partition()
        record = self._request(features, partition, budget_ms=budget_ms, request_id=request_id, payload=payload,
                               metadata=metadata, created_at=created_at)
        rid = record["request_id"]
        # Digested here, not under the lock the reader takes to match its answer: a megabyte's
        # payload takes 0.7 ms, every other caller and answer waiting.
        value, digest = encoded_with_digest(self._requests, record)
        future = Waiting(rid, digest)
        future.add_done_callback(self._dropped_if_cancelled)
        with self._lock:
            # Under the lock `close` takes: a waiter added after it failed the others would wait
            # out its timeout, its request sent by a closed producer.
            if self._stop.is_set():
                raise ClosedClient(f"this client {self.stopped}")
            if self.stopped is not None:  # set under this lock as the reader ends (`_reader_ended`)
                raise BrokerError(f"this client {self.stopped}")
            # Checked under the lock the revoke takes: a partition that moved since it was picked
            # would leave this waiter to wait out its deadline, failed by no one.
            if partition not in self._owned:
                raise ReplyPartitionLost(f"reply partition {partition} of {self.topics.replies} moved to another "
                                         "reader just now; the request was not sent")
            if rid in self._pending or rid in self._given_up:  # rare: a dict lookup on the common path
                self._check_reuse(rid, future)
            self._pending.setdefault(rid, []).append((future, partition, _sent_as(value)))
            if expires:
                expires_at = time.monotonic() + (record["deadline"] - record["created_at"]) / 1000 + self.answer_wait_s
                heapq.heappush(self._expiries, (expires_at, next(self._expiry_order), future))
        try:
            self._producer.produce(self.topics.requests, value, key=rid.encode(), give_up_at=give_up_at,
                                   wait_when_full=self._wait_when_full)
        except BaseException:  # KafkaOperationError too: the local queue still full at give_up_at
            with self._lock:
                self._dropped(rid, future)  # not sent: no answer to remember it for
            if self._stop.is_set():  # closed since the check above: its producer let go
                raise ClosedClient(f"this client {self.stopped}") from None
            raise
        self._producer.poll(0)
        return future

    def _check_reuse(self, rid: str, future: Waiting) -> None:
        """A request under an id whose answer may still come for another request of this client
        must carry the same inputs: that answer, read first, goes to it (nothing in an answer
        tells them apart: the rendezvous answers a retry with the first answer, its created_at
        included). With the same inputs it is that request's answer too. Under the lock."""
        mine = future.inputs_digest
        if any(w[0].inputs_digest != mine for w in self._pending.get(rid, ())):
            whose = "is waiting for its answer"
        elif self._given_up.get(rid, (mine, 0))[0] != mine:
            whose = "was given up on before its answer came (it may still come)"
        else:
            return
        raise InvalidRequest(f"request_id {rid!r:.80} is in use by a request with other features or payload that "
                             f"{whose}: its answer would be taken for this one's (a request_id must be unique; a "
                             "retry must repeat its inputs)")

    def abandon(self, request_id: str, future: Future[Answer]) -> None:
        """Stop waiting for one answer (the caller gave up on it): its entry is dropped, and its
        id remembered until its answer comes (`_check_reuse`)."""
        with self._lock:
            if self._dropped(request_id, future) and isinstance(future, Waiting):
                # Counted: with one entry per id, the first of two late answers freed the id, and a
                # request with other inputs sent under it then took the second as its own.
                digest, count = self._given_up.get(request_id, (future.inputs_digest, 0))
                self._given_up[request_id] = (digest, count + 1)
                self._given_up.move_to_end(request_id)
                if len(self._given_up) > MAX_GIVEN_UP:
                    self._given_up.popitem(last=False)

    def _dropped_if_cancelled(self, future: Future[Answer]) -> None:
        """A future its caller cancelled without `abandon` (a gateway's call gone): its waiter
        stayed until an answer came, which may be never."""
        if future.cancelled() and isinstance(future, Waiting):
            self.abandon(future.request_id, future)

    def _dropped(self, request_id: str, future: Future[Answer]) -> bool:
        """Take `future` out of the waiters, under the lock; whether it was there (unanswered)."""
        waiters = self._pending.get(request_id, [])
        kept = [w for w in waiters if w[0] is not future]
        if len(kept) == len(waiters):
            return False
        if kept:
            self._pending[request_id] = kept
        else:
            del self._pending[request_id]
        return True

    def score(self, features: Mapping[str, float], **kwargs: Any) -> Answer:
        """Send one request and wait for its answer (at most answer_wait_s in all)."""
        return self.score_many([features], **kwargs)[0]

    def score_many(self, rows: Iterable[Mapping[str, float]], **kwargs: Any) -> list[Answer]:
        """Send a batch, then wait for every answer (in input order), within one answer wait:
        the delivery and each answer had a wait of their own (a batch of 5 took 4.5 s of a 1 s
        wait). Every row is checked before any is sent, and whatever fails, no waiter is left."""
        rows = list(rows)
        if kwargs.get("request_id") is not None and len(rows) > 1:  # else row 2 was refused as a reuse, row 1 sent
            raise InvalidRequest(f"request_id names one request, not a batch of {len(rows)} rows: leave it out "
                                 "(each row gets its own id), or submit each row with its own")
        if len(rows) > 1:  # one row (every `score`): `_submit` refuses it before anything is sent
            for row in rows:  # refused before sending: a bad row 3 had rows 1 and 2 sent, their waiters kept
                self._request(row, 0, **kwargs)  # every check a request meets, not the features' alone (a review)
        deadline = time.monotonic() + self.answer_wait_s
        futures: list[Future[Answer]] = []
        try:
            for row in rows:
                futures.append(self._submit(row, deadline, **kwargs))
            # No flush: it waits for every thread's records, and a call whose answer had come
            # failed for another's unacknowledged one. A refused request fails its own waiter.
            return [self._wait(f, deadline) for f in futures]
        except BaseException:
            for future in futures:
                self._give_up(future)
            raise

    def _request(self, features: Mapping[str, float], partition: int, *, budget_ms: int | None = None,
                 request_id: str | None = None, payload: tuple[str, bytes] | None = None,
                 metadata: Mapping[str, str] | None = None, created_at: int | None = None) -> dict[str, Any]:
        """The Request record `_submit` sends for a row (`make_request`: `InvalidRequest` names a fault)."""
        return make_request(features, budget_ms=self.budget_ms if budget_ms is None else budget_ms,
                            reply_topic=self.topics.replies, reply_partition=partition, request_id=request_id,
                            payload=payload, metadata=metadata, created_at=created_at)

    async def ascore(self, features: Mapping[str, float], **kwargs: Any) -> Answer:
        """asyncio form of `score`. A request meeting librdkafka's local queue full fails at once
        (KafkaOperationError): waiting for room here would stop the event loop (9 s of a 1 s wait; a review)."""
        future = self._submit(features, time.monotonic(), **kwargs)  # given up on now: no waiting for room
        self._producer.poll(0)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.answer_wait_s)
        except TimeoutError:
            self._give_up(future)
            raise self._no_answer(future) from None
        except BaseException:  # cancelled (its caller went away): no waiter is left behind either
            self._give_up(future)
            raise

    def flush(self, timeout: float = 30.0) -> None:
        """Wait up to `timeout` s for the requests sent to be acknowledged; raises if any was not."""
        self._producer.flush(timeout)

    def _wait(self, future: Future[Answer], deadline: float) -> Answer:
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            self._give_up(future)
            raise self._no_answer(future) from None

    def _give_up(self, future: Future[Answer]) -> None:
        """A wait that timed out leaves no waiter behind (one per timed-out call piled up)."""
        if isinstance(future, Waiting):
            self.abandon(future.request_id, future)

    def _no_answer(self, future: Future[Answer] | None = None) -> AnswerTimeout | DeliveryFailed | UnreadableAnswer:
        """What a wait that timed out says: with requests of this client still unacknowledged,
        the broker is the likelier cause than the rendezvous (said, not waited for: a flush
        waits for every thread's records). An answer that came and is held for the registry
        (`_resolve`) is said as such: not 'is the rendezvous running?' (a review)."""
        wait = f"{self.answer_wait_s:g}s"
        rid = future.request_id if isinstance(future, Waiting) else None
        held = self._held_why.get(rid) if rid is not None else None
        if held is not None:
            return UnreadableAnswer(f"the answer to request {rid!r:.80} came, but could not be read within {wait}: "
                                    f"{held[0]} (read again until {READ_AGAIN_FOR_S:g} s)")
        unacknowledged = self._producer.pending()
        if unacknowledged:
            return DeliveryFailed(f"no answer within {wait}, and {unacknowledged} request(s) of this client were not "
                                  f"acknowledged within {wait}: is the broker reachable?", retriable=True)
        return AnswerTimeout(f"no answer within {wait}: is the rendezvous running on {self.topics.requests}?")

    # -- receiving -------------------------------------------------------------------------

    def _read_answers(self) -> None:
        try:
            self._read_until_stopped()
        except Exception as err:  # a thread that ends unseen would leave every caller waiting for good
            log.exception("client stopped reading answers")
            reason = f"stopped reading answers: {type(err).__name__}: {err}"
            self._reader_ended(reason, BrokerError(f"the client {reason}"))
        with self._lock:
            self._reader_done = True
            close_here = self._closed_from_reader
        if close_here:
            self._close_clients()

    def _read_until_stopped(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self._consumer.consume(500, 0.1)
            except RendezvousError as err:
                log.error("client stopped reading answers: %s", err)
                self._reader_ended(f"stopped reading answers: {err}", err)
                return
            if messages:
                received = now_ms()
                for msg in messages:
                    self._resolve(msg.value(), received, msg.partition(), msg.timestamp()[1], msg.key(),
                                  inputs_in(msg.headers()))
            self._read_due_again(time.monotonic())
            self._expire(time.monotonic())
            # The producer's reports too (a refused request fails its caller): callers that only
            # wait would otherwise never serve them.
            self._producer.poll(0)

    def _resolve(
        self, value: bytes | None, received_at: int, partition: int | None = None, replied_at: int | None = None,
        key: bytes | str | None = None, inputs: bytes | None = None, first_tried: float | None = None,
    ) -> None:
        """An answer read from a reply partition; `inputs`, the digest of the inputs it answers
        (its header; None: not said, an older rendezvous); `first_tried`: when it was first read,
        if it is read again (READ_AGAIN_FOR_S)."""
        try:
            record = self._answers.decode(value)
        except BadInput as err:
            now = time.monotonic()
            first_tried = now if first_tried is None else first_tried
            size = len(value or b"")
            if (err.retriable and not isinstance(err, LookupsSpent) and now - first_tried < READ_AGAIN_FOR_S
                    and len(self._read_again) < MAX_READ_AGAIN
                    and self._read_again_bytes + size <= MAX_READ_AGAIN_BYTES):
                args: HeldAnswer = (value, received_at, partition, replied_at, key, inputs)
                self._read_again.append((now + READ_AGAIN_EVERY_S, first_tried, args))
                self._read_again_bytes += size
                self._hold_reason(_request_id_of(key), err.message)
                return
            self._unreadable(err, partition, key, inputs)
            return
        future = self._take_waiter(record["request_id"], partition, inputs)
        if future is not None and not future.done():
            settle(future, Answer.from_record(record, received_at, replied_at))

    def _read_due_again(self, now: float) -> None:
        """The answers held for the registry (`_resolve`) whose second has come, read again."""
        while self._read_again and self._read_again[0][0] <= now:
            _due, first_tried, args = self._read_again.popleft()
            self._read_again_bytes -= len(args[0] or b"")
            self._release_reason(_request_id_of(args[4]))
            self._resolve(*args, first_tried=first_tried)

    def _hold_reason(self, rid: str | None, why: str) -> None:
        if rid:
            self._held_why[rid] = (why, self._held_why.get(rid, ("", 0))[1] + 1)

    def _release_reason(self, rid: str | None) -> None:
        """One answer of `rid` no longer held: its reason stays while another of the id is."""
        held = self._held_why.pop(rid, None) if rid else None
        if rid and held is not None and held[1] > 1:
            self._held_why[rid] = (held[0], held[1] - 1)

    def _expire(self, now: float) -> None:
        """Give up on the requests whose budget and answer wait are out with no answer: a future of
        `submit` waited on without a timeout (or not at all) was kept, and waited, for good (2,000
        timed-out `result(timeout=...)` calls left 2,000 entries; a review)."""
        expired = []
        with self._lock:
            while self._expiries and (self._expiries[0][0] <= now or self._expiries[0][2].done()):
                future = heapq.heappop(self._expiries)[2]
                if not future.done():
                    expired.append(future)
        for future in expired:
            self.abandon(future.request_id, future)
            fail(future, self._no_answer(future))

    def _take_waiter(
        self, rid: str, partition: int | None, inputs: bytes | None, answered: bool = True
    ) -> Future[Answer] | None:
        """The waiter an answer to `rid` for `inputs` (None: not said) read on `partition` is for,
        taken out of the table (with none, an answer that came counts for a request given up on:
        `answered`). An answer naming other inputs is none of this client's: another client's
        reading this partition, under the same id."""
        with self._lock:
            waiters = self._pending.get(rid)
            if not waiters:
                if answered:
                    self._answer_came(rid, inputs)
                return None
            # Every waiter of an id has the same inputs (`_check_reuse`): the first one tells.
            if inputs is not None and waiters[0][0].inputs_digest != inputs:
                if answered:
                    self._foreign(rid, partition)
                return None
            # A repeated request id is answered once per request, with the same answer: to the
            # waiter whose return address it came to (another's partition may move meanwhile).
            index = next((i for i, (_f, p, _sent) in enumerate(waiters) if p == partition), 0)
            future = waiters.pop(index)[0]
            if not waiters:
                del self._pending[rid]
        return future

    def _foreign(self, rid: str, partition: int | None) -> None:
        """An answer under an id this client waits on, for another request's inputs: left to the
        waiter's own answer (taken, it was a confident score of features nobody here sent).
        Counted, and said at most once a minute (anyone may write under any id). Under the lock."""
        self.foreign_answers += 1
        held = self._foreign_said.passes("foreign")
        if held is not None:
            log.warning("an answer to request %.80r on %s[%s] answers other inputs than this client sent under "
                        "the id (another client reading the partition, reusing the id): not taken%s",
                        rid, self.topics.replies, partition, held.repeated())

    def _answer_came(self, rid: str, inputs: bytes | None) -> None:
        """An answer to `rid` came with no one waiting: one request given up on fewer, unless it
        names other inputs (another client's). Under the lock."""
        given_up = self._given_up.get(rid)
        if given_up is None or (inputs is not None and inputs != given_up[0]):
            return
        if given_up[1] > 1:
            self._given_up[rid] = (given_up[0], given_up[1] - 1)
        else:
            del self._given_up[rid]  # every answer came: none can be taken for another request's now

    def _unreadable(
        self, err: BadInput, partition: int | None, key: bytes | str | None, inputs: bytes | None = None
    ) -> None:
        """A record on the reply partition that is no Answer this client reads: counted, and the
        request its key names (the rendezvous keys its replies by request id) fails now instead
        of waiting out its timeout for an answer that came."""
        self.undecodable_answers += 1
        where = f"{self.topics.replies}[{partition}]"
        rid = _request_id_of(key)
        # Not an answer to its id: counted as one, a junk record keyed by an id given up on freed
        # that id, and its real late answer then went to another request under it (a review).
        future = self._take_waiter(rid, partition, inputs, answered=False) if rid else None
        # Anyone may write the replies topic: a line per record made 10,000 lines of 10,000 (a review).
        held = self._unreadable_said.passes("unreadable")
        if held is not None or future is not None:
            log.warning("undecodable answer on %s%s: %s%s", where, f" for request {rid!r:.80}" if future else "", err,
                        held.repeated() if held is not None else "")
        if future is not None:
            fail(future, UnreadableAnswer(f"the answer to request {rid!r:.80} on {where} could not be read: {err}"))

    def _undelivered(self, msg: Message, err: KafkaError) -> None:
        key = msg.key()
        rid = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        failed = _sent_as(msg.value())
        with self._lock:
            waiters = self._pending.get(rid, [])
            # Only the waiter of this record: another send of the id (a retry, or a request refused
            # for reusing it) is delivered, or fails, on its own.
            mine = next((w for w in waiters if w[2] == failed), None)
            if mine is not None:
                waiters.remove(mine)
                if not waiters:
                    del self._pending[rid]
        log.warning("request %s not delivered to %s: %s", rid, msg.topic(), err.str())
        failure: Exception = BrokerError(f"the request was not delivered to {msg.topic()}: {err.str()}")
        if err.code() in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE):
            # Refused for its size (the topic's limit): sending it again would be refused again.
            failure = RecordTooLarge(f"the request is too large for {msg.topic()}: {err.str()}")
        if mine is not None:
            fail(mine[0], failure)

    def _reader_ended(self, reason: str, err: Exception) -> None:
        """No answer will be read again: set under the lock `submit` registers its waiter under, so
        none registers after the waiters are failed (one that did waited for good)."""
        with self._lock:
            self.stopped = reason
        self._fail_all(err)

    def _fail_all(self, err: Exception) -> None:
        self._fail_where(lambda _partition: True, err)

    def fail_all(self, err: Exception) -> None:
        """Fail every request still waiting (e.g. the process is shutting down)."""
        self._fail_all(err)

    def _fail_where(self, which: Callable[[int], bool], err: Exception) -> None:
        failed: list[Future[Answer]] = []
        with self._lock:
            for rid in list(self._pending):
                keep = []
                for waiter in self._pending[rid]:
                    if which(waiter[1]):
                        failed.append(waiter[0])
                    else:
                        keep.append(waiter)
                if keep:
                    self._pending[rid] = keep
                else:
                    del self._pending[rid]
        for future in failed:
            fail(future, err)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(len(waiters) for waiters in self._pending.values())

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop: requests still waiting fail with `ClosedClient` (their callers would wait out
        their timeout for an answer no one reads), and no request is sent after this. Once.
        Requests not yet acknowledged get up to `timeout_s` more; the number of those that still
        were not (dropped with the client: never delivered) is returned."""
        with self._lock:
            if self._stop.is_set():
                return 0
            self.stopped = "is closed"
            self._stop.set()
        if threading.current_thread() is self._reader:
            # From an answer's callback, on the reading thread: it cannot join itself, and uses the
            # Kafka clients until its loop ends, where it closes them (`_read_answers`).
            self._closed_from_reader = True
            self._fail_all(ClosedClient("the client was closed before this request was answered"))
            return 0
        self._reader.join(timeout=READER_JOIN_S)  # its loop looks at the stop every 0.1 s
        self._fail_all(ClosedClient("the client was closed before this request was answered"))
        with self._lock:
            # Still inside consume() (an answer's callback of the caller's, a rebalance reading
            # offsets): a consumer closed under it crashes (confluent-kafka-python #1797), and it
            # polls the producer.
            busy = self._closed_from_reader = not self._reader_done
        if busy:
            log.warning("client closed while its reader was busy (an answer's callback, or a rebalance): "
                        "the reader closes its Kafka clients when done")
            return self._producer.flush_quietly(max(0.0, timeout_s))  # safe to flush from any thread
        return self._close_clients(timeout_s)

    def _close_clients(self, timeout_s: float = 10.0) -> int:
        """Close the Kafka clients; the number of requests still not delivered. The producer's
        close took its own 10 s, whatever the caller's wait (a broker gone: send --wait-s 0.5
        took 10.5 s)."""
        undelivered = self._producer.close(max(0.0, timeout_s))  # still held after the flush: dropped
        self._consumer.close()
        return undelivered

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
