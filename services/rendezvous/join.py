"""The join: a mailbox per request, decided by its schedule under its deadline, then logged.

This is the rendezvous' state machine, apart from Kafka plumbing (service.py): records come
in through `on_request` / `on_score`, time through `tick`, and what must be written goes out
through the `Outputs` the service provides (answers, comparison records, dead letters).

Lifecycle of a mailbox: opened by its request or its first score -> answered (the schedule
says so: preferred model in, fallback, TIMEOUT, ERROR) -> logged and closed once every
expected model reported or `linger_ms` after the deadline. A score whose request never
arrives is dropped `orphan_grace_ms` after its deadline.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Protocol

from confluent_kafka import Message

from services.core.codec import codec
from services.core.errors import BadInput
from services.core.metrics import child
from services.core.requests import check_request
from services.rendezvous import metrics as m
from services.rendezvous.control import ScheduleBook
from services.rendezvous.mailbox import Arrival, Mailbox
from services.rendezvous.offsets import OffsetBook
from services.rendezvous.recovery import Finished
from services.rendezvous.schedule import Decision, Schedule, Status
from services.rendezvous.settings import RendezvousSettings
from services.rendezvous.timers import DeadlineHeap

log = logging.getLogger(__name__)


class Outputs(Protocol):
    def answer(self, mailbox: Mailbox, value: bytes) -> None: ...

    def log(self, mailbox: Mailbox, value: bytes) -> None: ...

    def reject(self, msg: Message, err: BadInput) -> None: ...


def validate_request(request: dict[str, Any]) -> None:
    """Checks Avro cannot express (the rule the model workers apply too); a failure dead-letters it."""
    check_request(request)


class Join:
    def __init__(self, settings: RendezvousSettings, book: ScheduleBook, bootstrap: Schedule, outputs: Outputs):
        self.settings = settings
        self.book = book
        self.bootstrap = bootstrap
        self.outputs = outputs
        self.mailboxes: dict[str, Mailbox] = {}
        self.offsets = OffsetBook()
        self.finished = Finished()
        self.answered = 0
        self.logged = 0
        self.orphans = 0  # mailboxes opened by a score whose request has not arrived yet
        self._timers: DeadlineHeap[Mailbox] = DeadlineHeap()
        self._closed: OrderedDict[str, int] = OrderedDict()  # request_id -> forget at (ms)
        self._models_seen: dict[str, int] = {}
        self._expected: frozenset[str] = frozenset(bootstrap.models)
        self._expected_at = 0
        self._codecs = {name: codec(name) for name in ("request", "score", "answer", "comparison")}

    # -- queries ---------------------------------------------------------------------------

    def schedule_at(self, now: int) -> Schedule:
        return self.book.in_force(now) if self.book.latest else self.bootstrap

    def next_timer(self) -> int | None:
        return self._timers.earliest()

    def live_models(self, now: int) -> set[str]:
        horizon = now - int(self.settings.model_ttl_s * 1000)
        return {model for model, at in self._models_seen.items() if at >= horizon}

    # -- state resets (rebalance, rewind) --------------------------------------------------

    def drop_partitions(self, partitions: set[int]) -> None:
        """Forget the mailboxes of partitions this instance no longer owns (or must re-read)."""
        for rid in [rid for rid, mb in self.mailboxes.items() if mb.partition in partitions]:
            self.mailboxes.pop(rid).closed = True
        self.orphans = sum(not mb.has_request for mb in self.mailboxes.values())

    def restore(self, finished: Finished) -> None:
        self.finished.answered.update(finished.answered)
        self.finished.logged.update(finished.logged)

    # -- records ---------------------------------------------------------------------------

    def on_request(self, msg: Message, now: int) -> None:
        try:
            request = self._codecs["request"].decode(msg.value())
            validate_request(request)
        except BadInput as err:
            self._reject(msg, err)
            return
        m.REQUESTS.inc()
        rid = request["request_id"]
        if rid in self.finished.logged:
            self.finished.forget(rid)  # answered and logged before a restart: nothing to redo
            child(m.RECOVERED, "logged").inc()
            self.offsets.track(msg, None)
            return
        mailbox = self.mailboxes.get(rid)
        if (mailbox is None and rid in self._closed) or (mailbox is not None and mailbox.has_request):
            m.DUPLICATE_REQUESTS.inc()
            self.offsets.track(msg, mailbox)
            return
        schedule = self.book.for_request(request["created_at"]) if self.book.latest else self.bootstrap
        deadline = schedule.deadline_for(request["created_at"], request["deadline"])
        if mailbox is None:
            mailbox = self.mailboxes[rid] = Mailbox(rid, msg.partition() or 0, deadline, opened_at=now)
        else:
            self.orphans -= 1  # its scores came first; now it has its request
        mailbox.schedule, mailbox.has_request = schedule, True
        mailbox.created_at, mailbox.deadline = request["created_at"], deadline
        reply = request["reply_to"]
        if reply is not None:
            mailbox.reply_topic, mailbox.reply_partition = reply["topic"], reply["partition"]
        self._restore_answer(mailbox)
        self.offsets.track(msg, mailbox)
        self._advance(mailbox, now)

    def _restore_answer(self, mailbox: Mailbox) -> None:
        """A request answered before a restart keeps that answer (it is not sent again)."""
        answer = self.finished.answered.pop(mailbox.request_id, None)
        if answer is None:
            return
        mailbox.decision = Decision(Status(answer["status"]), answer["model"], answer["reason"])
        mailbox.answered_at = answer["answered_at"]
        mailbox.restored = True
        child(m.RECOVERED, "answered").inc()

    def on_score(self, msg: Message, now: int) -> None:
        try:
            score = self._codecs["score"].decode(msg.value())
        except BadInput as err:
            self._reject(msg, err)
            return
        model = score["model"]
        child(m.SCORES, model, score["version"]).inc()
        self._models_seen[model] = now
        rid = score["request_id"]
        mailbox = self.mailboxes.get(rid)
        if mailbox is None:
            if rid in self._closed or rid in self.finished.logged:
                child(m.LATE_SCORES, model, "true").inc()
                self.offsets.track(msg, None)
                return
            mailbox = self.mailboxes[rid] = Mailbox(rid, msg.partition() or 0, score["deadline"], opened_at=now)
            self.orphans += 1
        self._add_score(mailbox, score, now)
        self.offsets.track(msg, mailbox)
        self._advance(mailbox, now)

    def _add_score(self, mailbox: Mailbox, score: dict[str, Any], now: int) -> None:
        if mailbox.restored:
            # Re-read after a restart: the worker's clock says when it really arrived.
            arrived, late = score["scored_at"], score["scored_at"] > (mailbox.answered_at or 0)
        else:
            arrived, late = now, mailbox.decision is not None
        arrival = Arrival(score["model"], score["version"], score["score"], score["label"], score["error"],
                          arrived, score["compute_ms"], late=late)
        if not mailbox.add(arrival):
            child(m.DUPLICATE_SCORES, arrival.model).inc()
        elif late:
            child(m.LATE_SCORES, arrival.model, "false").inc()

    def _reject(self, msg: Message, err: BadInput) -> None:
        self.outputs.reject(msg, err)
        self.offsets.track(msg, None)

    # -- time ------------------------------------------------------------------------------

    def tick(self, now: int) -> None:
        for mailbox in self._timers.pop_due(now):
            if not mailbox.closed and mailbox.wake_at <= now:
                mailbox.wake_at = 0
                self._advance(mailbox, now)
        self._forget_closed(now)
        m.MAILBOXES.set(len(self.mailboxes))

    def _forget_closed(self, now: int) -> None:
        closed = self._closed
        while closed:
            rid, forget_at = next(iter(closed.items()))
            if forget_at > now:
                break
            del closed[rid]

    # -- the mailbox state machine ---------------------------------------------------------

    def _advance(self, mailbox: Mailbox, now: int) -> None:
        """Answer when the schedule says so; log and close when every score is in or linger ends."""
        if not mailbox.has_request:
            # Counted from when the score arrived too: while catching up on a backlog, scores
            # may be read well before their (long expired) requests.
            give_up = max(mailbox.deadline, mailbox.opened_at) + self.settings.orphan_grace_ms
            if now >= give_up:
                self._drop_orphan(mailbox)
            else:
                self._wake(mailbox, give_up, now)
            return
        schedule = mailbox.schedule
        assert schedule is not None
        if mailbox.decision is None:
            decision = schedule.decide(mailbox.outcomes, mailbox.created_at, mailbox.deadline, now, mailbox.request_id)
            if decision is None:
                self._wake(mailbox, schedule.next_check(mailbox.outcomes, mailbox.created_at, mailbox.deadline, now),
                           now)
                return
            self._answer(mailbox, decision, now)
        log_by = mailbox.deadline + self.settings.linger_ms
        if now >= log_by or self._expected_models(now) <= mailbox.arrivals.keys():
            self._close(mailbox)
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
            self._expected = frozenset(self.schedule_at(now).models) | self.live_models(now)
            self._expected_at = now
        return self._expected

    def refresh_expected(self) -> None:
        self._expected_at = 0

    def _answer(self, mailbox: Mailbox, decision: Decision, now: int) -> None:
        mailbox.decision, mailbox.answered_at = decision, now
        chosen = mailbox.arrivals.get(decision.model) if decision.model else None
        schedule = mailbox.schedule
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
            "schedule": schedule.name if schedule else "",
            "schedule_version": schedule.version if schedule else 0,
        }
        self.outputs.answer(mailbox, self._codecs["answer"].encode(record))
        self.answered += 1
        status = decision.status.value
        child(m.ANSWERS, decision.model or "", status).inc()
        child(m.ANSWER_LATENCY, status).observe(max(0, now - mailbox.created_at) / 1000.0)
        m.DEADLINE_SLACK.observe(max(0, now - mailbox.deadline) / 1000.0)
        if decision.status is Status.FALLBACK:
            child(m.FALLBACKS, decision.model).inc()
        elif decision.status is Status.TIMEOUT:
            m.TIMEOUTS.inc()

    def _close(self, mailbox: Mailbox) -> None:
        decision = mailbox.decision
        assert decision is not None
        outputs = []
        for a in mailbox.arrivals.values():
            latency = max(0, a.arrived_at - mailbox.created_at)
            child(m.SCORE_LATENCY, a.model, a.version).observe(latency / 1000.0)
            outputs.append({"model": a.model, "version": a.version, "score": a.score, "label": a.label,
                            "error": a.error, "latency_ms": float(latency), "compute_ms": a.compute_ms,
                            "late": a.late})
        schedule = mailbox.schedule
        record = {
            "request_id": mailbox.request_id,
            "created_at": mailbox.created_at,
            "deadline": mailbox.deadline,
            "answered_at": mailbox.answered_at,
            "status": decision.status.value,
            "chosen_model": decision.model,
            "reason": decision.reason,
            "schedule": schedule.name if schedule else "",
            "schedule_version": schedule.version if schedule else 0,
            "outputs": outputs,
        }
        self.outputs.log(mailbox, self._codecs["comparison"].encode(record))
        self.logged += 1
        self._retire(mailbox)

    def _drop_orphan(self, mailbox: Mailbox) -> None:
        log.warning("dropping %d score(s) of %s: its request never arrived", len(mailbox.arrivals),
                    mailbox.request_id)
        m.ORPHAN_SCORES.inc(len(mailbox.arrivals))
        self.orphans -= 1
        self._retire(mailbox)

    def _retire(self, mailbox: Mailbox) -> None:
        mailbox.closed = True
        del self.mailboxes[mailbox.request_id]
        # Remember the id until its scores can no longer plausibly arrive, so a late score
        # is recognised as late instead of opening a new (orphan) mailbox.
        self._closed[mailbox.request_id] = mailbox.deadline + self.settings.orphan_grace_ms
