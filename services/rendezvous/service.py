"""The rendezvous service: the join (join.py) plugged into the shared service skeleton.

This module only adapts Kafka to the join: it turns records into plain `RequestIn` / `ScoreIn`
values, keeps the offset book and writes what the join decides. Taking partitions over lives in
takeover.py (with recovery.py), the schedules from the control topic in schedules.py.

Co-partitioning: requests and scores are keyed by request_id with equal partition counts, and
one consumer group reads both topics with the range assignor, so the instance that owns request
partition p also owns score partition p. Answers and comparison records go to partition p of
their topics too, which lets a new owner find what was already answered (recovery.py).

Commit order (services/core/service.py, core/commits.py): answers, comparison records and dead
letters are produced into a transaction (exactly-once, the default) and committed together with
the offsets of the inputs they finish, on a thread of their own. The committable offset of a
partition is that of its oldest record whose mailbox is still open (offsets.py).

Answers to return addresses go out at once (at the end of the batch that decided them) through a
separate, non-transactional producer. That is safe because every decision is a function of the
records alone (join.py): if this instance crashes before its transaction commits, the new owner
re-decides the same answer, so a client can receive an identical repeat, never a different answer.
And a request's offset waits for the broker's acknowledgement of its replies (mailbox.py): if the
crash comes after the answer was committed but before its reply was acknowledged, the new owner
re-reads the request, finds the answer and sends it again.

Clock: decisions use the log's clock (the broker's append times of the scores partition); quiet
partitions get clock records written by this service (clock.py). Wall time is used only to
decide *when* to ask for a clock record, and for metrics.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition

from services.control.schedule import Schedule
from services.control.topic import check_one_partition
from services.core.cloudevents import EventHeaders
from services.core.codec import codec
from services.core.control_records import CLOCK_HEADER, control_header
from services.core.deadletter import DeadLetters
from services.core.errors import (
    BadInput,
    ConfigError,
    DecodeFailed,
    KafkaOperationError,
    ProducerInErrorState,
    RecordTooLarge,
    UnexpectedFailure,
)
from services.core.kafka import (
    SERVING_DELIVERY_TIMEOUT_MS,
    Producer,
    delivery_timeout,
    outputs_checked_at_start,
    partition_counts,
    topic_config,
)
from services.core.metrics import DECODE_ERRORS
from services.core.rate_limit import OncePerPeriod
from services.core.request_inputs import INPUTS_HEADER
from services.core.requests import MAX_REQUEST_ID
from services.core.runtime import now_ms
from services.core.service import Context, Probed, StreamService, StreamSpec
from services.rendezvous import compiled_records
from services.rendezvous import metrics as m
from services.rendezvous.clock import BrokerLead
from services.rendezvous.join import Join, Owner, Reply
from services.rendezvous.mailbox import Mailbox
from services.rendezvous.offsets import OffsetBook
from services.rendezvous.records import request_in, score_in
from services.rendezvous.recovery import Mark
from services.rendezvous.replies import Headers, ReplyRouter, ReplyRules
from services.rendezvous.schedules import ScheduleFeed
from services.rendezvous.score_brake import ScoreBrake
from services.rendezvous.settings import RendezvousSettings
from services.rendezvous.takeover import JOB_STUCK_S, Takeover

log = logging.getLogger(__name__)

SERVICE = "rendezvous"
RESUME_AT = 0.8  # request intake resumes once the mailbox table is below this share of its maximum
# An answer or comparison record too large to write (a score's label or error near Kafka's record
# size) is written again with every string cut to this many characters (request ids are never longer).
CUT_TO = MAX_REQUEST_ID
OUTBOX_MAX = 64  # replies held back for the end of a batch, at most (~100 µs of the join each)
REPLY_TIMEOUT_GRACE_MS = 10_000  # a reply's (or clock record's) delivery timeout: the largest budget and this
REPLY_FAILURES_SAID_EVERY_S = 60.0  # a failed answer to a return address: one line this often at most


def reply_producer_config(config: Mapping[str, Any], max_budget_ms: int) -> dict[str, Any]:
    """The producer of replies and clock records (unacknowledged: the offsets wait for them).

    A return address is a client's word: it must never create a topic (on a broker that creates
    topics on demand, a metadata question or a produce would). A reply or a clock record later
    than the largest budget serves no one, and librdkafka's default timeout (300 s) would leave a
    client stuck after a broker restart (librdkafka #5430: no clock records, so no deadline fires,
    on a quiet partition) unnoticed as long: its first timeout replaces it (Producer.timed_out).
    Every topic it writes is checked first (a return address before its first reply, the scores
    at start), so one missing from the metadata is one deleted: a client's return address deleted
    under a flow of requests held their replies, and so every offset behind them, uncommitted for
    30 s (librdkafka's propagation wait), /readyz ready (a review). A --kafka-config timeout or wait wins."""
    timeout = delivery_timeout(config, max_budget_ms + REPLY_TIMEOUT_GRACE_MS)
    checked = outputs_checked_at_start(config)
    return {**config, **timeout, **checked, "linger.ms": 0, "allow.auto.create.topics": False}


class Rendezvous(Probed):
    """One rendezvous instance; `run(stop)` until the flag is set, then drain and commit."""

    def __init__(self, settings: RendezvousSettings, schedule: Schedule | None = None):
        self.settings = settings
        self.topics = settings.topics()
        # Used only if the control topic holds no version of this schedule yet (it is then
        # published there as the first version, so the topic stays the one source of truth).
        self.schedules = ScheduleFeed(settings.schedule_name, schedule or settings.schedule(), self.topics,
                                      self._dead_letter, seeded_by=settings.seeded_by(),
                                      max_budget_ms=settings.max_budget_ms)
        self.book = self.schedules.book
        self.join = Join(settings.limits(), self.schedules, self)
        self.offsets = OffsetBook()
        self.service = StreamService(self._spec(), self)
        self.ready = self.service.ready
        self._requests, self._scores = codec("request"), codec("score")
        self._answers, self._comparisons = codec("answer"), codec("comparison")
        self._answer_events = EventHeaders("Answer", self.topics.answers) if settings.cloudevents else None
        self._log_events = EventHeaders("Comparison", self.topics.log) if settings.cloudevents else None
        self._paused = False
        self._brake = ScoreBrake(settings.max_orphans, lag_from=settings.max_batch)
        # The log's timers are in the broker's time, the wall clock in this host's.
        self._lead = BrokerLead(uuid.uuid4().hex[:12])
        self.takeover = Takeover(settings, self.join, self._start_at)
        self._ctx: Context | None = None
        self._fast: Producer | None = None
        self._reply_failures = OncePerPeriod[str](REPLY_FAILURES_SAID_EVERY_S)
        self._dead: DeadLetters | None = None
        self._replies: ReplyRouter | None = None
        # Replies decided during a batch, produced together at its end (`_send_replies`).
        self._outbox: list[tuple[str, int | None, bytes, bytes, Headers, Callable[[], None]]] = []

    def _start_at(self, topic: str, partition: int, offset: int) -> None:
        """A partition never committed starts at `offset` (latest's end when it was assigned),
        committed by a transaction requested now, not after the commit interval: until it is,
        a kill makes the next owner's `latest` skip what came meanwhile."""
        self.offsets.start_at(topic, partition, offset)
        if self._ctx is not None:
            self._ctx.commit_soon()

    def _spec(self) -> StreamSpec:
        s, t = self.settings, self.topics
        consumer: dict[str, Any] = {
            "auto.offset.reset": s.start_from,
            # Range assigns partition p of both topics to the same member (co-partitioning).
            "partition.assignment.strategy": "range",
            "isolation.level": "read_committed",
            "session.timeout.ms": s.session_timeout_ms,
            "heartbeat.interval.ms": max(100, s.session_timeout_ms // 3),
            "max.poll.interval.ms": max(s.stall_timeout_ms, s.session_timeout_ms),  # librdkafka refuses less
            "client.id": s.transactional_id(),
        }
        if s.static_member():
            consumer["group.instance.id"] = s.instance
        return StreamSpec(
            name=SERVICE, config=s.librdkafka(), subscription=[t.requests, t.scores], group_id=s.group_id(),
            processing=s.processing, transactional_id=s.transactional_id(),
            transaction_timeout_ms=s.transaction_timeout_ms, commit_interval_ms=s.commit_interval_ms,
            max_batch=s.max_batch, drain_timeout_s=s.drain_timeout_s, connect_timeout_s=s.connect_timeout_s,
            consumer_config=consumer, intake=(t.requests,),
            # Answers, comparison records and dead letters wait for the commit anyway: batch them.
            producer_config={"linger.ms": s.output_linger_ms, **self._outputs_timeout(s)},
            delivered=True,  # where its outputs end (`_output_end`) comes from their deliveries
            outputs=(t.answers, t.log, t.deadletter),
            records={t.requests: "request", t.scores: "score"},
        )

    @staticmethod
    def _outputs_timeout(s: RendezvousSettings) -> dict[str, Any]:
        """At least once, the outputs' producer is no transaction's: librdkafka's 300 s would let a
        client stuck after a broker restart (#5430) hold every commit that long (its flush waits).
        In transactions their timeout is the transaction's (within_transaction)."""
        if s.processing != "at-least-once":
            return {}
        return delivery_timeout(s.librdkafka(), SERVING_DELIVERY_TIMEOUT_MS)

    # -- what tests and the CLI look at --------------------------------------------------

    @property
    def mailboxes(self) -> dict[str, Mailbox]:
        return self.join.mailboxes

    @property
    def answered(self) -> int:
        return self.join.answered

    @property
    def logged(self) -> int:
        return self.join.logged

    @property
    def schedule(self) -> Schedule:
        """The schedule in force now (requests are governed by the one in force at creation)."""
        return self.schedules.for_request(now_ms())

    def run(self, stop: Any) -> None:
        self._check_topics()
        # The record walks, loaded (or compiled) before the first batch; after the checks, which
        # say at once when no broker answers (compiled first, with a cold cache, 6 s later).
        compiled_records.warm_up()
        try:
            self.service.run(stop)
        finally:  # said whatever ends it: the worker, decoy and comparison say theirs (a review)
            log.info("rendezvous stopping after %d answers and %d comparison records", self.join.answered,
                     self.join.logged)


    def _check_topics(self) -> None:
        t, config = self.topics, self.settings.librdkafka()
        counts = partition_counts(config, [t.requests, t.scores, t.answers, t.log, t.deadletter, t.control],
                                  timeout=self.settings.connect_timeout_s)
        for other in (t.scores, t.answers, t.log):
            if counts[other] != counts[t.requests]:
                raise ConfigError(
                    f"{other} has {counts[other]} partitions but {t.requests} has {counts[t.requests]}: "
                    "scores, answers and log must be co-partitioned with the requests"
                )
        # Its control feed checks it too, but only once the clients are made and warmed up: said
        # here first, on the counts just read (no call more).
        check_one_partition(config, t.control, counts[t.control])
        # Requests and scores: a request's append time starts its clock, a score's moves it. With
        # CreateTime a client would set them (the requests' check was missing: a security review).
        # Control: a version's effective_at is bounded by when it was written (a review).
        for topic in (t.requests, t.scores, t.control):
            kind = topic_config(config, topic, "message.timestamp.type")
            if kind != "LogAppendTime":
                raise ConfigError(
                    f"{topic} uses message.timestamp.type={kind}: the rendezvous decides by the broker's "
                    "append times, so it needs LogAppendTime (`rendezvous topics create` sets it on existing topics)"
                )

    # -- the skeleton's handler ----------------------------------------------------------

    def start(self, ctx: Context) -> None:
        self._ctx = ctx
        fast = Producer(reply_producer_config(ctx.config, self.settings.max_budget_ms),
                        soft_topics=lambda _t: True, on_soft_failure=self._on_reply_failure,
                        delivered=True)  # a reply's receipt: on_done
        ctx.stack.callback(fast.close)
        self._fast = fast
        assert ctx.producer is not None
        # Its sources: what it reads, and the control topic, whose refused schedules it dead-letters too.
        self._dead = DeadLetters.for_topic(ctx.outputs, ctx.config, self.topics.deadletter, SERVICE,
                                           known=ctx.producer.topic_limit(self.topics.deadletter),
                                           sources=[*ctx.spec.subscription, self.topics.control])
        rules = ReplyRules(self.topics, self.settings.reply_topic_pattern())
        self._replies = ReplyRouter(self._queue_reply, {**ctx.config, "allow.auto.create.topics": False}, rules)
        ctx.stack.callback(self._replies.close)
        ctx.stack.callback(self.takeover.close)  # before the consumer's close (the stack unwinds in reverse)
        self._replies.check_now(self.topics.replies)
        self.schedules.start(ctx)

    def on_batch(self, messages: list[Message]) -> None:
        requests, scores = self.topics.requests, self.topics.scores
        for msg in messages:
            topic = msg.topic()
            try:
                if topic == scores:
                    self._on_score(msg)
                elif topic == requests:
                    self._on_request(msg)
            except ProducerInErrorState:
                raise  # the producer's failure, not the record's (at least once: a fatal producer stops it)
            # One record must never stop the service: whatever it made fail is dead-lettered,
            # counted, and the stream goes on (the traceback goes to the log for a developer).
            except Exception as exc:
                log.exception("unexpected failure on %s[%s]@%s", topic, msg.partition(), msg.offset())
                self._reject(msg, UnexpectedFailure(f"processing failed: {type(exc).__name__}: {exc}"))
        self._send_replies()
        self.join.metrics.flush()  # the join counts only while records come in: all of it is counted by now

    def _on_request(self, msg: Message) -> None:
        partition, offset, log_time = msg.partition() or 0, msg.offset() or 0, msg.timestamp()[1]
        try:
            request = request_in(self._requests, msg.value(), partition, offset, log_time)
        except BadInput as err:
            self._reject(msg, err)
            return
        if request.problem is not None:
            self._dead_letter(msg, DecodeFailed(request.problem))
        reread_end = self.takeover.reread_ends.get(partition, -1)
        if offset >= reread_end >= 0:  # appended after the takeover's scan: no entry of it is this one's
            self.join.end_reread(partition)
        owner = self.join.on_request(request)
        if offset == reread_end - 1:  # the last request the scan could have found answered
            self.join.end_reread(partition)
        mark = self._mark(partition, offset) if owner is not None else None
        self.offsets.track(self.topics.requests, partition, offset, owner, mark)

    def _on_score(self, msg: Message) -> None:
        partition, offset, log_time = msg.partition() or 0, msg.offset() or 0, msg.timestamp()[1]
        control = control_header(msg)
        if control is not None and control[0] == CLOCK_HEADER:
            self._lead.note(partition, log_time, now_ms(), control[1])
            self.join.on_clock(partition, log_time)
            self.offsets.track(self.topics.scores, partition, offset, None)
            return
        try:
            score = score_in(self._scores, msg.value(), partition, offset, log_time)
        except BadInput as err:
            self.join.on_clock(partition, log_time)  # its append time is a fact of the log all the same
            self._reject(msg, err)
            return
        owner = self.join.on_score(score)
        self.offsets.track(self.topics.scores, partition, offset, owner)

    def on_tick(self) -> None:
        assert self._replies is not None and self._fast is not None
        self.schedules.poll()
        self._replies.poll()
        assert self._ctx is not None
        self._hold_intake(self.takeover.run_due(self._ctx))
        self._ask_for_clock_records()
        self._throttle()
        self._brake_scores()
        self.schedules.show(now_ms())
        m.MAILBOXES.set(len(self.join.mailboxes))
        m.ORPHANS.set(self.join.orphans)
        m.HELD_BYTES.set(self.join.held_bytes)
        self._send_replies()  # those decided outside a batch (a takeover's repeats, verdicts that came in)
        self._fast.poll(0)
        self._say_held_reply_failures()

    def _hold_intake(self, resumed: list[TopicPartition]) -> None:
        """Recovered requests partitions wait with the rest of intake while it is paused: by
        --max-mailboxes, or by the drain (after a rebalance during a drain, resumed, they opened
        new mailboxes and kept the drain running to its timeout: a review)."""
        assert self._ctx is not None
        if resumed and (self._paused or self._ctx.draining):
            self._ctx.consumer.pause([tp for tp in resumed if tp.topic == self.topics.requests])

    def next_wakeup(self) -> float:
        earliest = self.join.clocks.earliest(self._lead.of)  # in this host's time
        if earliest is None:
            return 1.0
        due_in = (earliest + self.settings.clock_record_delay_ms - now_ms()) / 1000.0
        # Overdue: a clock record is on its way (or the broker is away); the poll returns as soon
        # as any record arrives, so waiting a little costs no latency and spins no CPU.
        return due_in if due_in > 0 else 0.05

    def finished_offsets(self) -> list[TopicPartition]:
        moves = self.offsets.to_commit(self._current_mark)
        return moves + self.takeover.take_offsets_to_recommit({(tp.topic, tp.partition) for tp in moves})

    def on_committed(self, offsets: list[TopicPartition]) -> None:
        self.offsets.mark_committed(offsets)
        if self.service.ctx is not None and self.service.ctx.outputs.transactional:
            m.TRANSACTIONS.labels("committed").inc()

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        assert self._ctx is not None
        self._paused = False
        m.PAUSED.set(0)
        self.takeover.add(self._ctx, partitions)

    def on_released(self, partitions: list[TopicPartition], lost: bool) -> None:
        self._brake.forget({tp.partition for tp in partitions if tp.topic == self.topics.scores})
        m.SCORES_HELD.set(len(self._brake.held))
        self.takeover.release(partitions)
        self.join.drop_partitions({tp.partition for tp in partitions})
        self.offsets.forget(partitions)
        # Where this instance's outputs ended on a partition it gives up: kept, a later
        # takeover of the same partition by this instance would mark the requests it re-reads
        # past the answers it wrote for them before, and a crash then would make the next owner
        # scan from there (`_output_end`: until new outputs, recovery's floor is the mark).
        numbers = {tp.partition for tp in partitions if tp.topic == self.topics.requests}
        if numbers and self._ctx is not None and self._ctx.producer is not None:
            self._ctx.producer.forget_ends((topic, p) for topic in (self.topics.answers, self.topics.log)
                                           for p in numbers)

    def on_rewind(self) -> None:
        m.TRANSACTIONS.labels("aborted").inc()
        assert self._ctx is not None
        assignment = self._ctx.consumer.assignment()
        self.takeover.clear()
        self.join.drop_partitions({tp.partition for tp in assignment})
        self.offsets.forget(assignment)

    def in_flight(self) -> int:
        return self.join.waiting + (self._replies.unacked if self._replies is not None else 0)

    def liveness(self) -> tuple[bool, str]:
        """The skeleton's (the poll loop turns), and a recovery not stuck: off the loop, one whose
        client call never returned held its partitions paused for good while the loop turned on
        (a review; on the loop, the same hang had made the instance leave its group)."""
        alive, reason = self.service.liveness()
        reading = self.takeover.reading_for()
        if alive and reading > JOB_STUCK_S:
            return False, (f"recovery has been reading the broker for {reading:.0f}s, its partitions paused "
                           f"(past {JOB_STUCK_S:.0f}s: a call that never returns)")
        return alive, reason

    def not_ready(self) -> str | None:
        if self.takeover.pending:
            return f"recovering {self.takeover.pending} partition(s)"
        if self._paused:
            return f"paused: {self.join.waiting} requests in flight (limit {self.settings.max_mailboxes})"
        return None

    def keeps_paused(self, tp: TopicPartition) -> bool:
        """A partition a takeover recovers, requests while intake is paused, scores the brake holds:
        each is resumed by what paused it."""
        if self.takeover.is_pending(tp):
            return True
        if tp.topic == self.topics.requests:
            return self._paused
        return tp.partition in self._brake.held

    # -- outputs (called by the join) ----------------------------------------------------

    def answer(self, mailbox: Mailbox, record: dict[str, Any]) -> None:
        self._written("answer", record, lambda written: self._write_answer(mailbox, written))

    def log(self, mailbox: Mailbox, record: dict[str, Any]) -> None:
        self._written("log", record, lambda written: self._write_log(mailbox, written))

    def _written(self, output: str, record: dict[str, Any], write: Callable[[dict[str, Any]], None]) -> None:
        """Write an output; one too large for a Kafka record is written with its strings cut, and
        if even that fails it is left out and counted. Never raised into the join: a mailbox
        whose output failed halfway would stay open, and hold its partition's offsets, for good."""
        try:
            write(record)
            return
        except RecordTooLarge as err:
            log.warning("%s of %s: %s; written again with every string cut to %d characters",
                        output, record["request_id"], err, CUT_TO)
        try:
            write(cut_strings(record, CUT_TO))
            m.OUTPUTS_CUT.labels(output, "cut").inc()
        except RecordTooLarge as err:
            m.OUTPUTS_CUT.labels(output, "left_out").inc()
            log.error("%s of %s left out: %s even with its strings cut", output, record["request_id"], err)

    def _write_answer(self, mailbox: Mailbox, record: dict[str, Any]) -> None:
        assert self._ctx is not None and self._ctx.producer is not None
        value = self._answers.encode(record)
        key = mailbox.request_id.encode()
        headers = _output_headers(self._answer_events, mailbox)
        self._ctx.producer.check_size(value, key, headers, self.topics.answers)  # before a reply is queued with it
        mailbox.answer = record  # a repeat of the request gets what was written (cut or not)
        # Replies first: once the answer is in a transaction, its replies are already counted on
        # the mailbox, so the request's offset cannot be committed before they are acknowledged.
        if mailbox.replies:
            reply_headers = _inputs_header(mailbox.inputs)
            for topic, partition in mailbox.replies:
                self._replies_out.send(topic, partition, key, value, reply_headers, mailbox)
        self._ctx.outputs.produce(self.topics.answers, value, key=key, partition=mailbox.partition, headers=headers)

    def _write_log(self, mailbox: Mailbox, record: dict[str, Any]) -> None:
        assert self._ctx is not None
        headers = _output_headers(self._log_events, mailbox)
        self._ctx.outputs.produce(self.topics.log, self._comparisons.encode(record),
                                  key=mailbox.request_id.encode(), partition=mailbox.partition, headers=headers)

    def repeat(self, reply: Reply, record: dict[str, Any], receipt: Owner, inputs: bytes | None) -> None:
        m.REPLIES_REPEATED.inc()
        self._replies_out.send(reply[0], reply[1], record["request_id"].encode(), self._answers.encode(record),
                               _inputs_header(inputs), receipt)

    @property
    def _replies_out(self) -> ReplyRouter:
        assert self._replies is not None
        return self._replies

    def _queue_reply(
        self, topic: str, partition: int | None, key: bytes, value: bytes, headers: Headers, done: Callable[[], None]
    ) -> None:
        self._outbox.append((topic, partition, key, value, headers, done))
        if len(self._outbox) >= OUTBOX_MAX:
            self._send_replies()

    def _send_replies(self) -> None:
        """Produce the replies decided so far back to back. The reply producer sends at once
        (linger 0), so replies handed over one by one, between the join's work on the next
        records, wake its sender each time and often go one to a Kafka request; handed over
        together they share requests. A reply waits for the rest of its batch, or for at most
        OUTBOX_MAX - 1 more replies when a backlog makes batches long."""
        if not self._outbox:
            return  # the usual case on a turn without answers: nothing to swap
        assert self._fast is not None
        outbox, self._outbox = self._outbox, []
        for topic, partition, key, value, headers, done in outbox:
            try:
                self._fast.produce(topic, value, key=key, partition=partition, headers=headers, on_done=done)
            except KafkaOperationError as err:
                done()  # refused by the client itself: nothing is in flight
                m.REPLY_ERRORS.labels("delivery").inc()
                self._replies_out.forget(topic)  # as after a failed delivery
                self._say_reply_failed(topic, "not sent", str(err))

    def _on_reply_failure(self, msg: Message, err: KafkaError) -> None:
        topic = msg.topic() or "?"
        if topic == self.topics.scores:  # a clock record (the same producer): no reply, no return address
            m.CLOCK_RECORD_FAILURES.inc()
            log.debug("clock record to %s [%s] failed: %s", topic, msg.partition(), err.str())
            return
        m.REPLY_ERRORS.labels("delivery").inc()
        if self._replies is not None:
            self._replies.forget(topic)
        self._say_reply_failed(topic, "failed", err.str())

    def _say_held_reply_failures(self) -> None:
        """The failed answers held back since the last line, once a minute has passed without
        another: said only with the next failure, a burst that then stopped was never summed up
        (a review)."""
        for _key, held in self._reply_failures.due():
            log.warning("%d more answers to return addresses failed in the last %.0f s", held.lines, held.seconds)

    def _say_reply_failed(self, topic: str, what: str, why: str) -> None:
        """One line a minute, with how many more failed: a return address deleted under a flow of
        requests made ~530 lines at once, one per answer (a review). rdv_reply_errors_total counts each."""
        held = self._reply_failures.passes("reply")
        if held is not None:
            more = f" ({held.lines} more answers failed in the last {held.seconds:.0f} s)" if held.lines else ""
            log.warning("answer to return address %s %s: %s%s", topic, what, why, more)

    def _reject(self, msg: Message, err: BadInput) -> None:
        self._dead_letter(msg, err)
        self.offsets.track(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, None)

    def _dead_letter(self, msg: Message, err: BadInput) -> None:
        assert self._dead is not None
        DECODE_ERRORS.labels(SERVICE, msg.topic(), type(err).__name__).inc()
        self._dead.send(msg, err)

    # -- the log's clock -------------------------------------------------------------------

    def _ask_for_clock_records(self) -> None:
        """Quiet partitions with a timer due: write a clock record so the log's clock moves. Not
        on a partition whose scores the brake holds: its record would wait unread behind them."""
        assert self._fast is not None
        wall, held = now_ms(), self._brake.held
        due = self.join.clocks.markers_due(wall, self.settings.clock_record_delay_ms, 0.5, time.monotonic(),
                                           self._lead.of)
        for partition in due:
            if partition in held:
                continue
            self._fast.produce(self.topics.scores, None, partition=partition,
                               headers=[(CLOCK_HEADER, self._lead.header(wall))])
            m.CLOCK_RECORDS.inc()

    # -- offsets metadata and recovery -----------------------------------------------------

    def _mark(self, partition: int, offset: int) -> str:
        """For the request at `offset`: where this partition's outputs end now (as delivered to
        us; until we deliver some, where recovery found they may start), and who we are. A
        request the previous owner may have answered (read before the partition's end at our
        recovery) gets recovery's floors: its answer can lie before outputs we delivered since."""
        on_answers, on_log = (self.topics.answers, partition), (self.topics.log, partition)
        if offset < self.takeover.reread_ends.get(partition, -1):
            floors = self.takeover.floors
            answers, logged = floors.get(on_answers, 0), floors.get(on_log, 0)
        else:
            answers, logged = self._output_end(*on_answers), self._output_end(*on_log)
        return Mark(answers, logged, self.settings.transactional_id()).encode()

    def _output_end(self, topic: str, partition: int) -> int:
        assert self._ctx is not None and self._ctx.producer is not None
        key = (topic, partition)
        return max(self._ctx.producer.delivered_ends.get(key, 0), self.takeover.floors.get(key, 0))

    def _current_mark(self, topic: str, partition: int, position: int) -> str | None:
        return self._mark(partition, position) if topic == self.topics.requests else None

    # -- bounded intake ----------------------------------------------------------------------

    def _throttle(self) -> None:
        """Bounded memory: at most max_mailboxes requests in flight. Scores are not paused for
        this (orphans are bounded by the join, and held back only while their requests lag,
        `_brake_scores`), so the requests in flight always get their scores."""
        assert self._ctx is not None
        if self._ctx.draining:
            return
        limit, waiting = self.settings.max_mailboxes, self.join.waiting
        if not self._paused and waiting >= limit:
            log.warning("%d requests in flight: pausing request intake until below %d", waiting,
                        int(limit * RESUME_AT))
            self._pause_requests(True)
        elif self._paused and waiting < limit * RESUME_AT:
            log.info("%d requests in flight: resuming request intake", waiting)
            self._pause_requests(False)

    def _brake_scores(self) -> None:
        """Scores wait while their requests lag and orphans fill half the budget (score_brake.py)."""
        assert self._ctx is not None
        free = self._paused or self._ctx.draining
        was_held = bool(self._brake.held)
        join = self.join
        pause, resume = self._brake.decide(join.orphans, join.orphan_byte_fill, join.orphans_by_partition,
                                           self._requests_lag, free)
        if not (pause or resume):
            return
        scores, consumer = self.topics.scores, self._ctx.consumer
        owned = {tp.partition for tp in consumer.assignment() if tp.topic == scores}
        paused = [TopicPartition(scores, p) for p in sorted(pause & owned)]
        resumed = [TopicPartition(scores, p) for p in sorted(resume & owned)
                   if not self.takeover.is_pending(TopicPartition(scores, p))]
        if paused:
            consumer.pause(paused)
        if resumed:
            consumer.resume_in_place(resumed)
        # A line when scores start to wait and when they all flow again; the changes between at debug.
        held = sorted(self._brake.held)
        if held and not was_held:
            log.info("%d scores wait for requests not read yet: the scores of partition(s) %s wait for their "
                     "requests (from half of --max-orphans or --max-held-bytes)", self.join.orphans, held)
        elif was_held and not held:
            log.info("scores flow again (%d wait for their requests)", self.join.orphans)
        else:
            log.debug("scores held back on partition(s) %s", held)
        m.SCORES_HELD.set(len(held))

    def _requests_lag(self, partition: int) -> int:
        """Records of partition `partition` of the requests topic this consumer has not read (by the
        high watermark of its last fetch); 0 while the partition waits for a takeover (its scores
        are paused with it). With no position yet (nothing read since its assignment or a seek),
        from the start of the log: a backlog read from the start has its scores fetched before its
        first request as often as not. A partition resumed at its end counts as lagging that way
        until its next request is read, which frees its scores on the loop's next turn."""
        assert self._ctx is not None
        tp = TopicPartition(self.topics.requests, partition)
        if self.takeover.is_pending(tp):
            return 0
        native = self._ctx.consumer.native
        low, high = native.get_watermark_offsets(tp, cached=True) or (-1, -1)
        position = native.position([tp])[0].offset
        return max(0, high - (position if position >= 0 else max(low, 0)))

    def _pause_requests(self, pause: bool) -> None:
        """Pause or resume the requests partitions, except those a takeover is recovering: they
        stay paused until it is done (and then follow this state, `on_tick`)."""
        assert self._ctx is not None
        consumer = self._ctx.consumer
        flowing = [tp for tp in consumer.assignment()
                   if tp.topic == self.topics.requests and not self.takeover.is_pending(tp)]
        if flowing:
            (consumer.pause if pause else consumer.resume_in_place)(flowing)
        self._paused = pause
        m.PAUSED.set(1 if pause else 0)


def _output_headers(events: EventHeaders | None, mailbox: Mailbox) -> list[tuple[str, bytes]] | None:
    """An Answer's or Comparison record's headers: its CloudEvents attributes when asked for, and
    the digest of the inputs it answers, by which a new owner's scan refuses another request
    under the id (recovery._note_inputs) rather than give it this answer."""
    headers = events.for_id(mailbox.request_id) if events else []  # a new list: appended to
    if mailbox.inputs:
        headers.append((INPUTS_HEADER, mailbox.inputs))  # as `_inputs_header` gives a reply's, without a list of it
    return headers or None


def _inputs_header(inputs: bytes | None) -> Headers:
    """A reply's headers: the digest of the inputs of the request it answers, by which a client
    reading its reply partition tells its request's answer from another request's under the id
    (core/request_inputs.py); none when not known (an answer restored from before the header)."""
    return [(INPUTS_HEADER, inputs)] if inputs else None


def cut_strings(value: Any, limit: int) -> Any:
    """`value` with every string in it (in dicts and lists too) cut to `limit` characters."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit]
    if isinstance(value, dict):
        return {k: cut_strings(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [cut_strings(v, limit) for v in value]
    return value
