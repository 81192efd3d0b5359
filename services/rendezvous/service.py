"""The rendezvous service: Kafka plumbing around the join (join.py).

Co-partitioning: requests and scores are keyed by request_id with equal partition counts,
and one consumer group reads both topics with the range assignor, so the instance that
owns request partition p also owns score partition p (DESIGN.md section 3). Answers and
comparison records are written to partition p of their topics too, which lets a restarted
instance find what it had already answered (recovery.py).

Commit order: answers, comparison records and dead letters are produced first; then the
offsets of finished inputs are committed — in one transaction with the outputs
(exactly-once, the default) or after a flush (at-least-once); see core/commits.py. The
committable offset of a partition is that of its oldest record whose mailbox is still open
(offsets.py); after a crash, re-reading from there rebuilds every open mailbox.

Clock: deadlines are absolute epoch milliseconds from the producer's clock, so this service
compares them with its own wall clock (`now_ms`), not a monotonic clock, which would mean
nothing on another host.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from contextlib import ExitStack
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from services.control.schedule import Schedule
from services.control.topic import ControlFeed, ControlRecord, ScheduleBook, encode_schedule
from services.core.commits import AtLeastOnce, Committer, ExactlyOnce, TransactionAborted
from services.core.deadletter import DeadLetters
from services.core.errors import BadInput, ConfigError, DecodeFailed, RendezvousError, UnexpectedFailure
from services.core.health import BrokerHealth
from services.core.kafka import Consumer, Producer, partition_counts
from services.core.metrics import DECODE_ERRORS
from services.core.runtime import now_ms, run_poll_loop
from services.rendezvous import metrics as m
from services.rendezvous.join import Join
from services.rendezvous.mailbox import Mailbox
from services.rendezvous.recovery import scan_finished
from services.rendezvous.replies import ReplyRouter
from services.rendezvous.settings import RendezvousSettings

log = logging.getLogger(__name__)

SERVICE = "rendezvous"
RESUME_AT = 0.8  # intake resumes once the mailbox table is below this share of its maximum


class Rendezvous:
    """One rendezvous instance; `run(stop)` until the flag is set, then drain and commit."""

    def __init__(self, settings: RendezvousSettings, schedule: Schedule | None = None):
        self.settings = settings
        self.topics = settings.topics()
        # Used only if the control topic holds no version of this schedule yet (it is then
        # published there as the first version, so the topic stays the one source of truth).
        self.bootstrap_schedule = schedule or settings.schedule()
        self.book = ScheduleBook(settings.schedule_name)
        self.join = Join(settings, self.book, self.bootstrap_schedule, self)
        self.ready = threading.Event()
        self.health = BrokerHealth()
        self._shown_version = -1
        self._last_commit = 0
        self._dirty = False  # outputs produced since the last commit
        self._paused = False
        self._scores_paused = False
        self._rewinding = False
        self._to_recover: list[TopicPartition] = []
        self._next_recovery = 0.0
        self._draining_until: float | None = None
        self._drain_done = threading.Event()
        self._producer: Producer | None = None
        self._fast_replies: Producer | None = None
        self._consumer: Consumer | None = None
        self._committer: Committer | None = None
        self._dead: DeadLetters | None = None
        self._replies: ReplyRouter | None = None
        self._control: ControlFeed | None = None

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
        return self.join.schedule_at(now_ms())

    def readiness(self) -> tuple[bool, str]:
        if not self.health.up:
            return False, self.health.describe()
        if not self.ready.is_set():
            return False, "waiting for a partition assignment"
        if self._draining_until is not None:
            return False, "draining before shutdown"
        return True, "paused: mailbox table full" if self._paused else "ready"

    # -- lifecycle -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        config: dict[str, Any] = {**self.settings.librdkafka(), "error_cb": self.health.error_cb}
        self._check_topics(config)
        core_topics = {self.topics.answers, self.topics.log, self.topics.deadletter}
        exactly_once = self.settings.processing == "exactly-once"
        with ExitStack() as stack:
            producer_config = dict(config)
            if exactly_once:
                producer_config["transactional.id"] = self.settings.transactional_id()
                producer_config["transaction.timeout.ms"] = self.settings.transaction_timeout_ms
            producer = Producer(producer_config, soft_topics=lambda t: t not in core_topics,
                                on_soft_failure=self._on_reply_failure)
            stack.callback(producer.close)
            consumer = Consumer({
                **config,
                "group.id": self.settings.group_id(),
                "auto.offset.reset": self.settings.start_from,
                # Range assigns partition p of both topics to the same member (co-partitioning).
                "partition.assignment.strategy": "range",
                "isolation.level": "read_committed",
                **self._membership(),
            })
            stack.callback(consumer.close)
            self._producer, self._consumer = producer, consumer
            self._dead = DeadLetters.for_topic(producer, config, self.topics.deadletter, SERVICE)
            self._replies = ReplyRouter(self._reply_producer(producer, config, exactly_once, stack), config)
            self._control = ControlFeed(config, self.topics.control)
            stack.callback(self._control.close)
            committer_type = ExactlyOnce if exactly_once else AtLeastOnce
            self._committer = committer_type(producer, consumer, self._waiting, self.health)
            self._committer.init()
            self._load_schedules(producer)
            self._subscribe(consumer)
            log.info("rendezvous joining %s + %s (%s)", self.topics.requests, self.topics.scores,
                     self.settings.processing)
            run_poll_loop(consumer, self, stop, max_batch=self.settings.max_batch, max_wait=0.1)
            self._drain(consumer)
            log.info("rendezvous stopping: %d answered, %d logged, %d in flight left to the next owner",
                     self.answered, self.logged, len(self.mailboxes))

    def _reply_producer(
        self, producer: Producer, config: dict[str, Any], exactly_once: bool, stack: ExitStack
    ) -> Producer:
        """Where answers to return addresses are produced.

        With exactly-once, an answer in the transaction reaches a read_committed client only
        when the transaction commits (every commit interval). By default replies therefore go
        out at once through a plain idempotent producer: rdv.answers stays exactly-once, and a
        client may, after a crash, receive a second answer for a request (it keeps the first).
        --transactional-replies puts replies in the transaction instead.
        """
        if not exactly_once or self.settings.transactional_replies:
            return producer
        fast = Producer(config, soft_topics=lambda _t: True, on_soft_failure=self._on_reply_failure)
        stack.callback(fast.close)
        self._fast_replies = fast
        return fast

    def _membership(self) -> dict[str, Any]:
        """Session timeout; with --static-membership a restarted replica takes its partitions back at once."""
        config: dict[str, Any] = {"session.timeout.ms": self.settings.session_timeout_ms}
        if self.settings.static_membership:
            config["group.instance.id"] = self.settings.instance or self.settings.transactional_id()
        return config

    def _check_topics(self, config: dict[str, Any]) -> None:
        t = self.topics
        counts = partition_counts(config, [t.requests, t.scores, t.answers, t.log, t.deadletter, t.control],
                                  timeout=self.settings.connect_timeout_s)
        for other in (t.scores, t.answers, t.log):
            if counts[other] != counts[t.requests]:
                raise ConfigError(
                    f"{other} has {counts[other]} partitions but {t.requests} has {counts[t.requests]}: "
                    "scores, answers and log must be co-partitioned with the requests"
                )

    def _drain(self, consumer: Consumer) -> None:
        """After SIGTERM: stop intake, finish what is in flight (bounded), commit, return."""
        self._draining_until = time.monotonic() + self.settings.drain_timeout_s
        self._pause_requests(consumer, True)
        if self.mailboxes:
            log.info("draining %d requests in flight (at most %.0fs)", len(self.mailboxes),
                     self.settings.drain_timeout_s)
            run_poll_loop(consumer, self, self._drain_done, max_batch=self.settings.max_batch, max_wait=0.05)
        self._commit()

    def _drain_finished(self) -> bool:
        until = self._draining_until
        return until is not None and (not self.mailboxes or time.monotonic() >= until)

    # -- the poll loop's handler -----------------------------------------------------------

    def next_wakeup(self) -> float:
        earliest = self.join.next_timer()
        until_commit = self.settings.commit_interval_ms / 1000.0
        if earliest is None:
            return until_commit
        return min(until_commit, max(0.0, (earliest - now_ms()) / 1000.0))

    def on_batch(self, messages: list[Message]) -> None:
        if messages:
            self.health.mark_up()
        now = now_ms()
        requests, scores = self.topics.requests, self.topics.scores
        for msg in messages:
            topic = msg.topic()
            try:
                if topic == scores:
                    self.join.on_score(msg, now)
                elif topic == requests:
                    self.join.on_request(msg, now)
            # One record must never stop the service: whatever it made fail is dead-lettered,
            # counted, and the stream goes on (the traceback goes to the log for a developer).
            except Exception as exc:
                log.exception("unexpected failure on %s[%s]@%s", topic, msg.partition(), msg.offset())
                self.join.offsets.track(msg, None)
                self.reject(msg, UnexpectedFailure(f"processing failed: {type(exc).__name__}: {exc}"))

    def on_tick(self) -> None:
        assert self._control is not None and self._producer is not None and self._consumer is not None
        for record in self._control.poll():
            self._apply_control(record, live=True)
        self._recover_pending()
        now = now_ms()
        self._show_schedule(now)
        self.join.tick(now)
        self._throttle(self._consumer)
        if now - self._last_commit >= self.settings.commit_interval_ms:
            self._commit()
            self._last_commit = now
        self._producer.poll(0)
        if self._fast_replies is not None:
            self._fast_replies.poll(0)
        if self._drain_finished():
            self._drain_done.set()

    def _throttle(self, consumer: Consumer) -> None:
        """Bounded memory: at most max_mailboxes requests and max_mailboxes/2 early scores in flight.

        Requests wait for their scores and early scores wait for their requests, so each kind
        is paused on its own: pausing requests while scores run ahead would only grow the
        table of scores waiting for the paused requests. Deadlines guarantee progress.
        """
        if self._draining_until is not None or self._to_recover:
            return  # draining, or paused until recovered
        limit = self.settings.max_mailboxes
        waiting = len(self.mailboxes) - self.join.orphans
        if not self._paused and waiting >= limit:
            log.warning("%d requests in flight: pausing request intake until below %d", waiting, int(limit * RESUME_AT))
            self._pause_requests(consumer, True)
        elif self._paused and waiting < limit * RESUME_AT:
            log.info("%d requests in flight: resuming request intake", waiting)
            self._pause_requests(consumer, False)
        early = self.join.orphans
        if not self._scores_paused and early >= limit // 2:
            log.warning("%d scores wait for their requests: pausing score intake", early)
            self._pause_topic(consumer, self.topics.scores, True)
            self._scores_paused = True
        elif self._scores_paused and early < limit * RESUME_AT // 2:
            self._pause_topic(consumer, self.topics.scores, False)
            self._scores_paused = False

    def _pause_requests(self, consumer: Consumer, pause: bool) -> None:
        self._pause_topic(consumer, self.topics.requests, pause)
        self._paused = pause
        m.PAUSED.set(1 if pause else 0)

    @staticmethod
    def _pause_topic(consumer: Consumer, topic: str, pause: bool) -> None:
        partitions = [tp for tp in consumer.assignment() if tp.topic == topic]
        if partitions:
            (consumer.pause if pause else consumer.resume)(partitions)

    # -- outputs (called by the join) ------------------------------------------------------

    def answer(self, mailbox: Mailbox, value: bytes) -> None:
        assert self._producer is not None and self._replies is not None
        key = mailbox.request_id.encode()
        self._producer.produce(self.topics.answers, value, key=key, partition=mailbox.partition)
        if mailbox.reply_topic:
            self._replies.send(mailbox.reply_topic, mailbox.reply_partition, key, value)
        self._dirty = True

    def log(self, mailbox: Mailbox, value: bytes) -> None:
        assert self._producer is not None
        self._producer.produce(self.topics.log, value, key=mailbox.request_id.encode(), partition=mailbox.partition)
        self._dirty = True

    def reject(self, msg: Message, err: BadInput) -> None:
        assert self._dead is not None
        DECODE_ERRORS.labels(SERVICE, msg.topic(), type(err).__name__).inc()
        self._dead.send(msg, err)
        self._dirty = True

    def _on_reply_failure(self, topic: str, err: KafkaError) -> None:
        m.REPLY_ERRORS.labels("delivery").inc()
        if self._replies is not None:
            self._replies.forget(topic)
        log.warning("answer to return address %s failed: %s", topic, err.str())

    # -- commits, rewinds and rebalances ---------------------------------------------------

    def _commit(self) -> None:
        """Make finished work final (see core/commits.py for the order)."""
        assert self._committer is not None
        offsets = self.join.offsets.to_commit()
        if not offsets and not (self._dirty and self._committer.transactional):
            return
        try:
            done = self._committer.commit(offsets, give_up=self._give_up)
        except TransactionAborted as err:
            m.TRANSACTIONS.labels("aborted").inc()
            log.warning("%s: rewinding to the committed offsets", err)
            self._rewind()
            return
        if done:
            self.join.offsets.mark_committed(offsets)
            self._dirty = False
            self.health.mark_up()
            if self._committer.transactional:
                m.TRANSACTIONS.labels("committed").inc()

    def _give_up(self) -> bool:
        """Stop retrying a commit only when a drain ran out of time (then the next owner redoes it)."""
        until = self._draining_until
        return until is not None and time.monotonic() >= until

    def _waiting(self, what: str) -> None:
        self.health.mark_down()
        log.warning("%s", what)

    def _rewind(self) -> None:
        """After an aborted transaction: forget everything since the last commit and re-read.

        Leaving and re-joining the group makes the consumer start again from the committed
        offsets, and `_on_assign` runs the recovery scan, whatever the broker's state was.
        """
        assert self._consumer is not None
        self._rewinding = True
        try:
            assignment = self._consumer.assignment()
            self.join.drop_partitions({tp.partition for tp in assignment})
            self.join.offsets.forget(assignment)
            self._consumer.native.unsubscribe()
            self._subscribe(self._consumer)
        finally:
            self._rewinding = False

    def _subscribe(self, consumer: Consumer) -> None:
        consumer.subscribe([self.topics.requests, self.topics.scores], on_assign=self._on_assign,
                           on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _recover_pending(self) -> None:
        """Restore what was already answered/logged on newly assigned partitions, then resume them.

        Runs from the poll loop, not inside the rebalance callback: the broker may still be coming
        back (or resolving a transaction with pending offsets), and the loop must keep serving the
        consumer meanwhile. Tried at most once a second.
        """
        assert self._consumer is not None
        if not self._to_recover or time.monotonic() < self._next_recovery:
            return
        self._next_recovery = time.monotonic() + 1.0
        partitions = list(self._to_recover)
        try:
            with self.health.blocking():
                committed = self._consumer.committed(partitions, timeout=5)
                requests = {tp.partition: tp.offset for tp in committed if tp.topic == self.topics.requests}
                if requests:
                    margin = int(self.settings.recovery_margin_s * 1000)
                    self.join.restore(scan_finished(self.settings.librdkafka(), self.topics, requests, margin))
        except (KafkaException, RendezvousError) as exc:
            self._waiting(f"recovery waiting for the broker: {exc}")
            return
        self._to_recover = []
        self._consumer.resume(partitions)
        self.ready.set()
        self.health.mark_up()

    def _forget_recovery(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._to_recover = [tp for tp in self._to_recover if (tp.topic, tp.partition) not in gone]

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])
        self._paused = self._scores_paused = False
        m.PAUSED.set(0)
        if partitions:
            # Nothing is read from them until recovery (in the poll loop) knows what was done.
            consumer.assign(partitions)
            consumer.pause(partitions)
            self._to_recover = list(partitions)
            self._next_recovery = 0.0

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s: committing finished work", [(p.topic, p.partition) for p in partitions])
        self._forget_recovery(partitions)
        if self._committer is not None and not self._rewinding:
            self._commit()
        self.join.drop_partitions({p.partition for p in partitions})
        self.join.offsets.forget(partitions)

    def _on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # Another member may own these already: committing now could overwrite its progress,
        # and our open transaction may hold answers for them, so it is aborted.
        log.warning("lost %s: dropping their state without committing", [p.partition for p in partitions])
        self._forget_recovery(partitions)
        if self._committer is not None:
            try:
                self._committer.abort()
            except TransactionAborted as err:
                log.warning("%s", err)  # the producer was replaced; nothing of it was committed
        self.join.drop_partitions({p.partition for p in partitions})
        self.join.offsets.forget(partitions)

    # -- schedules from the control topic --------------------------------------------------

    def _load_schedules(self, producer: Producer) -> None:
        """Replay the control topic's history; seed it with the bootstrap schedule if empty."""
        assert self._control is not None
        for record in self._control.read_history():
            self._apply_control(record, live=False)
        if self.book.latest is None:
            first = max(1, self.bootstrap_schedule.version)
            seed = dataclasses.replace(self.bootstrap_schedule, version=first, effective_at=0, created_at=now_ms())
            producer.produce(self.topics.control, encode_schedule(seed), key=seed.key())
            assert self._committer is not None
            self._committer.commit([], give_up=lambda: False)  # the seed is public before we answer
            self.book.add(seed)
            log.info("control topic had no schedule %r: published the bootstrap one as v%d", seed.name, seed.version)
        self._show_schedule(now_ms())

    def _apply_control(self, record: ControlRecord, *, live: bool) -> None:
        schedule = record.schedule
        if schedule is None:
            assert record.error is not None
            self._reject_schedule(record.msg, record.error.message, live)
            return
        if schedule.name != self.book.name:
            return  # another deployment's schedule
        known = next((v for v in self.book.versions if v.version == schedule.version), None)
        if known is not None and known.same_policy(schedule) and known.effective_at == schedule.effective_at:
            return  # the same version read again (e.g. our own bootstrap seed)
        reason = self.book.check(schedule) or (self._unknown_models(schedule) if live else None)
        if reason:
            self._reject_schedule(record.msg, f"schedule {schedule.name} v{schedule.version} rejected: {reason}", live)
            return
        self.book.add(schedule)
        self.join.refresh_expected()
        m.SCHEDULE_UPDATES.inc()
        log.info("schedule %s v%d accepted (effective at %d): %s - %s", schedule.name, schedule.version,
                 schedule.effective_at, list(schedule.models), schedule.comment)

    def _unknown_models(self, schedule: Schedule) -> str | None:
        """A live schedule must prefer models that are scoring (once any model has been seen)."""
        live = self.join.live_models(now_ms())
        if not live:
            return None
        wanted = [schedule.models[0]] + ([schedule.traffic_model] if schedule.traffic_model else [])
        missing = [model for model in wanted if model not in live]
        if not missing:
            return None
        return (f"model(s) {missing} sent no score in the last {self.settings.model_ttl_s:.0f}s "
                f"(scoring now: {sorted(live)})")

    def _reject_schedule(self, msg: Message, reason: str, live: bool) -> None:
        """Dead-letter a refused control record (history read at start-up was dealt with before)."""
        assert self._dead is not None
        if not live:
            log.debug("skipping control record refused before: %s", reason)
            return
        current = self.book.latest
        stays = f"v{current.version} stays in force" if current else "no schedule yet"
        m.SCHEDULE_REJECTED.inc()
        log.warning("control record rejected: %s; %s", reason, stays)
        self._dead.send(msg, DecodeFailed(f"{reason}; {stays}"))
        self._dirty = True

    def _show_schedule(self, now: int) -> None:
        schedule = self.join.schedule_at(now)
        if schedule.version != self._shown_version:
            m.SCHEDULE.clear()
            m.SCHEDULE.labels(schedule.name, str(schedule.version), schedule.preferred).set(1)
            self._shown_version = schedule.version
            log.info("schedule %s v%d in force: %s", schedule.name, schedule.version, list(schedule.models))
