"""The rendezvous: join scores to requests, answer by the schedule under the deadline, log all.

Co-partitioning: requests and scores are keyed by request_id with equal partition counts,
and one consumer group reads both topics with the range assignor, so the instance that
owns request partition p also owns score partition p (DESIGN.md section 3).

Commit order: answers, comparison records and dead letters are produced first; before
offsets are committed the producer is flushed, so an input offset is committed only after
everything derived from it was acknowledged. The committable offset of a partition is that
of its oldest record whose mailbox is still open (see offsets.py); after a crash, re-reading
from there rebuilds every open mailbox.

Clock: deadlines are absolute epoch milliseconds from the producer's clock, so this service
compares them with its own wall clock (`now_ms`), not a monotonic clock, which would mean
nothing on another host.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from contextlib import ExitStack
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition

from services.core.codec import codec
from services.core.deadletter import DeadLetters
from services.core.errors import BadInput, ConfigError, DecodeFailed
from services.core.kafka import Consumer, Producer, partition_counts
from services.core.metrics import DECODE_ERRORS
from services.core.runtime import now_ms, run_poll_loop
from services.rendezvous import metrics as m
from services.rendezvous.control import ControlFeed, ControlRecord, ScheduleBook, encode_schedule
from services.rendezvous.mailbox import Arrival, Mailbox
from services.rendezvous.offsets import OffsetBook
from services.rendezvous.replies import ReplyRouter
from services.rendezvous.schedule import Decision, Schedule, Status
from services.rendezvous.settings import RendezvousSettings
from services.rendezvous.timers import DeadlineHeap

log = logging.getLogger(__name__)

SERVICE = "rendezvous"


def validate_request(request: dict[str, Any]) -> None:
    """Checks Avro cannot express; a failure dead-letters the request."""
    if not request["request_id"]:
        raise DecodeFailed("request_id is empty")
    if request["created_at"] <= 0:
        raise DecodeFailed(f"created_at must be epoch milliseconds, got {request['created_at']}")
    if not request["features"] and request["payload"] is None:
        raise DecodeFailed("request carries neither features nor a payload")


class Rendezvous:
    """One rendezvous instance; `run(stop)` until the flag is set."""

    def __init__(self, settings: RendezvousSettings, schedule: Schedule | None = None):
        self.settings = settings
        self.topics = settings.topics()
        # Used only if the control topic holds no version of this schedule yet (it is then
        # published there as the first version, so the topic stays the one source of truth).
        self.bootstrap_schedule = schedule or settings.schedule()
        self.book = ScheduleBook(settings.schedule_name)
        self.mailboxes: dict[str, Mailbox] = {}
        self.ready = threading.Event()
        self.answered = 0
        self.logged = 0
        self._closed: OrderedDict[str, int] = OrderedDict()  # request_id -> forget at (ms)
        self._timers: DeadlineHeap[Mailbox] = DeadlineHeap()
        self._offsets = OffsetBook()
        self._models_seen: dict[str, int] = {}
        self._expected: frozenset[str] = frozenset(self.bootstrap_schedule.models)
        self._expected_at = 0
        self._shown_version = -1
        self._last_commit = 0
        self._codecs = {name: codec(name) for name in ("request", "score", "answer", "comparison")}
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._dead: DeadLetters | None = None
        self._replies: ReplyRouter | None = None
        self._control: ControlFeed | None = None

    @property
    def schedule(self) -> Schedule:
        """The schedule in force now (requests are governed by the one in force at creation)."""
        return self.book.in_force(now_ms()) if self.book.latest else self.bootstrap_schedule

    def run(self, stop: threading.Event) -> None:
        config = self.settings.librdkafka()
        self._check_copartitioned(config)
        core_topics = {self.topics.answers, self.topics.log, self.topics.deadletter}
        with ExitStack() as stack:
            producer = Producer(config, soft_topics=lambda t: t not in core_topics,
                                on_soft_failure=self._on_reply_failure)
            stack.callback(producer.close)
            consumer = Consumer({
                **config,
                "group.id": self.settings.group_id(),
                "auto.offset.reset": self.settings.start_from,
                # Range assigns partition p of both topics to the same member (co-partitioning).
                "partition.assignment.strategy": "range",
            })
            stack.callback(consumer.close)
            self._producer, self._consumer = producer, consumer
            self._dead = DeadLetters(producer, self.topics.deadletter, SERVICE)
            self._replies = ReplyRouter(producer, config)
            self._control = ControlFeed(config, self.topics.control)
            stack.callback(self._control.close)
            self._load_schedules(producer)
            consumer.subscribe([self.topics.requests, self.topics.scores], on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_lost)
            log.info("rendezvous joining %s + %s", self.topics.requests, self.topics.scores)
            run_poll_loop(consumer, self, stop, max_batch=self.settings.max_batch, max_wait=0.1)
            self._commit()  # finished work only; open mailboxes are rebuilt by the next owner
            log.info("rendezvous stopping: %d answered, %d logged, %d in flight",
                     self.answered, self.logged, len(self.mailboxes))

    def _check_copartitioned(self, config: dict[str, str]) -> None:
        counts = partition_counts(config, [self.topics.requests, self.topics.scores, self.topics.answers,
                                           self.topics.log, self.topics.deadletter, self.topics.control],
                                  timeout=self.settings.connect_timeout_s)
        if counts[self.topics.requests] != counts[self.topics.scores]:
            raise ConfigError(
                f"{self.topics.scores} has {counts[self.topics.scores]} partitions but "
                f"{self.topics.requests} has {counts[self.topics.requests]}: the join needs equal counts"
            )

    # -- the poll loop's handler -----------------------------------------------------------

    def next_wakeup(self) -> float:
        earliest = self._timers.earliest()
        until_commit = self.settings.commit_interval_ms / 1000.0
        if earliest is None:
            return until_commit
        return min(until_commit, max(0.0, (earliest - now_ms()) / 1000.0))

    def on_batch(self, messages: list[Message]) -> None:
        now = now_ms()
        requests, scores = self.topics.requests, self.topics.scores
        for msg in messages:
            topic = msg.topic()
            if topic == scores:
                self._on_score(msg, now)
            elif topic == requests:
                self._on_request(msg, now)

    def on_tick(self) -> None:
        assert self._control is not None
        for record in self._control.poll():
            self._apply_control(record, live=True)
        now = now_ms()
        self._show_schedule(now)
        for mailbox in self._timers.pop_due(now):
            if not mailbox.closed and mailbox.wake_at <= now:
                mailbox.wake_at = 0
                self._advance(mailbox, now)
        self._forget_closed(now)
        m.MAILBOXES.set(len(self.mailboxes))
        if now - self._last_commit >= self.settings.commit_interval_ms:
            self._commit()
            self._last_commit = now
        assert self._producer is not None
        self._producer.poll(0)

    # -- records ---------------------------------------------------------------------------

    def _reject(self, msg: Message, err: BadInput) -> None:
        assert self._dead is not None
        DECODE_ERRORS.labels(SERVICE, msg.topic(), type(err).__name__).inc()
        self._dead.send(msg, err)
        self._offsets.track(msg, None)

    def _on_request(self, msg: Message, now: int) -> None:
        try:
            request = self._codecs["request"].decode(msg.value())
            validate_request(request)
        except BadInput as err:
            self._reject(msg, err)
            return
        m.REQUESTS.inc()
        rid = request["request_id"]
        mailbox = self.mailboxes.get(rid)
        if (mailbox is None and rid in self._closed) or (mailbox is not None and mailbox.has_request):
            m.DUPLICATE_REQUESTS.inc()
            self._offsets.track(msg, mailbox)
            return
        schedule = self.book.for_request(request["created_at"])
        deadline = schedule.deadline_for(request["created_at"], request["deadline"])
        if mailbox is None:
            mailbox = self.mailboxes[rid] = Mailbox(rid, msg.partition() or 0, deadline)
        mailbox.schedule = schedule
        mailbox.has_request = True
        mailbox.created_at = request["created_at"]
        mailbox.deadline = deadline
        reply = request["reply_to"]
        if reply is not None:
            mailbox.reply_topic, mailbox.reply_partition = reply["topic"], reply["partition"]
        self._offsets.track(msg, mailbox)
        self._advance(mailbox, now)

    def _on_score(self, msg: Message, now: int) -> None:
        try:
            score = self._codecs["score"].decode(msg.value())
        except BadInput as err:
            self._reject(msg, err)
            return
        model = score["model"]
        m.SCORES.labels(model, score["version"]).inc()
        self._models_seen[model] = now
        rid = score["request_id"]
        mailbox = self.mailboxes.get(rid)
        if mailbox is None:
            if rid in self._closed:
                m.LATE_SCORES.labels(model, "true").inc()
                self._offsets.track(msg, None)
                return
            mailbox = self.mailboxes[rid] = Mailbox(rid, msg.partition() or 0, score["deadline"])
        arrival = Arrival(model, score["version"], score["score"], score["label"], score["error"],
                          now, score["compute_ms"], late=mailbox.decision is not None)
        if not mailbox.add(arrival):
            m.DUPLICATE_SCORES.labels(model).inc()
        elif arrival.late:
            m.LATE_SCORES.labels(model, "false").inc()
        self._offsets.track(msg, mailbox)
        self._advance(mailbox, now)

    # -- the mailbox state machine ---------------------------------------------------------

    def _advance(self, mailbox: Mailbox, now: int) -> None:
        """Answer when the schedule says so; log and close when every score is in or linger ends."""
        if not mailbox.has_request:
            give_up = mailbox.deadline + self.settings.orphan_grace_ms
            if now >= give_up:
                self._drop_orphan(mailbox, now)
            else:
                self._wake(mailbox, give_up, now)
            return
        schedule = mailbox.schedule
        assert schedule is not None
        if mailbox.decision is None:
            decision = schedule.decide(mailbox.outcomes, mailbox.created_at, mailbox.deadline, now,
                                       mailbox.request_id)
            if decision is None:
                at = schedule.next_check(mailbox.outcomes, mailbox.created_at, mailbox.deadline, now)
                self._wake(mailbox, at, now)
                return
            self._answer(mailbox, decision, now)
        log_by = mailbox.deadline + self.settings.linger_ms
        if now >= log_by or self._expected_models(now) <= mailbox.arrivals.keys():
            self._close(mailbox, now)
        else:
            self._wake(mailbox, log_by, now)

    def _wake(self, mailbox: Mailbox, at: int, now: int) -> None:
        if now < mailbox.wake_at <= at:
            return  # an earlier timer is already set; it re-evaluates this mailbox
        mailbox.wake_at = at
        self._timers.push(at, mailbox)

    def _expected_models(self, now: int) -> frozenset[str]:
        """Models a comparison record waits for: the schedule's plus any seen recently."""
        if now - self._expected_at > 1000:
            horizon = now - int(self.settings.model_ttl_s * 1000)
            seen = {model for model, at in self._models_seen.items() if at >= horizon}
            self._expected = frozenset(self.schedule.models) | seen
            self._expected_at = now
        return self._expected

    def _answer(self, mailbox: Mailbox, decision: Decision, now: int) -> None:
        assert self._producer is not None and self._replies is not None
        mailbox.decision, mailbox.answered_at = decision, now
        chosen = mailbox.arrivals.get(decision.model) if decision.model else None
        record = {
            "request_id": mailbox.request_id,
            "status": decision.status.value,
            "model": decision.model,
            "version": chosen.version if chosen else None,
            "score": chosen.score if chosen else None,
            "label": chosen.label if chosen else None,
            "reason": decision.reason,
            "created_at": mailbox.created_at,
            "deadline": mailbox.deadline,
            "answered_at": now,
            "schedule": mailbox.schedule.name if mailbox.schedule else "",
            "schedule_version": mailbox.schedule.version if mailbox.schedule else 0,
        }
        value = self._codecs["answer"].encode(record)
        key = mailbox.request_id.encode()
        self._producer.produce(self.topics.answers, value, key=key)
        if mailbox.reply_topic:
            self._replies.send(mailbox.reply_topic, mailbox.reply_partition, key, value)
        self.answered += 1
        status = decision.status.value
        m.ANSWERS.labels(decision.model or "", status).inc()
        m.ANSWER_LATENCY.labels(status).observe(max(0, now - mailbox.created_at) / 1000.0)
        m.DEADLINE_SLACK.observe(max(0, now - mailbox.deadline) / 1000.0)
        if decision.status is Status.FALLBACK:
            m.FALLBACKS.labels(decision.model).inc()
        elif decision.status is Status.TIMEOUT:
            m.TIMEOUTS.inc()

    def _close(self, mailbox: Mailbox, now: int) -> None:
        assert self._producer is not None and mailbox.decision is not None
        decision = mailbox.decision
        outputs = []
        for a in mailbox.arrivals.values():
            latency = max(0, a.arrived_at - mailbox.created_at)
            m.SCORE_LATENCY.labels(a.model, a.version).observe(latency / 1000.0)
            outputs.append({"model": a.model, "version": a.version, "score": a.score, "label": a.label,
                            "error": a.error, "latency_ms": float(latency), "compute_ms": a.compute_ms,
                            "late": a.late})
        record = {
            "request_id": mailbox.request_id,
            "created_at": mailbox.created_at,
            "deadline": mailbox.deadline,
            "answered_at": mailbox.answered_at,
            "status": decision.status.value,
            "chosen_model": decision.model,
            "reason": decision.reason,
            "schedule": mailbox.schedule.name if mailbox.schedule else "",
            "schedule_version": mailbox.schedule.version if mailbox.schedule else 0,
            "outputs": outputs,
        }
        self._producer.produce(self.topics.log, self._codecs["comparison"].encode(record),
                               key=mailbox.request_id.encode())
        self.logged += 1
        self._retire(mailbox)

    def _drop_orphan(self, mailbox: Mailbox, now: int) -> None:
        log.warning("dropping %d score(s) of %s: its request never arrived",
                    len(mailbox.arrivals), mailbox.request_id)
        m.ORPHAN_SCORES.inc(len(mailbox.arrivals))
        self._retire(mailbox)

    def _retire(self, mailbox: Mailbox) -> None:
        mailbox.closed = True
        del self.mailboxes[mailbox.request_id]
        # Remember the id until its scores can no longer plausibly arrive, so a late score
        # is recognised as late instead of opening a new (orphan) mailbox.
        self._closed[mailbox.request_id] = mailbox.deadline + self.settings.orphan_grace_ms

    def _forget_closed(self, now: int) -> None:
        closed = self._closed
        while closed:
            rid, forget_at = next(iter(closed.items()))
            if forget_at > now:
                break
            del closed[rid]

    # -- schedules from the control topic --------------------------------------------------

    def _load_schedules(self, producer: Producer) -> None:
        """Replay the control topic's history; seed it with the bootstrap schedule if empty."""
        assert self._control is not None
        for record in self._control.read_history():
            self._apply_control(record, live=False)
        if self.book.latest is None:
            first = max(1, self.bootstrap_schedule.version)
            seed = dataclasses.replace(
                self.bootstrap_schedule, version=first, effective_at=0, created_at=now_ms()
            )
            producer.produce(self.topics.control, encode_schedule(seed), key=seed.key())
            producer.flush()
            self.book.add(seed)
            log.info("control topic had no schedule %r: published the bootstrap one as v%d",
                     seed.name, seed.version)
        self._show_schedule(now_ms())

    def _apply_control(self, record: ControlRecord, *, live: bool) -> None:
        schedule = record.schedule
        if schedule is None:
            assert record.error is not None
            self._reject_schedule(record.msg, record.error.message)
            return
        if schedule.name != self.book.name:
            return  # another deployment's schedule
        known = next((v for v in self.book.versions if v.version == schedule.version), None)
        if known is not None and known.same_policy(schedule) and known.effective_at == schedule.effective_at:
            return  # the same version read again (e.g. our own bootstrap seed)
        reason = self.book.check(schedule) or (self._unknown_models(schedule) if live else None)
        if reason:
            what = f"schedule {schedule.name} v{schedule.version}"
            self._reject_schedule(record.msg, f"{what} rejected: {reason}")
            return
        self.book.add(schedule)
        self._expected_at = 0
        m.SCHEDULE_UPDATES.inc()
        log.info("schedule %s v%d accepted (effective at %d): %s - %s", schedule.name, schedule.version,
                 schedule.effective_at, list(schedule.models), schedule.comment)

    def _unknown_models(self, schedule: Schedule) -> str | None:
        """A live schedule must prefer models that are scoring (once any model has been seen)."""
        now = now_ms()
        horizon = now - int(self.settings.model_ttl_s * 1000)
        live = {model for model, at in self._models_seen.items() if at >= horizon}
        if not live:
            return None
        wanted = [schedule.models[0]] + ([schedule.traffic_model] if schedule.traffic_model else [])
        missing = [model for model in wanted if model not in live]
        if not missing:
            return None
        return (f"model(s) {missing} sent no score in the last {self.settings.model_ttl_s:.0f}s "
                f"(scoring now: {sorted(live)})")

    def _reject_schedule(self, msg: Message, reason: str) -> None:
        assert self._dead is not None
        current = self.book.latest
        stays = f"v{current.version} stays in force" if current else "no schedule yet"
        m.SCHEDULE_REJECTED.inc()
        log.warning("control record rejected: %s; %s", reason, stays)
        self._dead.send(msg, DecodeFailed(f"{reason}; {stays}"))

    def _show_schedule(self, now: int) -> None:
        schedule = self.schedule
        if schedule.version != self._shown_version:
            m.SCHEDULE.clear()
            m.SCHEDULE.labels(schedule.name, str(schedule.version), schedule.preferred).set(1)
            self._shown_version = schedule.version
            log.info("schedule %s v%d in force: %s", schedule.name, schedule.version, list(schedule.models))

    # -- commits and rebalances ------------------------------------------------------------

    def _commit(self) -> None:
        assert self._producer is not None and self._consumer is not None
        offsets = self._offsets.to_commit()
        if not offsets:
            return
        # Order matters: everything produced from these inputs is acknowledged first.
        self._producer.flush()
        self._consumer.commit(offsets)
        self._offsets.mark_committed(offsets)

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])
        self.ready.set()

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s: committing finished work", [(p.topic, p.partition) for p in partitions])
        if self._producer is not None and self._consumer is not None:
            self._commit()
        self._drop_partitions(partitions)

    def _on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # Another member may own these already: committing now could overwrite its progress.
        log.warning("lost %s: dropping their state without committing", [p.partition for p in partitions])
        self._drop_partitions(partitions)

    def _drop_partitions(self, partitions: list[TopicPartition]) -> None:
        gone = {p.partition for p in partitions}
        for rid in [rid for rid, mb in self.mailboxes.items() if mb.partition in gone]:
            self.mailboxes.pop(rid).closed = True
        self._offsets.forget(partitions)

    def _on_reply_failure(self, topic: str, err: KafkaError) -> None:
        m.REPLY_ERRORS.labels("delivery").inc()
        log.warning("answer to return address %s failed: %s", topic, err.str())
