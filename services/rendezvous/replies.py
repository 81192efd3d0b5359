"""Answers to a request's return address (reply topic, optional partition).

A return address is client input, so it is checked before anything is written there:
- never a topic of the deployment itself (requests, scores, answers, log, control, dead
  letters) nor a Kafka-internal one (`__*`): an answer record there would corrupt it;
- only topics matching the configured allow-list pattern (`--reply-topics`, a regular
  expression matched against the whole name; the deployment's replies topic always passes);
- only topics that exist, with the partition asked for.

Whether a topic exists is asked of the broker off the poll loop (by a helper thread, the topics
to check together in one DescribeTopics request, up to BATCH_MAX at a time) and remembered in a
bounded cache; answers for a topic being checked wait in a bounded queue and go out once it is
known to exist. So a request naming a missing topic costs that one reply (counted in
rdv_reply_errors_total), and never delays any other answer: a client naming thousands of new
topics delays another's new one by the requests queued before it (3,000: six, milliseconds
each). (Asked one topic at a time, through a metadata request that left a topic handle in the
client, 3,000 made-up addresses kept a new client's own reply topic waiting for minutes, and
librdkafka went on asking the broker about every one of them, a core busy: a review.) A topic
the rendezvous may not describe (no grant for its principal) is said so, not called missing. A
question the broker could not answer (it is away) says nothing about the topic: its answers keep
waiting and the question is asked again a second later. A failed delivery makes the next answers
to that topic wait for a fresh verdict, not drop: after a long outage every reply in flight
fails, and the topic is usually still there. If it is not, it is asked about again every second
for a while, not remembered as missing for 30 s: a topic deleted is often made again at once
(`rendezvous topics create`; a client restarting).

Every reply is counted on its request's receipt (its mailbox) from the moment it is accepted
until the broker acknowledges it, or it is dropped for good: the request's offset is not
committed before that (mailbox.py), so a crash never loses a reply.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

from services.core.kafka import admin, describe_each
from services.core.rate_limit import OncePerPeriod
from services.core.settings import Topics, legal_topic
from services.rendezvous import metrics as m

log = logging.getLogger(__name__)

VERDICT_TTL_S = 30.0
# Verdicts remembered, the least recently used forgotten first; the deployment's replies topic's
# is never forgotten, nor are its replies counted in MAX_WAITING: a client naming a thousand
# missing topics pushed it out, and with ten thousand replies waiting for their verdicts, replies
# to the deployment's own topic were dropped, their requests committed as answered (a review).
MAX_TOPICS = 1_000
MAX_WAITING = 10_000  # replies waiting for a verdict, all other topics together
MISSING_SAID_EVERY_S = 30.0  # one line for a missing return address, with how many were held back
UNKNOWN = -1  # a partition count the broker could not give (it is away): ask again
REFUSED = -2  # the broker will not describe the topic to the rendezvous' principal
BATCH_MAX = 500  # topics asked about in one request
ASK_TIMEOUT_S = 5.0
RECHECK_S = 1.0
# A topic a reply failed to is missing for RECHECK_S at a time, for this long after the failure: a
# return address deleted and made again within seconds dropped every reply for 30 s, those to
# requests sent after it was back too (a review).
FAILED_RECHECKED_S = VERDICT_TTL_S


class Pending(Protocol):
    unacked: int


Headers = list[tuple[str, bytes]] | None
# topic, partition, key, value, headers, and what to call once the broker has acknowledged (or refused) it
Send = Callable[[str, int | None, bytes, bytes, Headers, Callable[[], None]], None]
# The partition count of each topic asked about (0: missing; UNKNOWN, REFUSED)
PartitionCounts = Callable[[list[str]], Mapping[str, int]]


class ReplyRules:
    """Which topics may be a return address (pure: no broker)."""

    def __init__(self, topics: Topics, pattern: str = ".*"):
        self.replies = topics.replies
        self._internal = {getattr(topics, f.name) for f in dataclasses.fields(topics) if f.name != "replies"}
        self._allowed = re.compile(pattern)

    def refusal(self, topic: str) -> str | None:
        """Why `topic` may not be a return address (None: it may)."""
        if topic == self.replies:
            return None
        if topic in self._internal:
            return "internal_topic"
        if topic.startswith("__") or not legal_topic(topic):
            return "invalid_topic"
        if not self._allowed.fullmatch(topic):
            return "not_allowed"
        return None


class ReplyRouter:
    """`partition_counts(topics)` is asked on a helper thread, one batch at a time; by default a
    DescribeTopics request through an admin client of `config`."""

    def __init__(
        self, send: Send, config: Mapping[str, Any], rules: ReplyRules,
        partition_counts: PartitionCounts | None = None,
    ):
        self._send = send
        self._rules = rules
        self._admin = admin(config) if partition_counts is None else None
        self._partition_counts = partition_counts or self._ask_broker
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rdv-reply-check")
        # topic -> (partitions, until when the verdict stands: time.monotonic)
        self._verdicts: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._to_ask: dict[str, None] = {}  # topics to ask about next, in order (a set that keeps it)
        self._asking: tuple[list[str], Future[Mapping[str, int]]] | None = None  # the batch out
        self._recheck_at: dict[str, float] = {}  # topics whose question went unanswered -> when to ask again
        self._waiting: dict[str, deque[tuple[int | None, bytes, bytes, Headers, Pending]]] = {}
        self._waiting_count = 0  # of topics other than the deployment's replies topic
        self._missing_said = OncePerPeriod[str](MISSING_SAID_EVERY_S)
        self._failed_until: dict[str, float] = {}  # topics a reply failed to -> until when a miss is rechecked
        self.unacked = 0  # replies accepted and not yet acknowledged (a drain waits for them)

    def send(
        self, topic: str, partition: int | None, key: bytes, value: bytes, headers: Headers, receipt: Pending
    ) -> None:
        refusal = self._rules.refusal(topic)
        if refusal is not None:
            m.REPLY_ERRORS.labels(refusal).inc()
            return
        receipt.unacked += 1
        self.unacked += 1
        count = self._known(topic)
        if count is None:
            self._wait_for_verdict(topic, partition, key, value, headers, receipt)
        else:
            self._deliver(topic, count, partition, key, value, headers, receipt)

    def check_now(self, topic: str) -> None:
        """Ask the broker about `topic` on the helper thread, unless a question is out already:
        with the next batch, or at once if none is out. Called at start for the deployment's own
        replies topic, so the first answers need not wait for that request."""
        if topic in self._to_ask or (self._asking is not None and topic in self._asking[0]):
            return
        self._to_ask[topic] = None
        self._ask_next()

    def _ask_next(self) -> None:
        """The next batch of topics to the helper thread, if none is out: the deployment's own
        replies topic first, then in the order they were met."""
        if self._asking is not None or not self._to_ask:
            return
        ours = self._rules.replies
        batch = [ours] if ours in self._to_ask else []
        for topic in self._to_ask:
            if len(batch) >= BATCH_MAX:
                break
            if topic != ours:
                batch.append(topic)
        for topic in batch:
            del self._to_ask[topic]
        self._asking = (batch, self._pool.submit(self._counts_or_each, batch))

    def _counts_or_each(self, batch: list[str]) -> Mapping[str, int]:
        """(On the helper thread.) The batch's partition counts; if asking about them together
        fails unexpectedly (the client library refusing one name), each is asked alone, so that
        one name does not make the others (the deployment's replies topic among them) missing."""
        try:
            return self._partition_counts(batch)
        except Exception:
            if len(batch) == 1:
                raise  # said by `_verdicts_of`
        return {topic: self._count_alone(topic) for topic in batch}

    def _count_alone(self, topic: str) -> int:
        try:
            return self._partition_counts([topic]).get(topic, UNKNOWN)
        except Exception as failure:  # noqa: BLE001 - a name the client refuses is a missing topic
            log.warning("cannot check return address %r: %s: %s", topic, type(failure).__name__, failure)
            return 0

    def forget(self, topic: str) -> None:
        """A delivery to `topic` failed: its next replies wait for a fresh verdict."""
        self._verdicts.pop(topic, None)
        now = time.monotonic()
        if len(self._failed_until) >= MAX_TOPICS:  # pruned when full only: a burst fails reply by reply
            self._failed_until = {t: until for t, until in self._failed_until.items() if until > now}
        if len(self._failed_until) < MAX_TOPICS:
            self._failed_until[topic] = now + FAILED_RECHECKED_S

    def poll(self) -> None:
        """Deliver (or drop) replies whose topic's verdict arrived; call from the poll loop."""
        if self._asking is not None and self._asking[1].done():
            batch, question = self._asking
            self._asking = None
            counts = self._verdicts_of(batch, question)
            self._ask_next()  # before delivering: the next batch is asked meanwhile
            for topic in batch:
                self._take_verdict(topic, counts.get(topic, UNKNOWN))
        if self._recheck_at:
            now = time.monotonic()
            for topic in [t for t, at in self._recheck_at.items() if at <= now]:
                del self._recheck_at[topic]
                self.check_now(topic)

    def _take_verdict(self, topic: str, count: int) -> None:
        if count == UNKNOWN:
            self._recheck_at[topic] = time.monotonic() + RECHECK_S
            return
        self._remember(topic, count)
        waited = self._waiting.pop(topic, deque())
        if topic != self._rules.replies:
            self._waiting_count -= len(waited)
        for partition, key, value, headers, receipt in waited:
            self._deliver(topic, count, partition, key, value, headers, receipt)

    @staticmethod
    def _verdicts_of(batch: list[str], question: Future[Mapping[str, int]]) -> Mapping[str, int]:
        """The partition counts a question found; a question that failed unexpectedly (the client
        library refusing a name) counts its topics as missing, never as the poll loop's failure."""
        failure = question.exception()
        if failure is None:
            return question.result()
        log.warning("cannot check return address(es) %s: %s: %s", ", ".join(repr(t) for t in batch[:3]),
                    type(failure).__name__, failure)
        return dict.fromkeys(batch, 0)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(
        self, topic: str, count: int, partition: int | None, key: bytes, value: bytes, headers: Headers,
        receipt: Pending,
    ) -> None:
        if count == 0:
            self._drop(receipt, "unknown_topic")
        elif count == REFUSED:
            self._drop(receipt, "not_authorized")
        elif partition is not None and not 0 <= partition < count:
            self._drop(receipt, "bad_partition")
        else:
            self._send(topic, partition, key, value, headers, lambda: self._acknowledged(receipt))

    def _drop(self, receipt: Pending, reason: str) -> None:
        m.REPLY_ERRORS.labels(reason).inc()
        self._acknowledged(receipt)

    def _acknowledged(self, receipt: Pending) -> None:
        receipt.unacked -= 1
        self.unacked -= 1

    def _known(self, topic: str) -> int | None:
        """The topic's partition count, if known. A topic known to exist stays usable while an
        expired verdict is checked again in the background: answers to it never wait for that."""
        cached = self._verdicts.get(topic)
        if cached is None:
            return None
        self._verdicts.move_to_end(topic)  # in use: the last to be forgotten
        if time.monotonic() < cached[1]:
            return cached[0]
        if cached[0] <= 0:
            return None  # missing (or refused) when last asked: wait for the new verdict
        self.check_now(topic)
        return cached[0]

    def _wait_for_verdict(
        self, topic: str, partition: int | None, key: bytes, value: bytes, headers: Headers, receipt: Pending
    ) -> None:
        # The deployment's own replies wait whatever else does: they are bounded by the open
        # requests (each reply is its request's), and waiting is rare (at start, after a failure).
        if topic != self._rules.replies:
            if self._waiting_count >= MAX_WAITING:
                self._drop(receipt, "too_many_unchecked")
                return
            self._waiting_count += 1
        self._waiting.setdefault(topic, deque()).append((partition, key, value, headers, receipt))
        if topic not in self._recheck_at:  # else poll() asks again when it is time
            self.check_now(topic)

    def _remember(self, topic: str, count: int) -> None:
        verdicts = self._verdicts
        now = time.monotonic()
        rechecked = count <= 0 and self._failed_until.get(topic, -math.inf) > now
        verdicts[topic] = (count, now + (RECHECK_S if rechecked else VERDICT_TTL_S))
        verdicts.move_to_end(topic)
        while len(verdicts) > MAX_TOPICS:
            oldest = next(iter(verdicts))
            if oldest == self._rules.replies:
                verdicts.move_to_end(oldest)
            else:
                del verdicts[oldest]
        if count <= 0:
            held = self._missing_said.passes("missing" if count == 0 else "refused")  # one per request, at will
            if held is not None:
                more = f" ({held.lines} more like it in the last {held.seconds:.0f} s)" if held.lines else ""
                why = ("does not exist" if count == 0 else
                       "is not the rendezvous' to describe (its principal has no grant on it: docs/security.md)")
                log.warning("return address %s %s; its answers go to the answers topic only%s", topic, why, more)

    @property
    def checking(self) -> int:
        """Topics to ask about, and asked about, whose answer is not taken yet."""
        return len(self._to_ask) + (len(self._asking[0]) if self._asking is not None else 0)

    def _ask_broker(self, topics: list[str]) -> dict[str, int]:
        """Runs on the helper thread: one DescribeTopics request for all of them (it leaves no
        topic handle in the client for librdkafka to keep asking about)."""
        assert self._admin is not None
        try:
            answers = describe_each(self._admin, topics, ASK_TIMEOUT_S)
        except KafkaException as exc:
            log.warning("cannot check return address(es) %s (asking again in %.0f s): %s",
                        ", ".join(topics[:3]), RECHECK_S, exc)
            return dict.fromkeys(topics, UNKNOWN)
        counts = {topic: partition_count(answers.get(topic)) for topic in topics}
        unknown = [topic for topic, count in counts.items() if count == UNKNOWN]
        if unknown:
            log.warning("cannot check return address(es) %s (asking again in %.0f s): %s", ", ".join(unknown[:3]),
                        RECHECK_S, answers.get(unknown[0]) or "no answer in time")
        return counts


# What the broker says of a topic that is not there for us: every other error of its description
# (a leader being elected, a coordinator moving, no answer in time) is passing.
_NO_TOPIC = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_EXCEPTION)


def partition_count(described: Any) -> int:
    """A topic's partition count from the broker's answer (`describe_each`: its description, its
    error, None if it did not answer): 0 if it does not exist, REFUSED if the principal may not see
    it, UNKNOWN while the broker cannot tell. A passing error read as "missing" dropped every reply
    to the topic, the deployment's own replies topic included, until the verdict expired (30 s),
    their requests committed as answered (a review)."""
    if described is None:
        return UNKNOWN
    if not isinstance(described, KafkaError):
        return len(described.partitions)
    if described.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        return REFUSED
    return 0 if described.code() in _NO_TOPIC else UNKNOWN
