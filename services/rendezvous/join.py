"""The join: a mailbox per request, decided by its schedule on the log's clock, then logged.

This is the rendezvous' state machine, free of Kafka: requests and scores come in as plain
records (`records.py`), the log's clock moves with every scores-partition record (`clock.py`),
and what must be written goes out through the `Outputs` the service provides. Each `on_*` call
returns the mailbox the record now belongs to (its offset is finished when that mailbox
closes) or None (finished at once); the service keeps the offset book.

One answer per request, whoever decides it: a decision depends only on the records, their
order in their partitions and their append times (see `Schedule.decide`), so an instance that
takes over a partition after a crash and re-reads it decides every open request exactly as the
crashed one did, and an answer the crashed one already sent to a return address is repeated
identically, never contradicted. `answered_at` is the log time by which the answer was
determined, for the same reason. A re-read request found already answered (or logged) keeps
that answer and sends it to its return address again: the crashed instance may have committed
the answer before its reply was acknowledged (mailbox.py says why that offset was re-read).

Lifecycle of a mailbox: opened by its request or its first score -> answered (preferred model
in, fallback, TIMEOUT, ERROR; a request that cannot be scored is answered ERROR at once) ->
logged and closed once every expected model reported or the clock passes deadline + linger.
Scores whose request does not come (orphans) are kept for a bounded number and bytes (with the
scores of models a request's schedule does not name: `max_held_bytes`), and dropped once
the requests partition has been read past their append time by `orphan_grace_ms` (a request is
always appended before its scores, so by then it is not coming): forged scores can neither
exhaust memory nor starve real requests. A backlog read faster on the scores side than on the
requests side loses nothing either: from half the bound, the service holds back the scores of
partitions whose requests lag (score_brake.py). Closed request ids are remembered
for a while, bounded likewise, to recognise late scores (appended within the id's time: one
appended after it is a new request's under the id, read before its request, and waits for it)
and to answer a repeated request with the answer it already got — if it carries the same inputs
(features and payload) as the first: one with other inputs under a known id is answered ERROR at
its return address and not scored, so whoever sends an id first cannot decide the answer of a
different request sent under it later.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from math import isfinite
from sys import getsizeof
from typing import Any, Protocol

from services.control.schedule import Decision, Schedule, Status
from services.core.codec import codec
from services.core.errors import BadInput
from services.core.metrics import BatchedMetrics, child
from services.core.model_names import FOLDED_NAMES
from services.core.rate_limit import OncePerPeriod
from services.core.requests import RETRY_NOT_KEPT
from services.core.runtime import now_ms
from services.rendezvous import metrics as m
from services.rendezvous.clock import LogClocks
from services.rendezvous.mailbox import Arrival, Mailbox, Receipt
from services.rendezvous.records import RequestIn, ScoreIn
from services.rendezvous.remembered import RememberedIds

log = logging.getLogger(__name__)

def _timer_matters(at: int, mailbox: Mailbox) -> bool:
    """A mailbox's timer matters while the mailbox is open and this is its pending timer (each
    `_wake` pushes a new one; the ones before it, and all of a closed mailbox's, are leftovers)."""
    return not mailbox.closed and mailbox.wake_at == at


MAX_LONG = 2**63 - 1  # what an Avro long (the records' times) holds
# Models the join keeps track of, and (model, version) pairs its metrics name; beyond them scores
# of further models are refused and further versions are labelled OTHER_VERSION. Forged scores
# naming a new model or version each would otherwise grow memory and metric series without end.
MAX_MODELS = 256
# Scores one request keeps from models its schedule does not name. MAX_MODELS bounds the names
# tracked at once, not over time: an orphan on a quiet requests partition (never expired) took
# 256 more forged names every model_ttl_ms, up to 4 KB each, without end (a review).
MAX_UNSCHEDULED_PER_REQUEST = 64
MAX_LABELLED_VERSIONS = 1024
# What the join keeps, beyond its strings (sys.getsizeof, exact for a str whatever its characters), for
# a score held apart (an orphan's, or of a model its request's schedule does not name: an Arrival and
# its dict slot) and for an orphan (its Mailbox, dict and list, OrderedDict slot), with a margin: with
# tracemalloc on CPython 3.11, forged orphans with every string at its limit held 38,217 bytes each
# with 3 scores (estimated 38,690), 805,349 with 67 (812,040). A few getsizeof() calls, taken
# only for the scores held apart: the scores of requests read, their schedule's models, pay one set lookup.
ARRIVAL_BYTES = 200
ORPHAN_BYTES = 600
OTHER = FOLDED_NAMES
# Return addresses a request still open keeps for its retries: each is a few hundred bytes kept
# until the mailbox closes (up to two minutes of log time), and repeats are not mailboxes, so
# --max-mailboxes does not bound them (100,000 repeats of one id held 32 MB).
MAX_WAITING_REPLIES = 16
LIVE_CACHE_MS = 100  # how stale the set of live models may be (it decides only what a log record waits for)
# How far before its request's append time a score may be appended and still be its: the requests
# and scores partitions' leaders may be brokers whose clocks differ (LogAppendTime on both). Held
# to every score, whichever is read first: brokers' clocks further apart than this drop every score
# (said in the log once a minute), and a wider margin would join a late score of an earlier
# request under the id to a new one appended within it.
STALE_SCORE_MS = 1_000

Reply = tuple[str, int | None]
Owner = Mailbox | Receipt  # what a record's offset waits for (see offsets.py)
# A status as the records write it: `Status.X.value` is a Python-level property (enum.py), read
# three times per request.
_TEXT = {status: status.value for status in Status}
# Members read per request; `Status.X` is a slow lookup in Python 3.11 (its EnumType has a __getattr__).
_FALLBACK, _TIMEOUT = Status.FALLBACK, Status.TIMEOUT


class Outputs(Protocol):
    def answer(self, mailbox: Mailbox, record: dict[str, Any]) -> None:
        """Write the answer to the answers topic and to every return address of the mailbox."""

    def log(self, mailbox: Mailbox, record: dict[str, Any]) -> None:
        """Write the comparison record."""

    def repeat(self, reply: Reply, record: dict[str, Any], receipt: Owner, inputs: bytes | None) -> None:
        """Send an answer already given to a return address again (a repeated or re-read
        request); `receipt` counts the reply until the broker acknowledges it. `inputs`: the
        digest of the inputs of the request at that address (None: not known), which the reply
        carries for its client to tell its answer from another request's under the id."""


@dataclass(frozen=True)
class JoinLimits:
    """Bounds that keep the join's memory and time finite whatever the input."""

    max_budget_ms: int = 60_000  # deadlines are clamped to created_at + this
    max_future_ms: int = 60_000  # a request created further ahead of the log's clock is refused
    linger_ms: int = 1_000  # after the deadline, keep collecting scores for the comparison record
    orphan_grace_ms: int = 10_000  # how long a score waits for its request (log time)
    max_orphans: int = 50_000  # requests whose scores wait for them (orphans), at most
    # Bytes held for scores not joined to their request's schedule (orphans', and unscheduled models'
    # of requests read), estimated: the counts alone allowed max_orphans x 64 forged scores of 4 KB strings.
    max_held_bytes: int = 256 * 1024 * 1024
    remember_ms: int = 60_000  # closed request ids are remembered this long (log time)
    max_remembered: int = 200_000
    model_ttl_ms: int = 30_000  # a model silent this long is no longer expected in comparison records


@dataclass
class Finished:
    """Requests of a re-read window that already have an answer or a comparison record."""

    answered: dict[str, dict[str, Any]]
    logged: set[str]
    partition_of: dict[str, int] = field(default_factory=dict)  # request id -> its partition
    # Ids closed before the re-read window, in the last remember_ms: request id -> (partition,
    # log time, its Answer's encoded value), so a retry of one gets that answer again, as it
    # would have from the previous owner's memory (decoded only then).
    remembered: dict[str, tuple[int, int, bytes]] = field(default_factory=dict)
    # request id -> the digest of the inputs its answer was given to (the Answer record's header,
    # request_inputs.INPUTS_HEADER): a re-read request under the id with other inputs is a conflicting one,
    # refused as the owner before refused it, not given the first one's answer (a review).
    inputs: dict[str, bytes] = field(default_factory=dict)

    def forget(self, partitions: set[int]) -> None:
        """Drop the entries of `partitions` (given up, or to be re-read and scanned again)."""
        for rid in [rid for rid, partition in self.partition_of.items() if partition in partitions]:
            del self.partition_of[rid]
            self.answered.pop(rid, None)
            self.logged.discard(rid)
            self.inputs.pop(rid, None)


class Schedules(Protocol):
    """The schedule versions the join decides by (the control topic's, in the service)."""

    def for_request(self, created_at: int) -> Schedule:
        """The version governing a request created at `created_at`."""
        ...

    def named_between(self, start: int, end: int) -> frozenset[str]:
        """Every model named by a version in force at some time in [start, end]."""
        ...


class Join:
    def __init__(
        self, limits: JoinLimits, schedules: Schedules, outputs: Outputs,
        wall_ms: Callable[[], int] = now_ms,
    ):
        self.limits = limits
        self.schedules = schedules
        self.schedule_for = schedules.for_request  # created_at -> the schedule version governing it
        self.outputs = outputs
        self.wall_ms = wall_ms
        self.mailboxes: dict[str, Mailbox] = {}  # request id -> its open request (orphans: below)
        self.clocks: LogClocks[Mailbox] = LogClocks(_timer_matters)  # scores partitions: they decide
        self._requests_read: dict[int, int] = {}  # requests partition -> newest append time read
        self.answered = 0
        self.logged = 0
        # Orphans (scores whose request has not been read) per scores partition, in the order read
        # (their append times grow). Kept by partition and id: a stray score of an id on another
        # partition number (a worker breaking the rule, or forged) has its own, so it neither
        # refuses the real scores nor takes their place when the request comes.
        self._orphans: dict[int, OrderedDict[str, Mailbox]] = {}
        self._orphan_count = 0
        # Estimated bytes held for scores kept apart (`_hold`), in all and by orphans of a partition.
        self._held_bytes = 0
        self._orphan_bytes: dict[int, int] = {}
        self._max_held_bytes = limits.max_held_bytes
        # What unscheduled models' scores of requests read may hold at most: the rest is the orphans'.
        # They wait up to a request's budget (a minute), and alone at the budget they had every early
        # score of a real request dropped the moment it was read (a review's repro: OK -> TIMEOUT).
        self._unscheduled_share = limits.max_held_bytes // 2
        self._remembered = RememberedIds(limits.max_remembered)
        self._finished = Finished({}, set())
        self._rereading: set[int] = set()  # requests partitions with entries in _finished
        self._models_seen: dict[str, int] = {}  # model -> wall ms of its last score
        # model -> wall ms of its last score joined to a request read (`_forget_the_silent`); its
        # names are some of `_models_seen`'s.
        self._joined_at: dict[str, int] = {}
        self._labelled_models: set[str] = set()  # models named in metrics (never forgotten: series stay)
        self._labelled: set[tuple[str, str]] = set()  # (model, version) pairs named in metrics
        # Named (model, version) pairs -> their metric children (see _child_of).
        self._scores_children: dict[tuple[str, str], Any] = {}
        self._latency_children: dict[tuple[str, str], Any] = {}
        # live_models() runs for every event; its answer changes only when a model appears or
        # ages out, so it is recomputed at most every LIVE_CACHE_MS (or when a new model appears).
        self._live: tuple[int, set[str]] | None = None
        # Metrics counted here reach Prometheus when the service flushes them (once a batch).
        self.metrics = BatchedMetrics()
        self._past_due_said = OncePerPeriod[str](60.0)
        self._silent_said = OncePerPeriod[str](60.0)  # one key: a forger may choose names at will
        self._stale_said = OncePerPeriod[str](60.0)

    # -- queries ---------------------------------------------------------------------------

    @property
    def orphans(self) -> int:
        return self._orphan_count

    @property
    def held_bytes(self) -> int:
        """Estimated bytes held for scores kept apart: orphans, and unscheduled models' (at most max_held_bytes)."""
        return self._held_bytes

    @property
    def orphan_bytes(self) -> int:
        """Estimated bytes held for orphans alone: what pausing their partitions' scores can bound."""
        return sum(self._orphan_bytes.values())

    @property
    def orphan_byte_fill(self) -> float:
        """The orphans' bytes as a share of what the budget leaves them (the score brake's measure:
        against the whole budget, with unscheduled scores at their half, orphans were shed at a
        fill of 0.5, before the brake, which holds from 0.5, ever paused their partitions)."""
        return self.orphan_bytes / self._orphan_budget()

    def orphans_by_partition(self) -> dict[int, int]:
        return {partition: len(orphans) for partition, orphans in self._orphans.items() if orphans}

    @property
    def waiting(self) -> int:
        """Mailboxes that hold a request (what request intake is throttled on)."""
        return len(self.mailboxes)

    def live_models(self, wall_ms: int) -> set[str]:
        if self._live is not None and 0 <= wall_ms - self._live[0] < LIVE_CACHE_MS:
            return self._live[1]
        horizon = wall_ms - self.limits.model_ttl_ms
        live = {model for model, at in self._models_seen.items() if at >= horizon}
        self._live = (wall_ms, live)
        return live

    def _room_for_a_model(self) -> bool:
        """Whether one more model may be tracked: below MAX_MODELS, once models silent for longer
        than `model_ttl_ms` are forgotten."""
        if len(self._models_seen) < MAX_MODELS:
            return True
        horizon = self.wall_ms() - self.limits.model_ttl_ms
        self._models_seen = {model: at for model, at in self._models_seen.items() if at >= horizon}
        self._joined_at = {model: at for model, at in self._joined_at.items() if model in self._models_seen}
        self._live = None  # it may name some of those
        return len(self._models_seen) < MAX_MODELS

    def _scheduled(self, score: ScoreIn, mailbox: Mailbox | None) -> bool:
        """Whether the schedule of the score's request names its model: such a score is never
        refused. Before its request is read, that schedule is not known yet, so any version that
        could govern it counts: one in force between the oldest creation time a request still
        open could have (`max_budget_ms` before the score) and the newest one accepted
        (`max_future_ms` after). The version in force at the score's own time alone would make
        the answer depend on which of the two was read first, across a schedule change."""
        if mailbox is not None and mailbox.schedule is not None:
            return score.model in mailbox.schedule.models
        return score.model in self._named_around(score)

    def _full(self, mailbox: Mailbox, score: ScoreIn) -> bool:
        """Whether `score` is one score too many for its request: of a new model the schedule does
        not name, with MAX_UNSCHEDULED_PER_REQUEST scores of such models kept. The mailbox's scores
        come from one partition in log order, so a re-read refuses the same ones."""
        if score.model in mailbox.arrivals or len(mailbox.arrivals) < MAX_UNSCHEDULED_PER_REQUEST:
            return False
        if self._scheduled(score, mailbox):
            return False
        scheduled = mailbox.schedule.models if mailbox.schedule is not None else self._named_around(score)
        return sum(model not in scheduled for model in mailbox.arrivals) >= MAX_UNSCHEDULED_PER_REQUEST

    def _named_around(self, score: ScoreIn) -> frozenset[str]:
        start, end = score.log_time - self.limits.max_budget_ms, score.log_time + self.limits.max_future_ms
        return self.schedules.named_between(start, end)

    def _labels(self, model: str, version: str) -> tuple[str, str]:
        """The metric labels of a model's version: at most MAX_MODELS models and
        MAX_LABELLED_VERSIONS (model, version) pairs are named, the rest are OTHER."""
        key = (model, version)
        if key in self._labelled:  # named for good (its model was named first): nearly every call
            return key
        if model not in self._labelled_models:
            # Past the budget only a model the schedule now names gets a series of its own (after
            # a forged flood, or years of rotated challengers, a new challenger is still seen).
            if len(self._labelled_models) >= MAX_MODELS and model not in self.schedule_for(self.wall_ms()).models:
                return OTHER, OTHER
            self._labelled_models.add(model)
        if len(self._labelled) >= MAX_LABELLED_VERSIONS:
            return model, OTHER
        self._labelled.add(key)
        return key

    def _child_of(self, metric: Any, kept: dict[tuple[str, str], Any], model: str, version: str) -> Any:
        """`metric`'s child for a model's version (per score), made only when first asked for (a
        series shows once made); kept in `kept` once its labels are its own: they stay so, and
        `_labels` would only return them again."""
        key = (model, version)
        found = kept.get(key)
        if found is None:
            labels = self._labels(model, version)
            found = child(metric, *labels)
            if labels == key:  # at most MAX_LABELLED_VERSIONS of them
                kept[key] = found
        return found

    # -- state resets (rebalance, rewind, recovery) ---------------------------------------

    def drop_partitions(self, partitions: set[int]) -> None:
        """Forget everything about partitions this instance no longer owns, or must re-read: their
        mailboxes, clocks, orphans, and the ids they closed (whose answers may not be committed:
        a re-read must decide them again, not take them for repeats)."""
        for rid in [rid for rid, mb in self.mailboxes.items() if mb.partition in partitions]:
            self._release(self.mailboxes.pop(rid))
        for partition in partitions:
            dropped: dict[str, Mailbox] = self._orphans.pop(partition, {})
            for orphan in dropped.values():
                self._release(orphan)
            self._orphan_count -= len(dropped)
            self._orphan_bytes.pop(partition, None)
            self._requests_read.pop(partition, None)
        self._remembered.drop_partitions(partitions)
        self.clocks.forget(partitions)
        # A later owner scans again; an entry kept past this would take a new request with the
        # same id for an old one (and, finding no answer, send it none).
        self._finished.forget(partitions)
        self._rereading -= partitions

    def restore(self, finished: Finished) -> None:
        self._finished.answered.update(finished.answered)
        self._finished.logged.update(finished.logged)
        self._finished.partition_of.update(finished.partition_of)
        self._finished.inputs.update({rid: d for rid, d in finished.inputs.items() if rid in finished.partition_of})
        self._rereading.update(finished.partition_of.values())
        for rid, (partition, log_time, answer) in sorted(finished.remembered.items(), key=lambda kv: kv[1][1]):
            if rid not in self._remembered and not self._open(rid) and rid not in finished.partition_of:
                self._remember(rid, partition, answer, log_time, finished.inputs.get(rid))

    def end_reread(self, partition: int) -> None:
        """Every request of `partition` that a takeover's scan could find answered has been read
        again. What the scan found for the others (requests before the committed offset, decided
        after the oldest open one was read) is kept as any closed id is, for remember_ms: kept for
        the whole ownership, a new request reusing such an id an hour later got the old answer,
        unscored and unlogged (a review)."""
        if partition not in self._rereading:
            return
        self._rereading.discard(partition)
        finished = self._finished
        for rid in [rid for rid, on in finished.partition_of.items() if on == partition]:
            del finished.partition_of[rid]
            finished.logged.discard(rid)
            answer, inputs = finished.answered.pop(rid, None), finished.inputs.pop(rid, None)
            if answer is not None and not self._open(rid) and rid not in self._remembered:
                self._remember(rid, partition, answer, answer["answered_at"], inputs)

    # -- records ---------------------------------------------------------------------------

    def on_request(self, request: RequestIn) -> Owner | None:
        self.metrics.inc(m.REQUESTS)
        if request.log_time > self._requests_read.get(request.partition, request.log_time - 1):
            self._requests_read[request.partition] = request.log_time
            self._expire_orphans(request.partition)
            # Closed ids are forgotten as the requests partition is read past their time, not its
            # scores partition: whether a retry is a repeat then depends on the requests' order
            # alone. By the scores clock, a retry appended in time but read after a later score
            # was a new request, decided and answered a second time (a review).
            self._remembered.expire(request.partition, request.log_time)
        rid = request.request_id
        reply = (request.reply_topic, request.reply_partition) if request.reply_topic else None
        finished = self._finished
        if rid in finished.logged or rid in finished.answered:
            # What a takeover's scan found belongs to its request's partition: a request under the
            # id on another partition is not the one answered (and, read first, took its answer).
            on = finished.partition_of.get(rid, request.partition)
            if on != request.partition:
                return self._elsewhere(request, reply, on)
            answered_inputs = finished.inputs.get(rid)
            if answered_inputs is not None and answered_inputs != request.inputs:
                # Not the request answered: one under its id with other inputs, which the owner
                # before refused (`_repeated`); given the first one's answer, its address had two.
                return self._conflicting(request, reply)
            if rid in finished.logged:
                return self._relogged(request, reply)
        mailbox = self.mailboxes.get(rid)
        if mailbox is not None:
            if mailbox.partition != request.partition:
                return self._elsewhere(request, reply, mailbox.partition)
            return self._repeated(request, mailbox, reply)
        mailbox = self._orphan(request.partition, rid)
        if mailbox is not None and self._within_time(rid, request.log_time):
            self._drop_as_late(mailbox)  # a repeat's scores, appended after the id's time (`on_score`)
            return self._repeated(request, None, reply)
        if mailbox is None:
            self._forget_if_past(rid, request.log_time)
            if rid in self._remembered:
                return self._repeated(request, None, reply)
            mailbox = Mailbox(rid, request.partition, request.log_time)
        else:
            self._unorphan(mailbox)  # its scores came first; now it has its request
            self._drop_stale(mailbox, request.log_time)
            wall = self.wall_ms()
            for model in mailbox.arrivals:
                if model in self._models_seen:  # joined now
                    self._joined_at[model] = wall
        self.mailboxes[rid] = mailbox
        self._attach(mailbox, request, reply)
        if mailbox.held:  # an orphan's: what its schedule names is joined now
            self._hold_unscheduled_only(mailbox)
        # Restored first: an invalid request answered before a restart keeps that answer (its
        # comparison record may not have been committed with it) instead of getting a second one.
        if self._finished.answered:  # empty but after a takeover's scan
            self._restore_answer(mailbox)
        problem = request.problem or self._time_problem(request)
        if problem is not None:
            if mailbox.decision is None:
                self._answer(mailbox, Decision(Status.ERROR, None, f"invalid request: {problem}", request.log_time))
            self._close(mailbox)
            return None if mailbox.settled else mailbox
        self._advance(mailbox, self.clocks.now(request.partition))
        return None if mailbox.settled else mailbox

    def on_score(self, score: ScoreIn) -> Mailbox | None:
        clock = self._tick(score.partition, score.log_time)
        rid = score.request_id
        mailbox = self.mailboxes.get(rid)
        if mailbox is not None and mailbox.partition != score.partition:
            # Not its request's partition number (a worker breaking the rule, or forged): joined, it
            # would be decided on another partition's clock, and the request's offset could be
            # committed unanswered when that other partition is given up.
            self.metrics.inc(child(m.ELSEWHERE, "score"))
            return None
        if mailbox is None:
            mailbox = self._orphan(score.partition, rid)
        if mailbox is not None and (
            self._full(mailbox, score)
            or (self._held_bytes >= self._unscheduled_share and self._no_room(mailbox, score))
        ):
            # Before it is counted or its name tracked: refused, it takes no series nor slot.
            self.metrics.inc(m.SCORES_REFUSED)
            return None
        if score.model not in self._models_seen:
            # Only under a flood of more than MAX_MODELS names (forged): which get through then
            # depends on when each was last seen, a bound on memory that no instance can avoid.
            if not self._room_for_a_model() and not self._scheduled(score, mailbox):
                self.metrics.inc(m.SCORES_REFUSED)
                return None
            self._live = None
        self.metrics.inc(self._child_of(m.SCORES, self._scores_children, score.model, score.version))
        model_label = self._labels(score.model, score.version)[0]
        wall = self._models_seen[score.model] = self.wall_ms()
        if mailbox is None:
            if self._within_time(rid, score.log_time):
                self.metrics.inc(child(m.LATE_SCORES, model_label, "true"))
                return None
            # Appended after a closed id's time: the score of a new request under the id, whose
            # request is not read yet (a backlog's scores read ahead). Taken for late, it was lost,
            # and the request answered TIMEOUT, where read in the other order it had its score (a
            # review). Its request decides: within the id's time after all, a repeat (`on_request`).
            mailbox = self._open_orphan(rid, score)
        elif mailbox.has_request and score.log_time < mailbox.request_at - STALE_SCORE_MS:
            # Read after its request, as `_drop_stale` drops one read before it: joined, a score of
            # an earlier request under the id (or a guessed one) answered OK where the other order
            # of the same records answered FALLBACK (a review).
            self.metrics.inc(child(m.LATE_SCORES, model_label, "true"))
            self._say_stale(score.request_id, mailbox.request_at - score.log_time)
            self._advance(mailbox, clock)
            return None if mailbox.closed else mailbox
        value, error = score.score, score.error
        if value is not None and not isfinite(value):  # NaN is no answer to give with confidence
            value, error = None, error or f"its score is not a finite number ({value})"
        arrival = Arrival(score.model, score.version, value, score.label, error, score.log_time, score.compute_ms,
                          error is None and value is not None)
        if not mailbox.add(arrival):
            self.metrics.inc(child(m.DUPLICATE_SCORES, model_label))
        else:
            if mailbox.has_request:
                self._joined_at[score.model] = wall
            schedule = mailbox.schedule
            if schedule is None or arrival.model not in schedule.model_set:  # an orphan's, or unscheduled
                self._hold(mailbox, _arrival_size(arrival))
                if self._held_bytes > self._max_held_bytes:
                    self._shed(score.partition)
            if mailbox.decision is not None and arrival.at > mailbox.decision.at:
                self.metrics.inc(child(m.LATE_SCORES, model_label, "false"))
        self._advance(mailbox, clock)
        return None if mailbox.closed else mailbox

    def on_clock(self, partition: int, log_time: int) -> None:
        """A clock record (or any record) appended to scores partition `partition` at `log_time`."""
        self._tick(partition, log_time)

    def _tick(self, partition: int, log_time: int) -> int:
        """Move the partition's clock, wake the mailboxes it made due; the clock's reading after."""
        clock_due = self.clocks.advance(partition, log_time)
        now = self.clocks.now(partition)
        for mailbox in clock_due:
            if not mailbox.closed and mailbox.wake_at < now:
                mailbox.wake_at = -1
                self._advance(mailbox, now)
        return now  # nothing above moves a clock: the caller may decide on this reading

    def _attach(self, mailbox: Mailbox, request: RequestIn, reply: Reply | None) -> None:
        schedule = self._version_of(request)
        mailbox.has_request, mailbox.schedule, mailbox.created_at = True, schedule, request.created_at
        mailbox.request_at = request.log_time
        mailbox.deadline, mailbox.inputs = self._deadline(schedule, request), request.inputs
        if mailbox.deadline < request.log_time:  # past due before the broker had it
            self._past_due(mailbox, request)
        if reply is not None:
            mailbox.replies.append(reply)

    def _past_due(self, mailbox: Mailbox, request: RequestIn) -> None:
        """A request whose deadline had passed when it was appended: its TIMEOUT says why, not
        only 'champion late; ...' (a sender's clock behind the broker's timed out every request
        so: a review), and the log says it once a minute."""
        behind = request.log_time - request.created_at
        if mailbox.schedule is not None and mailbox.deadline < request.log_time <= mailbox.schedule.deadline_for(
                request.created_at, request.deadline):  # in time but for the cut: the sender is not to blame
            mailbox.past_due = (f"the deadline, cut to --max-budget-ms ({self.limits.max_budget_ms} ms) after its "
                                f"created_at, had passed when the request was appended, {behind} ms after it")
        else:
            mailbox.past_due = (f"the deadline had passed when the request was appended, {behind} ms after its "
                                "created_at: was it held on its way (a broker away), or is the sender's clock "
                                "behind the broker's?")
        said = self._past_due_said.passes("past due")
        if said is not None:
            log.warning("request %r: %s%s", request.request_id[:80], mailbox.past_due, said.repeated())

    def _version_of(self, request: RequestIn) -> Schedule:
        """The schedule version governing `request`: the one in force when it was created, or when
        it was appended if its client's clock is ahead (up to max_future_ms is accepted). By a
        future created_at alone, a version written after the request was read, but in force by
        then, governed it for an instance re-reading it after a takeover and not for the one that
        read it live: two answers (a review). Versions in force by the append time were written
        before it (a version starts no earlier than its control record), so every reader knows them."""
        return self.schedule_for(min(request.created_at, request.log_time))

    def _deadline(self, schedule: Schedule, request: RequestIn) -> int:
        """The request's effective deadline: its own or the schedule's default, clamped."""
        deadline = schedule.deadline_for(request.created_at, request.deadline)
        # A created_at near the end of an Avro long would carry the deadline past it: the answer
        # could not be encoded, and the mailbox would stay open for good.
        return min(deadline, request.created_at + self.limits.max_budget_ms, MAX_LONG)

    def _time_problem(self, request: RequestIn) -> str | None:
        ahead = request.created_at - request.log_time
        if ahead > self.limits.max_future_ms:
            return (f"created_at is {ahead} ms ahead of the broker's clock "
                    f"(at most {self.limits.max_future_ms} ms is accepted)")
        return None

    def _repeated(self, request: RequestIn, mailbox: Mailbox | None, reply: Reply | None) -> Owner | None:
        """The same request_id again: it gets the answer the first one got (now, or when decided),
        if it carries the same inputs."""
        self.metrics.inc(m.DUPLICATE_REQUESTS)
        rid = request.request_id
        first = mailbox.inputs if mailbox is not None else self._remembered[rid][3]
        if first is not None and first != request.inputs:
            return self._conflicting(request, reply)
        if first is None and mailbox is None and self._remembered[rid][0] != request.partition:
            # Answered before a takeover, inputs unknown: only a request on its partition can be
            # taken for its retry.
            return self._elsewhere(request, reply, self._remembered[rid][0])
        if mailbox is not None:
            if reply is not None:
                if mailbox.answer is not None:
                    self.outputs.repeat(reply, mailbox.answer, mailbox, request.inputs)
                elif len(mailbox.replies) < MAX_WAITING_REPLIES:
                    mailbox.replies.append(reply)
                else:
                    return self._refused(request, reply, f"request_id {rid!r} has {MAX_WAITING_REPLIES} return "
                                         f"addresses waiting for its answer already: {RETRY_NOT_KEPT} "
                                         "(retry after the answer, which is then sent again)")
            return mailbox
        return self._send_again(reply, _decoded(self._remembered[rid][2]), request.inputs)

    def _conflicting(self, request: RequestIn, reply: Reply | None) -> Receipt | None:
        """A known request_id with other inputs: the first request's answer would be a confident
        answer to inputs nobody scored, so this one is answered ERROR at its return address (the
        answers topic keeps the first request's answer: one answer per id) and neither scored
        nor logged (its scores, if a model wrote any, are late scores of the first)."""
        self.metrics.inc(m.CONFLICTING_REQUESTS)
        return self._refused(request, reply, f"request_id {request.request_id!r} was already used by a request with "
                             "other features or payload: this one is not scored (a request_id must be unique; a retry "
                             "must repeat its inputs)")

    def _elsewhere(self, request: RequestIn, reply: Reply | None, partition: int) -> Receipt | None:
        """A request_id open on another partition: answered ERROR at its return address, neither
        scored nor joined (each partition's mailboxes are decided and committed on their own)."""
        self.metrics.inc(child(m.ELSEWHERE, "request"))
        return self._refused(request, reply, f"request_id {request.request_id!r} is in use by a request on "
                             f"partition {partition} of the requests topic, and this one came to partition "
                             f"{request.partition}: a request_id must be unique, and a retry must go to the same "
                             "partition (key it by its request_id)")

    def _refused(self, request: RequestIn, reply: Reply | None, reason: str) -> Receipt | None:
        """An ERROR answer for `reason`, sent to the request's return address only (not on the
        answers topic, which keeps the one answer of its id)."""
        schedule = self._version_of(request)
        refusal = _answer_record(request.request_id, Decision(Status.ERROR, None, reason, request.log_time),
                                 request.created_at, self._deadline(schedule, request), None, None)
        return self._send_again(reply, refusal, request.inputs)

    def _relogged(self, request: RequestIn, reply: Reply | None) -> Receipt | None:
        """A re-read request answered and logged before a restart: nothing is redone, but its
        reply is sent again (it may not have been acknowledged before the crash)."""
        rid = request.request_id
        self._finished.logged.discard(rid)
        orphan = self._orphan(request.partition, rid)
        # Its scores, re-read first: done with too (else they would wait, holding their partition's
        # offsets, and a retry of the id would be attached to them as a new request). Scores of
        # the id on another partition are another request's.
        if orphan is not None:
            self._unorphan(orphan)
            self._release(orphan)
        answer = self._finished.answered.pop(rid, None)
        # The inputs its answer was given to, when its Answer record says (one with other inputs
        # was refused above); else unknown, so not compared (a true retry must still get its answer).
        self._remember(rid, request.partition, answer, request.log_time, self._finished.inputs.pop(rid, None))
        self.metrics.inc(child(m.RECOVERED, "logged"))
        return self._send_again(reply, answer, request.inputs)

    def _send_again(self, reply: Reply | None, answer: dict[str, Any] | None, inputs: bytes) -> Receipt | None:
        """`answer` sent to the return address of a request with `inputs` (its digest)."""
        if reply is None or answer is None:
            return None
        receipt = Receipt()
        self.outputs.repeat(reply, answer, receipt, inputs)
        return None if receipt.settled else receipt

    def _restore_answer(self, mailbox: Mailbox) -> None:
        """A request answered before a restart keeps that answer, sent again to its return
        addresses (the first reply may not have been acknowledged before the crash)."""
        answer = self._finished.answered.pop(mailbox.request_id, None)
        if answer is None:
            return
        mailbox.decision = Decision(Status(answer["status"]), answer["model"], answer["reason"], answer["answered_at"])
        mailbox.answer, mailbox.restored = answer, True
        # As in _relogged: the inputs answered when the Answer record says (this request's: one
        # with others was refused in on_request), else unknown and not compared.
        asked, mailbox.inputs = mailbox.inputs, self._finished.inputs.pop(mailbox.request_id, None)
        self.metrics.inc(child(m.RECOVERED, "answered"))
        for reply in mailbox.replies:  # the re-read request's (its inputs those answered, or not known)
            self.outputs.repeat(reply, answer, mailbox, asked)

    def _orphan(self, partition: int, rid: str) -> Mailbox | None:
        orphans = self._orphans.get(partition)
        return orphans.get(rid) if orphans else None

    def _open(self, rid: str) -> bool:
        """Whether `rid` has a mailbox: its request's, or its scores' on any partition."""
        return rid in self.mailboxes or any(rid in orphans for orphans in self._orphans.values())

    def _drop_stale(self, mailbox: Mailbox, request_at: int) -> None:
        """Scores appended well before their request are not its scores: a request is appended
        before its scores, so they are an earlier request's under its id (forgotten since), or
        written for a guessed id. Joined, a score of a request a minute older answered a new one
        with other inputs (a review). The margin allows for brokers' clocks apart."""
        stale = [model for model, arrival in mailbox.arrivals.items() if arrival.at < request_at - STALE_SCORE_MS]
        for model in stale:
            arrival = mailbox.arrivals.pop(model)
            self._count_late(arrival)
            self._say_stale(mailbox.request_id, request_at - arrival.at)

    def _say_stale(self, rid: str, before_ms: int) -> None:
        """Once a minute: a score dropped for being appended before its request (a forged or reused
        id, or brokers' clocks far apart: then every score would be, and this says why)."""
        said = self._stale_said.passes("stale")
        if said is not None:
            log.warning("a score of request %r was appended %d ms before the request and is not its (an earlier "
                        "request's under the id, or the brokers' clocks more than %d ms apart?)%s", rid[:80],
                        before_ms, STALE_SCORE_MS, said.repeated())

    def _count_late(self, arrival: Arrival) -> None:
        """A score taken for a late one, after the comparison record (dropped, not joined)."""
        self.metrics.inc(child(m.LATE_SCORES, self._labels(arrival.model, arrival.version)[0], "true"))

    def _unorphan(self, mailbox: Mailbox) -> None:
        """Take an orphan off its partition's list (its request came, or its scores are dropped)."""
        del self._orphans[mailbox.partition][mailbox.request_id]
        self._orphan_count -= 1
        if mailbox.held:
            self._orphan_bytes[mailbox.partition] -= mailbox.held

    def _oldest(self, partition: int) -> Mailbox:
        """The oldest orphan of `partition`, taken off its list."""
        oldest = next(iter(self._orphans[partition].values()))
        self._unorphan(oldest)
        return oldest

    def _open_orphan(self, rid: str, score: ScoreIn) -> Mailbox:
        orphans = self._orphans.setdefault(score.partition, OrderedDict())
        mailbox = orphans[rid] = Mailbox(rid, score.partition, score.log_time)
        self._orphan_count += 1
        self._hold(mailbox, ORPHAN_BYTES + getsizeof(rid))  # not shed here: its score is not in yet
        if self._orphan_count > self.limits.max_orphans:
            # From the partition holding the most: forged scores flooding one partition must not
            # push out the early scores of real requests on another.
            # On a tie, another partition's: never the score just read when others wait too.
            fullest, _ = max(self._orphans.items(), key=lambda kv: (len(kv[1]), kv[0] != score.partition))
            self._drop_orphan(self._oldest(fullest), "too many scores wait for their requests")
        return mailbox

    # -- held bytes (--max-held-bytes) ----------------------------------------------------

    def _hold(self, mailbox: Mailbox, size: int) -> None:
        """Count `size` bytes held for `mailbox` (an orphan's, or a score of a model its schedule does not name)."""
        mailbox.held += size
        self._held_bytes += size
        if not mailbox.has_request:
            self._orphan_bytes[mailbox.partition] = self._orphan_bytes.get(mailbox.partition, 0) + size

    def _release(self, mailbox: Mailbox) -> None:
        """`mailbox` is closed or dropped (taken off the orphans' lists first): nothing of it is held any more."""
        mailbox.closed = True
        self._held_bytes -= mailbox.held
        mailbox.held = 0

    def _hold_unscheduled_only(self, mailbox: Mailbox) -> None:
        """An orphan's request came: of what it held, only its schedule's unnamed models' scores stay
        held, within their share of the budget; those beyond it are refused now, as they would have
        been after the request (they change no answer). Unbounded here, rounds of orphans whose
        requests came next held 2.85x the budget (a review's repro)."""
        assert mailbox.schedule is not None
        named = mailbox.schedule.model_set
        self._held_bytes -= mailbox.held
        mailbox.held = 0
        room = self._unscheduled_share - (self._held_bytes - self.orphan_bytes)
        for model, arrival in list(mailbox.arrivals.items()):
            if model in named:
                continue
            size = _arrival_size(arrival)
            if size > room:
                del mailbox.arrivals[model]
                self.metrics.inc(m.SCORES_REFUSED)
                continue
            room -= size
            mailbox.held += size
            self._held_bytes += size

    def _no_room(self, mailbox: Mailbox, score: ScoreIn) -> bool:
        """Whether `score` is refused: a new model's score for a request whose schedule does not name
        it, once such scores hold their share of the budget (or all is held). It changes no answer; an
        orphan's score instead makes room (the oldest orphans go, `_shed`): it may be the early score
        of a request not read yet."""
        if not mailbox.has_request or score.model in mailbox.arrivals or self._scheduled(score, mailbox):
            return False
        unscheduled = self._held_bytes - self.orphan_bytes
        return unscheduled >= self._unscheduled_share or self._held_bytes >= self._max_held_bytes

    def _shed(self, partition: int) -> None:
        """Over the byte budget: drop the oldest orphans of the partition holding the most bytes of them
        (forged scores flooding one partition must not push out real early scores on another; on a tie,
        another than `partition`, the score's just read) until within it, or no orphan is left."""
        while self._orphan_count and self._orphans_over_budget():
            by_partition = self._orphan_bytes
            fullest = max(by_partition, key=lambda p: (by_partition[p], p != partition))
            self._drop_orphan(self._oldest(fullest), "the scores kept apart hold --max-held-bytes")

    def _orphans_over_budget(self) -> bool:
        return self.orphan_bytes > self._orphan_budget()

    def _orphan_budget(self) -> int:
        """What the byte budget leaves the orphans: all of it less what unscheduled scores hold, but
        at least the half those may not take (`_no_room`, `_hold_unscheduled_only`)."""
        unscheduled = self._held_bytes - self.orphan_bytes
        return self._max_held_bytes - min(unscheduled, self._unscheduled_share)

    # -- the mailbox state machine ---------------------------------------------------------

    def _expire_orphans(self, partition: int) -> None:
        """Drop orphans of `partition` whose request would have been read by now."""
        orphans = self._orphans.get(partition)
        if not orphans:
            return
        horizon = self._requests_read[partition] - self.limits.orphan_grace_ms
        while orphans and next(iter(orphans.values())).opened_at < horizon:
            self._drop_orphan(self._oldest(partition), "its request did not arrive")

    def _advance(self, mailbox: Mailbox, clock: int) -> None:
        """Answer when the schedule says so; log and close when every score is in or linger ends."""
        if not mailbox.has_request:
            return  # an orphan: its request decides (or `_expire_orphans` drops it)
        schedule = mailbox.schedule
        assert schedule is not None
        if mailbox.decision is None:
            decision = schedule.decide(mailbox.arrivals, mailbox.created_at, mailbox.deadline, clock,
                                       mailbox.request_id)
            if decision is None:
                at = schedule.next_check(mailbox.arrivals, mailbox.created_at, mailbox.deadline, clock)
                self._wake(mailbox, at, clock)
                return
            self._answer(mailbox, decision)
        log_by = mailbox.deadline + self.limits.linger_ms
        if clock > log_by:
            self._forget_the_silent(schedule, mailbox)
            self._close(mailbox)
        elif self._all_expected_in(schedule, mailbox):
            self._close(mailbox)
        else:
            self._wake(mailbox, log_by, clock)

    def _wake(self, mailbox: Mailbox, at: int, clock: int) -> None:
        if mailbox.wake_at != -1 and clock <= mailbox.wake_at <= at:
            return  # an earlier (or the same) timer is pending; it re-evaluates this mailbox
        mailbox.wake_at = at
        self.clocks.wake(mailbox.partition, at, mailbox)

    def _all_expected_in(self, schedule: Schedule, mailbox: Mailbox) -> bool:
        """Whether every model a comparison record waits for (the schedule's, and any seen
        recently) has reported; per event, so no set is built (a keys view compares with a set)."""
        arrived = mailbox.arrivals.keys()
        return arrived >= schedule.model_set and arrived >= self.live_models(self.wall_ms())

    def _forget_the_silent(self, schedule: Schedule, mailbox: Mailbox) -> None:
        """Models outside the schedule that were waited for and scored no request read (any
        request) in this request's time, to its deadline and linger, are no longer waited for,
        until they score again.

        One score under a new name (anyone who may write the scores topic, or a model retired)
        made every comparison record of the instance, on all its partitions, wait for that name
        until deadline + linger, and its requests' offsets with them, for model_ttl_s after it; a
        forged score every 25 s kept it so for good (a review). A model silent for a request's
        whole time is the silent model model_ttl_s stands for."""
        arrived, scheduled, wall = mailbox.arrivals, schedule.model_set, self.wall_ms()
        # Silent for the request's whole time: a model late for one request but scoring others
        # meanwhile (one partition lagging, a slow tail) was dropped from the records it answered
        # on time (a review: a shadow lagging on one partition lost 45% of the other's records).
        # Its scores joined to a request read, not any: one a second under an id no request has
        # (or past its record) kept a name waited for by every record for good (a review).
        since = wall - (mailbox.deadline - mailbox.created_at) - self.limits.linger_ms
        silent = [m for m in self.live_models(wall)
                  if m not in arrived and m not in scheduled and self._joined_at.get(m, since) <= since]
        for model in silent:
            self._models_seen.pop(model, None)  # the live set may be a moment older than the table
            self._joined_at.pop(model, None)
            said = self._silent_said.passes("silent")
            if said is not None:
                log.info("model %r, outside the schedule, scored no request read in the time of request %r, to "
                         "its deadline and linger: comparison records no longer wait for it until it scores again%s",
                         model[:80], mailbox.request_id[:80], said.repeated())
        if silent:
            self._live = None

    def _answer(self, mailbox: Mailbox, decision: Decision) -> None:
        if mailbox.past_due and decision.status is _TIMEOUT:
            decision = Decision(decision.status, decision.model, f"{decision.reason} ({mailbox.past_due})",
                                decision.at)
        mailbox.decision = decision
        chosen = mailbox.arrivals.get(decision.model) if decision.model else None
        record = _answer_record(mailbox.request_id, decision, mailbox.created_at, mailbox.deadline, chosen,
                                mailbox.schedule)
        mailbox.answer = record
        self.outputs.answer(mailbox, record)
        self.answered += 1
        self._count_answer(mailbox, decision)

    def _count_answer(self, mailbox: Mailbox, decision: Decision) -> None:
        status = _TEXT[decision.status]
        wall = self.wall_ms()
        metrics = self.metrics
        metrics.inc(child(m.ANSWERS, decision.model or "", status))
        metrics.observe(child(m.ANSWER_LATENCY, status), max(0, wall - mailbox.created_at) / 1000.0)
        metrics.observe(m.DEADLINE_SLACK, max(0, wall - mailbox.deadline) / 1000.0)
        if decision.status is _FALLBACK:
            metrics.inc(child(m.FALLBACKS, decision.model))
        elif decision.status is _TIMEOUT:
            metrics.inc(m.TIMEOUTS)

    def _close(self, mailbox: Mailbox) -> None:
        decision = mailbox.decision
        assert decision is not None
        created_at, decided_at = mailbox.created_at, decision.at
        observe, child_of, kept = self.metrics.observe, self._child_of, self._latency_children
        schedule = mailbox.schedule
        waits = schedule.waits_ms if schedule is not None else {}
        outputs = []
        for a in mailbox.arrivals.values():
            latency = a.at - created_at if a.at > created_at else 0
            observe(child_of(m.SCORE_LATENCY, kept, a.model, a.version), latency / 1000.0)
            # Late: after the answer, or after its model's wait, which the decision did not count
            # it past (`Schedule.decide`). By the answer alone, a champion's score past its wait but
            # before a fallback's was logged on time under a reason saying 'champion late' (a review).
            wait = waits.get(a.model) if waits else None
            late = a.at > decided_at or (wait is not None and a.at > created_at + wait)
            outputs.append({"model": a.model, "version": a.version, "score": a.score, "label": a.label,
                            "error": a.error, "latency_ms": float(latency), "compute_ms": a.compute_ms,
                            "late": late})
        record = {
            "request_id": mailbox.request_id,
            "created_at": mailbox.created_at,
            "deadline": mailbox.deadline,
            "answered_at": decision.at,
            "status": _TEXT[decision.status],
            "chosen_model": decision.model,
            "reason": decision.reason,
            "schedule": schedule.name if schedule else "",
            "schedule_version": schedule.version if schedule else 0,
            "outputs": outputs,
        }
        self.outputs.log(mailbox, record)
        self.logged += 1
        self._retire(mailbox, mailbox.answer)

    def _drop_orphan(self, mailbox: Mailbox, why: str) -> None:
        """Forget scores whose request never came (not remembered: if it comes after all, it is
        a request like any other)."""
        log.debug("dropping %d score(s) of %s: %s", len(mailbox.arrivals), mailbox.request_id, why)
        self.metrics.inc(m.ORPHAN_SCORES, len(mailbox.arrivals))
        self._release(mailbox)

    def _within_time(self, rid: str, log_time: int) -> bool:
        """Whether `rid` is a closed id whose time is not up at `log_time` (a record's append time):
        a request then is a repeat, a score a late one (`_forget_if_past` is the other side)."""
        kept = self._remembered.get(rid)
        return kept is not None and log_time <= kept[1]

    def _drop_as_late(self, orphan: Mailbox) -> None:
        """Take an orphan's scores for late ones: its request is a repeat of a closed id."""
        self._unorphan(orphan)
        for arrival in orphan.arrivals.values():
            self._count_late(arrival)
        self._release(orphan)

    def _forget_if_past(self, rid: str, log_time: int) -> None:
        """A request under a closed id whose time is up by the request's own append time is a new
        request, even while the id's scores partition is quiet (its clock alone would keep the id):
        decided on the records alone, as a new owner's scan, which reads only recent answers, decides."""
        if rid in self._remembered and not self._within_time(rid, log_time):
            self._remembered.forget(rid)

    def _retire(self, mailbox: Mailbox, answer: dict[str, Any] | None) -> None:
        mailbox.closed = True
        if mailbox.held:
            self._release(mailbox)
        del self.mailboxes[mailbox.request_id]
        self._remember(mailbox.request_id, mailbox.partition, answer, mailbox.opened_at, mailbox.inputs)

    def _remember(
        self, rid: str, partition: int, answer: dict[str, Any] | bytes | None, log_time: int, inputs: bytes | None
    ) -> None:
        """Keep a closed id (its answer, its inputs' digest) so late scores are known as late and
        a repeated request gets the same answer; bounded in time and number."""
        since = max(log_time, self.clocks.now(partition))
        self._remembered.add(rid, (partition, since + self.limits.remember_ms, answer, inputs))


def _arrival_size(arrival: Arrival) -> int:
    """The bytes a score held apart takes, estimated (its strings may be forged: up to 4 KB each)."""
    return (ARRIVAL_BYTES + getsizeof(arrival.model) + getsizeof(arrival.version) + getsizeof(arrival.label)
            + getsizeof(arrival.error))


def _answer_record(
    request_id: str, decision: Decision, created_at: int, deadline: int, chosen: Arrival | None,
    schedule: Schedule | None,
) -> dict[str, Any]:
    """The Answer record of a decision (`chosen`: the score it answers with)."""
    return {
        "request_id": request_id,
        "status": _TEXT[decision.status],
        "model": decision.model,
        "version": chosen.version if chosen else None,
        "score": chosen.score if chosen else None,
        "label": chosen.label if chosen else None,
        "reason": decision.reason,
        "created_at": created_at,
        "deadline": deadline,
        "answered_at": decision.at,
        "schedule": schedule.name if schedule else "",
        "schedule_version": schedule.version if schedule else 0,
    }


def _decoded(answer: dict[str, Any] | bytes | None) -> dict[str, Any] | None:
    """A remembered answer as a record (None if it cannot be read: no reply is better than a wrong one)."""
    if not isinstance(answer, bytes):
        return answer
    try:
        return codec("answer").decode(answer)
    except BadInput as err:
        log.warning("a remembered answer cannot be read (%s): no reply sent again", err)
        return None
