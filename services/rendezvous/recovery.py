"""Taking over a partition without answering anything twice.

The committed input offset of a requests partition is that of its oldest *unfinished* request,
so a new owner re-reads requests that may already be answered (answered, but still collecting
late scores for the comparison record) or even logged (finished, but behind an older
unfinished one). Before re-reading partition p it reads the answers and comparison log of
partition p (outputs are co-partitioned with the requests) from where they may hold outputs of
re-read requests: requests found there are restored as answered / skipped as logged, and their
answers sent to their return addresses again (join.py).

Where to start reading travels with the committed offset as its metadata (a `Mark`): the end
offsets of the answers and log partitions (as delivered to this instance) when the oldest
unfinished request was read, and the transactional id of the instance that committed it. Until
an instance has delivered outputs to a partition, its marks there are where its own recovery
started (`Recovered.floors`): a 0 would make the next owner read the whole topic.
Without a mark (a group committed by an older version) the start is found by time, from a
margin before the committed request's timestamp.

A crashed previous owner may have left a transaction open on those partitions; read_committed
readers cannot pass it until the broker aborts it (after transaction.timeout.ms). The new owner
therefore fences a departed previous owner's transactional id first (`fence`): its open
transaction is ended at once. Only a departed one: a previous owner that is still a member of
the group (it gave the partition up in a rebalance, committing on revoke) holds no open
transaction for it, and fencing it would kill a healthy instance (`live_members`).

The scan reads as read_committed, so it stops at each partition's last stable offset: outputs of
a transaction still open are beyond it, unseen. Were that transaction to commit after the scan,
its answers would go out twice (once from it, once from the re-read). So the scan starts only
once no transaction is open on the partitions it reads (`OpenTransaction` until then): the
stable end has reached what was written when the scan began.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer as _NativeConsumer
from confluent_kafka import KafkaException, Message, TopicPartition
from confluent_kafka import Producer as _NativeProducer

from services.core import kafka_logs
from services.core.codec import codec
from services.core.control_records import is_control_record
from services.core.errors import BadInput, RendezvousError
from services.core.kafka import (
    LIBRDKAFKA_TRANSACTION_TIMEOUT_MS,
    admin,
    committed_offsets,
    end_offsets,
    reader,
    within_transaction,
)
from services.core.request_inputs import inputs_in
from services.core.runtime import now_ms
from services.core.settings import Topics
from services.core.topic_range import PartitionSpan, read_together
from services.rendezvous.join import Finished

log = logging.getLogger(__name__)

END = "end"  # a scan's start: the partition's end (nothing to read)


# Answers read from before each re-read window, at most: those of the last remember_ms (found by
# time, so a quiet partition reads few), but no more than a minute of 1,600 requests/s on one
# partition. Only keys are kept (no decode): ≈ 0.3 s of scan at the cap. It was 10,000: from
# about 170 requests/s on a partition, a retry of an id answered 20-60 s before a takeover (or
# any rebalance: the classic protocol revokes every partition) got a second decision, where the
# previous owner's memory (a minute, 200,000 ids) would have given its answer again.
REMEMBERED_AT_MOST = 100_000
CANCEL_CHECK_EVERY = 1_000  # records a scan reads between asking whether it was given up (≈ 3 ms)


class OpenTransaction(RendezvousError):
    """A transaction is still open on output partitions recovery must read: try again shortly.
    `partitions`: each (topic, partition) whose stable end is short of what was written there."""

    def __init__(self, message: str, partitions: list[tuple[str, int]]):
        super().__init__(message)
        self.partitions = partitions
        self.fallen_back_to: list[TopicPartition] = []  # the offsets the try fell back to, if it did


class ScanUnreadable(RendezvousError):
    """An output recovery must read cannot be decoded yet (the schema registry it names is away):
    try again shortly. `partition`: the output's, its requests' too (they are co-partitioned)."""

    retriable = True

    def __init__(self, message: str, partition: int):
        super().__init__(message)
        self.partition = partition


class ScanCancelled(RendezvousError):
    """The scan was given up: the partitions it was for were taken away meanwhile."""


@dataclass(frozen=True)
class Mark:
    """Committed with a requests partition's offset: where its outputs may start, who committed."""

    answers: int
    log: int
    txn: str = ""

    def encode(self) -> str:
        return f"a={self.answers};l={self.log};t={self.txn}"

    @classmethod
    def decode(cls, text: str | None) -> Mark | None:
        if not text:
            return None
        try:
            # The transactional id last, and whole: it is the group's name, in which Kafka allows
            # a ';' (split on every one, such a mark was unreadable and no takeover fenced).
            fields = dict(item.split("=", 1) for item in text.split(";", 2))
            answers, log = int(fields["a"]), int(fields["l"])
        except (ValueError, KeyError):
            return None
        # Offsets of the outputs' partitions: a negative one is no mark this service wrote.
        return cls(answers, log, fields.get("t", "")) if answers >= 0 and log >= 0 else None


def fence(config: Mapping[str, Any], transactional_id: str, timeout_s: float = 10.0) -> bool:
    """End whatever transaction `transactional_id` left open (its owner is gone): a producer
    registering the same id makes the coordinator abort it now instead of at its timeout."""
    config = within_transaction(config, LIBRDKAFKA_TRANSACTION_TIMEOUT_MS)
    producer = _NativeProducer(kafka_logs.wired({**config, "transactional.id": transactional_id}))
    try:
        producer.init_transactions(timeout_s)
        return True
    except KafkaException as exc:
        log.warning("could not fence %s: %s", transactional_id, exc)
        return False


def stable_marks(config: Mapping[str, Any], group: str, partitions: list[TopicPartition]) -> dict[int, Mark | None]:
    """The marks of the group's last completed commits, read without waiting for an open
    transaction: exactly the crashed owner's transaction that must be fenced first, named by
    the transactional id in the mark."""
    done = committed_offsets(config, group, partitions, stable=False, timeout_s=3.0)
    return {tp.partition: Mark.decode(tp.metadata) for tp in done}


def live_members(config: Mapping[str, Any], group: str, timeout_s: float = 5.0) -> set[str] | None:
    """The client ids of the group's current members (None if the broker could not say).

    Each rendezvous uses its transactional id as its client id, so a previous owner whose id is
    in this set is alive and must not be fenced."""
    client = admin(dict(config))
    try:
        future = client.describe_consumer_groups([group], request_timeout=timeout_s)[group]
        return {member.client_id for member in future.result(timeout=timeout_s).members}
    except (KafkaException, TimeoutError) as exc:
        log.warning("could not list the members of %s (%s): fencing nobody", group, exc)
        return None


@dataclass(frozen=True)
class Recovered:
    """What a takeover found: the re-read window's finished requests, and per output partition
    (topic, partition) the offset before which no output of a request at or after the committed
    offset can be. The floor is this instance's mark until it delivers outputs there itself: a
    mark of 0 would send the next owner scanning the whole topic.

    `reread_ends`: per requests partition with a re-read window, the partition's end when the
    scan began. A request below it may have been answered by the previous owner anywhere after
    the floors, so its mark stays the floors even once this instance has delivered outputs of
    its own there (a mark past them would hide that answer from the next owner's scan)."""

    finished: Finished
    floors: dict[tuple[str, int], int]
    reread_ends: dict[int, int] = field(default_factory=dict)


def scan_finished(
    config: Mapping[str, Any], topics: Topics, committed: Mapping[int, tuple[int, Mark | None]], margin_ms: int,
    remember_ms: int = 0, cancelled: Callable[[], bool] = lambda: False,
) -> Recovered:
    """What was already answered / logged for requests at or after the committed offsets; and,
    with `remember_ms`, the answers of requests closed in that time before them (a retry of one,
    read later, gets its answer again instead of a second decision): at most REMEMBERED_AT_MOST
    answers of each partition, so that a takeover's scan stays short at any rate. ScanCancelled
    once `cancelled()` says so (asked every CANCEL_CHECK_EVERY records read)."""
    finished = Finished({}, set())
    probe = reader(config, "recovery")
    try:
        answers: dict[int, int | str] = {}
        logs: dict[int, int | str] = {}
        reread_ends: dict[int, int] = {}
        reread_from: dict[int, int] = {}  # the log time of each partition's first re-read request, if read
        for partition, (offset, mark) in committed.items():
            stop_if_given_up(cancelled, committed)
            requests_end = _requests_end(probe, topics, partition)
            if not 0 <= offset < requests_end:
                # Nothing to redo: outputs of what comes next are written after the partitions' ends now.
                answers[partition], logs[partition] = END, END
                continue
            reread_ends[partition] = requests_end
            wanted = mark is None or remember_ms > 0
            at = _timestamp_at(probe, topics.requests, partition, offset, requests_end) if wanted else None
            if at is not None:
                reread_from[partition] = at
            answers[partition], logs[partition] = _starts(mark, at, margin_ms)
        # Written ends first, stable ends second: whatever was written before the scan must be
        # stable (committed or aborted) by the time the stable ends are read. Only where requests
        # are re-read: elsewhere nothing could be answered twice.
        stop_if_given_up(cancelled, committed)
        redo = [partition for partition, start in answers.items() if start != END]
        written = end_offsets(config, [(topic, p) for topic in (topics.answers, topics.log) for p in redo],
                              committed=False)
        spans = {topics.answers: _spans(probe, topics.answers, answers), topics.log: _spans(probe, topics.log, logs)}
        earlier = {}
        if remember_ms > 0:
            # From the first answer of the last remember_ms before the first re-read request (and a
            # margin for clocks), by time. Anchored on that request's log time, as the previous
            # owner forgot ids by its requests' log times: by this instance's clock, a takeover
            # more than a minute after the crash remembered nothing, and decided a retry again (a review).
            now = now_ms()
            earlier = {span.partition: max(_low(probe, topics.answers, span.partition), span.start - REMEMBERED_AT_MOST,
                                           _offset_at(probe, topics.answers, span.partition,
                                                      min(now, reread_from.get(span.partition, now)) - 2 * remember_ms,
                                                      span.start))
                       for span in spans[topics.answers] if committed[span.partition][0] >= 0}
    finally:
        probe.close()
    _refuse_open_transactions(written, spans)
    floors = {(topic, span.partition): span.start for topic, topic_spans in spans.items() for span in topic_spans}
    readers = {topics.answers: codec("answer"), topics.log: codec("comparison")}
    # The answers read from before each span's start are remembered ids, not re-read requests'.
    before = {span.partition: span.start for span in spans[topics.answers]}
    spans[topics.answers] = [PartitionSpan(span.partition, min(span.start, earlier.get(span.partition, span.start)),
                                           span.end) for span in spans[topics.answers]]
    unread = {topic: [span for span in topic_spans if span.size > 0] for topic, topic_spans in spans.items()}
    logged: dict[str, dict[str, Any]] = {}
    for count, (topic, msg) in enumerate(_read_all(config, unread)):
        if count % CANCEL_CHECK_EVERY == 0:
            stop_if_given_up(cancelled, committed)
        if is_control_record(msg):
            continue
        if topic == topics.answers and (msg.offset() or 0) < before[msg.partition() or 0]:
            _remembered(finished, msg)
            continue
        try:
            record = readers[topic].decode(msg.value())
        except BadInput as err:
            _unreadable(finished, topic, msg, err)
            continue
        if topic == topics.answers:
            finished.answered[record["request_id"]] = record
            _note_inputs(finished, record["request_id"], msg)
        else:
            finished.logged.add(record["request_id"])
            logged[record["request_id"]] = record
            if record["request_id"] not in finished.inputs:  # its answer's, when read, says the same
                _note_inputs(finished, record["request_id"], msg)
        finished.partition_of[record["request_id"]] = msg.partition() or 0  # the request's partition too
    # A request answered at once and logged later can have its answer before the mark, its
    # comparison record after: a retry of it (same id) must still get that answer, not none.
    for rid, record in logged.items():
        if rid not in finished.answered:
            finished.answered[rid] = answer_of(record)
    _keep_recent(finished, remember_ms)
    log.info("recovery: %d requests already answered, %d already logged, %d answered before them remembered, "
             "on partitions %s", len(finished.answered), len(finished.logged), len(finished.remembered),
             sorted(committed))
    return Recovered(finished, floors, reread_ends)


def stop_if_given_up(cancelled: Callable[[], bool], partitions: Iterable[int]) -> None:
    """ScanCancelled once the takeover gave the try up (its partitions were taken away)."""
    if cancelled():
        raise ScanCancelled(f"recovery of partitions {sorted(partitions)} given up: they were taken away")


def _offset_at(probe: _NativeConsumer, topic: str, partition: int, at_ms: int, otherwise: int) -> int:
    """The first offset written at or after `at_ms`; `otherwise` if none is."""
    found = probe.offsets_for_times([TopicPartition(topic, partition, at_ms)], timeout=15)[0]
    return int(found.offset) if found.offset >= 0 else otherwise


def _low(probe: _NativeConsumer, topic: str, partition: int) -> int:
    low, _high = probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
    return int(low)


def _keep_recent(finished: Finished, remember_ms: int) -> None:
    """Of the answers read before the window, those of the last `remember_ms` (by each partition's
    newest), and not found again in the window (that finding counts)."""
    newest: dict[int, int] = {}
    for partition, at, _value in finished.remembered.values():
        newest[partition] = max(at, newest.get(partition, at))
    for rid, (partition, at, _value) in list(finished.remembered.items()):
        if rid in finished.partition_of or at < newest[partition] - remember_ms:
            del finished.remembered[rid]


def _unreadable(finished: Finished, topic: str, msg: Message, err: BadInput) -> None:
    """An output in a re-read window that cannot be decoded still says its request was done:
    skipped, the request got a second decision. One that may be read later (its schema's registry
    away) makes recovery wait; one that never can (another version's schema, say, in a rolling
    upgrade) counts its key, the request id, as logged: nothing is decided again, and its reply
    is not sent again (what it said is unknown)."""
    where = f"{topic}[{msg.partition()}]@{msg.offset()}"
    if err.retriable:
        raise ScanUnreadable(f"the output at {where} cannot be read yet ({err})", msg.partition() or 0)
    rid = _key_text(msg)
    if rid is None:
        log.warning("recovery: the output at %s cannot be read (%s) and has no request id as its key", where, err)
        return
    log.warning("recovery: the output at %s cannot be read (%s): request %r counts as done, not decided again",
                where, err, rid)
    finished.logged.add(rid)
    finished.partition_of.setdefault(rid, msg.partition() or 0)


def _key_text(msg: Message) -> str | None:
    key = msg.key()
    if not isinstance(key, bytes):
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return None


def _remembered(finished: Finished, msg: Message) -> None:
    """An answer written before the re-read window: kept as it is (decoded only if a retry of
    its request comes), under its key, the request id."""
    rid, value = _key_text(msg), msg.value()
    if rid is None or not isinstance(value, bytes):
        return
    finished.remembered[rid] = (msg.partition() or 0, int(msg.timestamp()[1]), value)
    _note_inputs(finished, rid, msg)


def _note_inputs(finished: Finished, rid: str, msg: Message) -> None:
    """The digest of the inputs an Answer (or Comparison) record answered, from its header (none:
    not known)."""
    inputs = inputs_in(msg.headers())
    if inputs is not None:
        finished.inputs[rid] = inputs
        return
    finished.inputs.pop(rid, None)  # a later answer under the id without one: not known


def answer_of(logged: Mapping[str, Any]) -> dict[str, Any]:
    """The Answer a comparison record was logged with (it carries the decision, and the chosen
    model's output)."""
    chosen = next((o for o in logged["outputs"] if o["model"] == logged["chosen_model"]), None)
    return {
        "request_id": logged["request_id"],
        "status": logged["status"],
        "model": logged["chosen_model"],
        "version": chosen["version"] if chosen else None,
        "score": chosen["score"] if chosen else None,
        "label": chosen["label"] if chosen else None,
        "reason": logged["reason"],
        "created_at": logged["created_at"],
        "deadline": logged["deadline"],
        "answered_at": logged["answered_at"],
        "schedule": logged["schedule"],
        "schedule_version": logged["schedule_version"],
    }


def _requests_end(probe: _NativeConsumer, topics: Topics, partition: int) -> int:
    """The requests partition's end now: the previous owner read nothing at or after it."""
    _low, high = probe.get_watermark_offsets(TopicPartition(topics.requests, partition), timeout=15)
    return int(high)


def _starts(mark: Mark | None, reread_from: int | None, margin_ms: int) -> tuple[int | str, int | str]:
    """Where outputs of requests re-read from a committed offset may start on the answers and log
    partitions (offsets, or "ms:<time>" to find by time): the previous owner's mark, else by the
    first re-read request's log time (`reread_from`; None: unknown, from the start)."""
    if mark is not None:
        return mark.answers, mark.log
    start = f"ms:{max(0, reread_from - margin_ms)}" if reread_from is not None else "ms:0"
    return start, start


def _timestamp_at(probe: _NativeConsumer, topic: str, partition: int, offset: int, end: int) -> int | None:
    """The timestamp of the first record at or after `offset`; None if there is none before `end`
    (only transaction markers there: an upstream producer's transactions) or it is not read in 15 s."""
    tp = TopicPartition(topic, partition, offset)
    probe.assign([tp])
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            msg = probe.poll(0.5)
            if msg is not None and msg.error() is None:
                return int(msg.timestamp()[1])
            # Markers are read past without a record: waiting out the 15 s at a marker ending the
            # partition delayed every takeover of such a partition by as much.
            if msg is None and probe.position([tp])[0].offset >= end:
                return None
        return None
    finally:
        probe.unassign()


def _spans(probe: _NativeConsumer, topic: str, starts: Mapping[int, int | str]) -> list[PartitionSpan]:
    """From each start (an offset, "ms:<time>" or END) to the partition's end now; empty ones too."""
    spans = []
    for partition, start in starts.items():
        low, high = probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
        if start == END:
            offset = high
        elif isinstance(start, str):  # "ms:<epoch ms>": the first offset at or after that time
            offset = _offset_at(probe, topic, partition, int(start[3:]), high)
        else:
            offset = start
        spans.append(PartitionSpan(partition, max(low, min(offset, high)), high))
    return spans


def _refuse_open_transactions(written: Mapping[tuple[str, int], int], spans: Mapping[str, list[PartitionSpan]]) -> None:
    """Raise OpenTransaction if a span ends (at the stable end) before what was written there
    (partitions without a written end were not asked: nothing is re-read there)."""
    short = []
    for topic, topic_spans in spans.items():
        for span in topic_spans:
            end = written.get((topic, span.partition), span.end)
            if span.end < end:
                short.append((topic, span.partition, span.end, end))
    if short:
        where = ", ".join(f"{topic}[{partition}] (stable up to offset {stable}, written up to {end})"
                          for topic, partition, stable, end in short)
        raise OpenTransaction(f"a transaction is still open on {where}: recovery waits for it to end (one open "
                              f"far longer than the transaction timeout is hanging: docs/failover.md)",
                              [(topic, partition) for topic, partition, _stable, _end in short])


def _read_all(config: Mapping[str, Any], spans: Mapping[str, list[PartitionSpan]]) -> Iterator[tuple[str, Message]]:
    """Every record of the spans of several topics, read together by one consumer."""
    keyed = {(topic, s.partition): s for topic, topic_spans in spans.items() for s in topic_spans if s.size > 0}
    if not keyed:
        return  # nothing to read: no client to start
    consumer = reader(config, "recovery", extra={"auto.offset.reset": "earliest"})
    try:
        # A short wait per fetch: the takeover waits for this, and the last fetch is never full.
        for msg in read_together(consumer, keyed, what="recovery", timeout_s=120, wait_s=0.2):
            yield msg.topic() or "", msg
    finally:
        consumer.close()
