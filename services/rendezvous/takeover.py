"""Taking partitions over: which newly assigned partitions still wait for recovery, and running it.

Newly assigned partitions are paused until recovery knows what was already done on them
(services/rendezvous/recovery.py): a departed previous owner is fenced, the committed offsets and
their marks are read, the answers and log since the marks are scanned into the join; then they
are resumed at the offsets recovery used (`Consumer.resume_at`: the seek is what wakes the fetcher). Recovery
is started and finished from the poll loop (never inside a rebalance callback: the broker may still
be coming back or resolving a transaction, and the loop must keep serving the consumer), at most
once a second while it fails. What it reads from the broker (fencing, committed offsets, the scan)
runs on a thread of its own while the loop turns on: on the loop, a scan longer than the consumer's
max.poll.interval.ms (--stall-timeout-ms) left the group mid-recovery, came back lost and scanned
again, for good (a review: a 6 s limit, an 8 s scan, no request answered in 50 s).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from services.core import futures
from services.core.control_records import SEAL_HEADER
from services.core.errors import RendezvousError, TopicGone, TopicMissing, TopicRefused
from services.core.kafka import committed_offsets, kafka_error, partition_counts, partition_end
from services.core.service import Context
from services.rendezvous import metrics as m
from services.rendezvous.join import Join
from services.rendezvous.recovery import (
    Mark,
    OpenTransaction,
    Recovered,
    ScanUnreadable,
    fence,
    live_members,
    scan_finished,
    stable_marks,
    stop_if_given_up,
)
from services.rendezvous.settings import RendezvousSettings

log = logging.getLogger(__name__)

RETRY_S = 1.0
# While a transaction is still open on the outputs to scan (usually a committed one whose
# markers are being written): try again soon, it rarely lasts; after OPEN_TXN_SOON_S, every
# RETRY_S (each try starts a few short-lived clients).
OPEN_TXN_RETRY_S = 0.2
OPEN_TXN_SOON_S = 2.0
# ... and say so at WARNING every this many seconds once it has lasted that long (a crashed
# owner's transaction that could not be fenced lasts until its transaction timeout; one the
# broker left without markers lasts until someone aborts it: docs/failover.md).
OPEN_TXN_WARN_S = 5.0
# An output topic missing from the broker's answers this long is gone (deleted while serving).
GONE_AFTER_S = 10.0
MISSING_ASKED_EVERY_S = 5.0  # how often recovery asks whether an output topic it misses a partition of exists
# A transaction still open this long after the transaction timeout is no live one (the broker
# aborts those at their timeout, looking for them every 10 s): the broker left it hanging across
# a restart (docs/failover.md). If it is our producer's, a transaction of ours writing to the same
# partitions ends it: each gets a seal record (core/control_records.py), committed with our next
# commit, whose marker ends everything our producer id left open there. Committed, not aborted:
# seen here, the coordinator had recorded such a transaction as committed.
HANGING_MARGIN_S = 15.0
# Offset fetches that stay "unstable" this many times in a row fall back to the last completed
# commit. Seen after a broker restart: the pending offsets of a transaction the broker kept
# reporting unstable for minutes. The fallback is safe because the scan waits until no
# transaction is open on the outputs it reads (recovery.OpenTransaction): if the unresolved
# transaction committed, its answers are found and its requests not answered again; if it
# aborted, its offsets were not the ones to resume from anyway.
UNSTABLE_TRIES = 3
CLOSE_WAIT_S = 2.0  # how long a stopping service waits for a try out to end
JOB_LONG_S = 30.0  # a try reading the broker this long is said (and again every as long)
# ... and this long, it is stuck (a client call that never returns: each has a timeout of at most
# 15 s, a scan that reads nothing gives up after 2 min, and one of a million answers took 9 s):
# the rendezvous' /healthz fails, for the process to be restarted (`Rendezvous.liveness`).
JOB_STUCK_S = 600.0

def in_thread(work: Callable[[], _Learned]) -> Future[_Learned]:
    """A try's reading, on a thread of its own (a service stopping mid-scan does not wait for it)."""
    return futures.in_thread(work, "rdv-recovery")


@dataclass
class _Job:
    """One recovery try out: the partitions it is for, what it learns (`future`), and whether
    they were taken away meanwhile (`cancelled`: it stops at its next step, its outcome is
    dropped). What the try tells the takeover is the job's own, read on the loop once it is done:
    a dropped try's thread, still running, must not count toward a newer takeover (a review)."""

    partitions: list[TopicPartition]
    first: bool  # the try of every pending partition, not the one of the rest without the held
    fall_back: bool = False  # read the last completed commit, not the stable offsets (`_committed`)
    started: float = field(default_factory=time.monotonic)
    future: Future[_Learned] = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    offsets_timed_out: bool = False  # its stable offset fetch timed out (a transaction unresolved)

    @property
    def numbers(self) -> list[int]:
        """Its partitions' numbers, in order (requests and scores are co-partitioned)."""
        return sorted({tp.partition for tp in self.partitions})


@dataclass(frozen=True)
class _Learned:
    """What a try read from the broker: the committed offsets (the last completed commit's if
    its job fell back), the requests partitions scanned, what the scan found."""

    committed: list[TopicPartition]
    scanned: list[int]
    found: Recovered | None


class Takeover:
    """Partitions assigned but not yet recovered, and the recovery that resumes them."""

    def __init__(
        self, settings: RendezvousSettings, join: Join, start_at: Callable[[str, int, int], None] = lambda *_: None,
        background: Callable[[Callable[[], _Learned]], Future[_Learned]] = in_thread,
    ):
        """`start_at(topic, partition, offset)`: a partition of a `latest` group never read before
        starts there, a position to commit at once even if nothing is read (`_starts`).
        `background`: where a try's reading runs (a thread; at once, in tests)."""
        self.settings, self.join = settings, join
        self._start_at = start_at
        self._background = background
        self._job: _Job | None = None  # the try out, if one is
        self._job_warned = 0.0  # when a try out for long was last said
        # (topic, partition) -> its end when assigned: where `latest` starts one never committed.
        self._ends_when_assigned: dict[tuple[str, int], int] = {}
        self.topics = settings.topics()
        self._pending: list[TopicPartition] = []
        self._next_try = 0.0
        self._open_warned = 0.0  # when the open-transaction wait was last logged at WARNING
        self._waiting_warned = 0.0  # when a reason recovery waits (_loudness) was last logged at WARNING
        self._to_recommit: list[TopicPartition] = []  # offsets for our next commit (_recommit)
        self._start_over()
        # (answers or log topic, partition) -> offset below which no output of a re-read or later
        # request can be: the marks' floor until this instance delivers outputs there
        self.floors: dict[tuple[str, int], int] = {}
        # requests partition -> its end at recovery: requests below it are marked with the floors
        # for good (`Recovered.reread_ends`)
        self.reread_ends: dict[int, int] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def is_pending(self, partition: TopicPartition) -> bool:
        return any(tp.topic == partition.topic and tp.partition == partition.partition for tp in self._pending)

    def add(self, ctx: Context, partitions: list[TopicPartition]) -> None:
        """Pause new partitions: nothing is read from them until recovery knows what was done."""
        if partitions:
            ctx.consumer.pause(partitions)
            if self.settings.start_from == "latest":
                self._ends_when_assigned.update(_ends(ctx, partitions))
            self._pending.extend(partitions)
            self._next_try = 0.0
            self._start_over()

    def _start_over(self) -> None:
        """What one takeover learns while it waits, forgotten when it ends or new partitions come."""
        self._unstable = 0  # consecutive offset fetches that timed out waiting for a transaction
        self._open_since: float | None = None  # when the scan first found a transaction open
        self._fallback_said = False  # the fallback to the last completed commit was logged
        self._sealed: set[tuple[str, int]] = set()  # output partitions given a seal record
        # An output partition missing (`_why_partition_missing`): when its topics were last asked
        # about, what that said, and since when every answer since has lacked a topic.
        self._missing_asked_at = -math.inf
        self._missing_said = ""
        self._missing_since: float | None = None

    def release(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        if self._job is not None and any((tp.topic, tp.partition) in gone for tp in self._job.partitions):
            self._drop_job()
        self._pending = [tp for tp in self._pending if (tp.topic, tp.partition) not in gone]
        self._ends_when_assigned = {key: end for key, end in self._ends_when_assigned.items() if key not in gone}
        # Never commit offsets of a partition given up: it may be another member's already.
        self._to_recommit = [tp for tp in self._to_recommit if (tp.topic, tp.partition) not in gone]
        numbers = {tp.partition for tp in partitions if tp.topic == self.topics.requests}
        self.floors = {key: offset for key, offset in self.floors.items() if key[1] not in numbers}
        self.reread_ends = {p: end for p, end in self.reread_ends.items() if p not in numbers}

    def clear(self) -> None:
        self._drop_job()
        self._pending = []
        self._to_recommit = []
        self._ends_when_assigned = {}

    def close(self) -> None:
        """At the service's stop: give up the try out, and give its thread CLOSE_WAIT_S to end, so
        that its clients are closed before the process exits (its next step stops it)."""
        job = self._job
        self._drop_job()
        if job is not None:
            wait([job.future], timeout=CLOSE_WAIT_S)

    def reading_for(self) -> float:
        """How long the try out has been reading the broker (0 if none is). From any thread."""
        job = self._job
        return time.monotonic() - job.started if job is not None else 0.0

    def _drop_job(self) -> None:
        """Give up the try out: its partitions are no longer ours, or no longer pending as it
        knew them (its outcome would restore answers of partitions another member reads)."""
        if self._job is not None:
            self._job.cancelled.set()
            self._job = None
            self._next_try = 0.0

    def run_due(self, ctx: Context) -> list[TopicPartition]:
        """Recover the pending partitions, then resume them (if a try is due); returns those
        resumed. What recovery reads from the broker is learned off the poll loop (`_Job`), so the
        loop turns on meanwhile; what it learned is applied here, on the loop. Partitions whose
        outputs a transaction still holds open wait; the others are recovered without them."""
        if self._job is None:
            if not self._pending or time.monotonic() < self._next_try:
                return []
            self._next_try = time.monotonic() + RETRY_S
            self._job = self._start(ctx, list(self._pending), first=True)
        return self._collect(ctx)

    def _start(self, ctx: Context, partitions: list[TopicPartition], first: bool) -> _Job:
        job = _Job(partitions, first, fall_back=self._unstable >= UNSTABLE_TRIES)
        if job.fall_back and not self._fallback_said:  # once per takeover: the wait may retry for long
            self._fallback_said = True
            log.warning("committed offsets stayed unstable %d times (a transaction the broker has not "
                        "resolved): resuming from the last completed commit", self._unstable)
        job.future = self._background(lambda: self._learn(ctx, job))
        return job

    def _say_if_long(self, job: _Job) -> None:
        """A try still out after JOB_LONG_S is said every JOB_LONG_S: its partitions stay paused
        (a client call that never returns would hold them for good, the loop turning on)."""
        now = time.monotonic()
        if now - job.started >= JOB_LONG_S and now - self._job_warned >= JOB_LONG_S:
            self._job_warned = now
            log.warning("recovery of partitions %s has been reading the broker for %.0f s; they stay paused "
                        "until it is done", job.numbers, now - job.started)

    def _collect(self, ctx: Context) -> list[TopicPartition]:
        """What the job out learned, once it is done: applied (its partitions resumed), or its
        wait handled as before the loop stopped waiting for it."""
        job = self._job
        if job is None:
            return []
        if not job.future.done():
            self._say_if_long(job)
            return []
        self._job = None
        if job.offsets_timed_out:
            self._unstable += 1
        try:
            return self._attempt(ctx, job)
        except (OpenTransaction, ScanUnreadable) as exc:
            if not job.first:
                log.debug("recovery of the rest waits too: %s", exc)
                return []
            if isinstance(exc, OpenTransaction):
                due = self._wait_for_transaction(exc)
                if due:
                    self._seal(ctx, due, exc.fallen_back_to)
                held = {partition for _topic, partition in exc.partitions}
            else:  # the broker is fine; retried every RETRY_S
                log.log(self._loudness(), "recovery of partition %d waits: %s", exc.partition, exc)
                held = {exc.partition}
                self._pace()
        # Another try without the partitions held (a transaction open or hanging on their outputs,
        # an output not readable yet): they must not keep every other one paused.
        rest = [tp for tp in job.partitions if tp.partition not in held]
        if rest and len(rest) < len(job.partitions):
            self._job = self._start(ctx, rest, first=False)
            return self._collect(ctx)
        return []

    def _attempt(self, ctx: Context, job: _Job) -> list[TopicPartition]:
        """Apply what the job learned: its partitions, resumed; none while the broker is away."""
        try:
            self._apply(ctx, job, job.future.result())
            self._missing_since = None
            log.info("recovered partitions %s in %.1f s", job.numbers,
                     time.monotonic() - job.started)
            return job.partitions
        except (OpenTransaction, ScanUnreadable):
            raise  # RendezvousErrors too, but the broker is fine: the caller waits for them
        except (KafkaException, RendezvousError) as exc:
            if isinstance(exc, KafkaException) and _code_of(exc) == KafkaError._UNKNOWN_PARTITION:
                # The broker is fine: requests grew and an output topic did not (yet), retried every
                # RETRY_S; or one was deleted, and the service stops (`_missing_outputs`).
                log.log(self._loudness(), "recovery of %s waits: %s", job.numbers,
                        self._why_partition_missing(ctx))
                self._pace()
                return []
            self._missing_since = None
            ctx.health.mark_down()
            log.warning("recovery waiting for the broker: %s", exc)
            self._pace()
            return []

    def _pace(self) -> None:
        """The next try RETRY_S after a failed one ended, not after it started: a try off the loop
        that took longer was followed at once by the next (a review: full scans back to back)."""
        self._next_try = max(self._next_try, time.monotonic() + RETRY_S)

    def _why_partition_missing(self, ctx: Context) -> str:
        """`_missing_outputs`, asked every MISSING_ASKED_EVERY_S (an admin client each time, on the
        poll loop); what it said last between. On a timer of its own: on the warnings' one, shared
        with other waits, another partition's unreadable scan kept it from ever being asked (a review)."""
        now = time.monotonic()
        if now - self._missing_asked_at >= MISSING_ASKED_EVERY_S:
            self._missing_asked_at = now
            self._missing_said = self._missing_outputs(ctx)
        return self._missing_said

    def _missing_outputs(self, ctx: Context) -> str:
        """Why an output partition recovery reads does not exist: it has fewer partitions than the
        requests. TopicGone if the topic is gone, as GONE_AFTER_S of answers say: checked at start,
        it was deleted while serving, and the service stops, as a worker does and as its restart
        refuses to start; waiting for it, the rendezvous stalled for good, /readyz 503 (a review).
        Not at the first answer: a broker's metadata can lag a topic made (a review). ('grow them
        together' sent a review looking at partition counts for a topic that was gone.)"""
        try:
            partition_counts(ctx.config, [self.topics.answers, self.topics.log], timeout=5.0)
        except TopicRefused:
            raise  # its grant revoked while serving: said so, and stopped as at start
        except TopicMissing as err:
            # Missing in every answer since `since` (any other outcome of a try between, or a new
            # takeover, starts it over: a review stopped one on an absence an hour old).
            now = time.monotonic()
            since = self._missing_since = now if self._missing_since is None else self._missing_since
            if now - since >= GONE_AFTER_S:
                raise TopicGone(f"{err} (deleted while serving?)") from None
            return f"{err} (deleted while serving? the rendezvous stops if it is still missing {GONE_AFTER_S:.0f} s on)"
        except RendezvousError as err:
            self._missing_since = None
            return f"an output partition it reads does not exist, and the topics could not be listed ({err})"
        self._missing_since = None
        return ("an output partition it reads does not exist; answers and log must have as many partitions as "
                "requests: grow them together (docs/helm.md)")

    def _loudness(self) -> int:
        """WARNING for a wait's reason once every OPEN_TXN_WARN_S, DEBUG for the tries between."""
        now = time.monotonic()
        loud = now - self._waiting_warned >= OPEN_TXN_WARN_S
        self._waiting_warned = now if loud else self._waiting_warned
        return logging.WARNING if loud else logging.DEBUG

    def _learn(self, ctx: Context, job: _Job) -> _Learned:
        """What was done for the job's partitions' re-read requests, read from the broker, on the
        job's thread (only `ctx.config`: clients of its own); OpenTransaction (with
        `fallen_back_to`) while a transaction holds their outputs open. Each step first asks
        whether the job was given up; the scan asks as it reads."""
        committed: list[TopicPartition] = []
        partitions, numbers, cancelled = job.partitions, job.numbers, job.cancelled.is_set
        # Not inside health.blocking (which the loop's waits use): a job given up, still in a
        # call to a slow broker, kept /readyz at "broker unreachable" after the partitions had
        # been recovered by the next one (a review). A job failing on the broker marks it down.
        try:
            stop_if_given_up(cancelled, numbers)
            self._fence_departed(ctx, [tp for tp in partitions if tp.topic == self.topics.requests], cancelled)
            stop_if_given_up(cancelled, numbers)
            committed = self._committed(ctx, job)
            marks = {tp.partition: (tp.offset, Mark.decode(tp.metadata)) for tp in committed
                     if tp.topic == self.topics.requests}
            found = None
            if marks:
                stop_if_given_up(cancelled, numbers)
                margin = int(self.settings.recovery_margin_s * 1000)
                found = scan_finished(ctx.config, self.topics, marks, margin, self.join.limits.remember_ms,
                                      cancelled)
        except OpenTransaction as exc:
            exc.fallen_back_to = committed if job.fall_back else []
            raise
        return _Learned(committed, list(marks), found)

    def _apply(self, ctx: Context, job: _Job, learned: _Learned) -> None:
        """Restore what `_learn` found into the join, then resume the partitions where it says."""
        if learned.found is not None:
            self.join.restore(learned.found.finished)
            self.floors.update(learned.found.floors)
            for partition in learned.scanned:  # what this scan found replaces what an earlier one did
                self.reread_ends.pop(partition, None)
            self.reread_ends.update(learned.found.reread_ends)
        done = {(tp.topic, tp.partition) for tp in job.partitions}
        self._pending = [tp for tp in self._pending if (tp.topic, tp.partition) not in done]
        if not self._pending:
            self._start_over()
        if job.fall_back:
            self._recommit(learned.committed)
        for start, refusal in ctx.consumer.resume_at(job.partitions, self._starts(learned.committed)):
            # After the fallback the consumer's own offset fetch waits on the same unresolved
            # transaction and would never start its partitions: the seek starts them if
            # librdkafka takes it (it refuses while that fetch is out: _STATE, seen with a
            # transaction left hanging by a broker restart, docs/failover.md); otherwise the
            # fetch returns once our commit of the same offsets (`_recommit`) has ended it.
            log.log(logging.WARNING if job.fall_back else logging.DEBUG, "cannot position %s[%d] at %d: %s",
                    start.topic, start.partition, start.offset, refusal)
        ctx.health.mark_up()

    def _wait_for_transaction(self, exc: OpenTransaction) -> list[tuple[str, int]]:
        """The broker is fine; an output partition is not stable yet. Try again soon, and log
        it at WARNING only once it lasts. Returns the partitions to seal now: those open for
        longer than any live transaction can be, not sealed yet in this takeover."""
        now = time.monotonic()
        if self._open_since is None:
            self._open_since = now
        waited = now - self._open_since
        self._next_try = now + (OPEN_TXN_RETRY_S if waited < OPEN_TXN_SOON_S else RETRY_S)
        loud = waited >= OPEN_TXN_WARN_S and now - self._open_warned >= OPEN_TXN_WARN_S
        if loud:
            self._open_warned = now
        log.log(logging.WARNING if loud else logging.DEBUG, "%s (%.1fs so far)", exc, waited)
        hanging_after = self.settings.transaction_timeout_ms / 1000 + HANGING_MARGIN_S
        if waited < hanging_after or self.settings.processing != "exactly-once":
            return []
        due = [tp for tp in exc.partitions if tp not in self._sealed]
        self._sealed.update(due)
        return due

    def _seal(self, ctx: Context, partitions: list[tuple[str, int]], fallen_back_to: list[TopicPartition]) -> None:
        """Write a seal record to each partition in our open transaction (committed by the next
        commit): if the hanging transaction is our producer's, that commit ends it. When the
        group's offsets stayed unstable too (`fallen_back_to`: the last completed commit), the
        same commit re-commits those offsets, so it ends what is open on the offsets as well."""
        self._recommit(fallen_back_to)
        for topic, partition in partitions:
            ctx.outputs.produce(topic, None, partition=partition, headers=[(SEAL_HEADER, b"")])
            m.HANGING_SEALS.labels(topic).inc()
        log.warning("a transaction has stayed open on %s far beyond the transaction timeout: the broker left it "
                    "hanging. Writing a seal record there; our next commit ends it if it is our producer's "
                    "(if not, it stays: docs/failover.md)",
                    ", ".join(f"{topic}[{partition}]" for topic, partition in partitions))

    def _recommit(self, fallen_back_to: list[TopicPartition]) -> None:
        """Hand the last completed commit's offsets (with their marks) to our next commit.

        After the fallback the group's offsets partition holds a transaction nobody resolved;
        if it is our producer's (left hanging by a broker restart), our commit's marker ends it
        and the consumer's own offset fetch, waiting on it, returns. Safe whoever's it is: the
        positions are where recovery resumes anyway, and every answer of a request they make us
        read again was found by the scan, which waited for the answers to be stable."""
        if self.settings.processing != "exactly-once":
            return  # no transaction of ours to end anything with
        added = [tp for tp in fallen_back_to if tp.offset >= 0]
        # Added to (keyed by partition): partitions recovered apart may each fall back.
        recommit = {(tp.topic, tp.partition): tp for tp in [*self._to_recommit, *added]}
        self._to_recommit = list(recommit.values())
        if added:
            log.info("re-committing the last completed commit's offsets in our next transaction: its marker "
                     "ends a transaction left open on the group's offsets, if it is our producer's")

    def take_offsets_to_recommit(self, moving: set[tuple[str, int]]) -> list[TopicPartition]:
        """Offsets for the next commit (once), except of partitions whose position moved since."""
        offsets, self._to_recommit = self._to_recommit, []
        return [tp for tp in offsets if (tp.topic, tp.partition) not in moving]

    def _starts(self, committed: list[TopicPartition]) -> list[TopicPartition]:
        """Where each partition is read from: the committed offset recovery used, else where a new
        group starts. With `latest` that is the end when the partition was assigned (the end now
        would skip what arrived during recovery), and `start_at` has it committed at once (a
        transaction requested on the loop's next pass) whether or not anything was read:
        a partition that had no record yet was never committed, and whatever came to it while
        its owner was away was skipped by the next owner's `latest` (a failover review)."""
        starts = []
        for tp in committed:
            if tp.offset >= 0:
                starts.append(_at(tp))
            elif self.settings.start_from == "earliest":
                starts.append(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))
            else:
                end = self._ends_when_assigned.pop((tp.topic, tp.partition), None)
                if end is not None:  # else left to the consumer, which found the end when assigned
                    starts.append(TopicPartition(tp.topic, tp.partition, end))
                    self._start_at(tp.topic, tp.partition, end)
        return starts

    def _committed(self, ctx: Context, job: _Job) -> list[TopicPartition]:
        """The group's committed offsets of the job's partitions: stable ones, or after
        UNSTABLE_TRIES timed-out fetches in a row (`job.fall_back`) the last completed commit."""
        group = self.settings.group_id()
        if job.fall_back:
            return committed_offsets(ctx.config, group, job.partitions, stable=False)
        try:
            return committed_offsets(ctx.config, group, job.partitions, stable=True)
        except KafkaException as exc:
            if _code_of(exc) == KafkaError._TIMED_OUT:
                job.offsets_timed_out = True  # counted on the loop, for the current job only
            raise

    def _fence_departed(self, ctx: Context, requests: list[TopicPartition],
                        cancelled: Callable[[], bool] = lambda: False) -> None:
        """End the open transaction of a previous owner that is gone (crashed), so reading the
        committed offsets and its outputs need not wait for the broker to time that transaction
        out. A previous owner still in the group is alive and left nothing open: never fenced.

        Before the committed offsets: a read_committed offset fetch waits for exactly that open
        transaction, so whom to fence is read from the last completed commit (`stable_marks`)."""
        if not requests or self.settings.processing != "exactly-once":
            return
        ours = self.settings.transactional_id()
        try:
            marks = stable_marks(ctx.config, self.settings.group_id(), requests)
        except KafkaException as exc:
            log.info("cannot tell whom to fence (%s): a departed owner's transaction ends at its timeout", exc)
            return
        previous = {mark.txn for mark in marks.values() if mark is not None and mark.txn} - {ours}
        if not previous:
            return
        members = live_members(ctx.config, self.settings.group_id())
        if members is None:
            return  # unknown: its transaction, if any, ends at its timeout instead
        for txn in sorted(previous - members):
            stop_if_given_up(cancelled, {tp.partition for tp in requests})
            if fence(ctx.config, txn):
                log.info("fenced %s, the previous owner's transactional id (no longer in the group)", txn)


def _ends(ctx: Context, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
    """Each partition's end offset now (those the broker does not tell are left out)."""
    ends = {}
    for tp in partitions:
        try:
            ends[(tp.topic, tp.partition)] = partition_end(ctx.consumer.native, tp)
        except KafkaException as exc:
            log.warning("cannot read the end of %s[%d] (%s): the consumer finds it", tp.topic, tp.partition, exc)
    return ends


def _code_of(exc: KafkaException) -> int | None:
    err = kafka_error(exc)
    return err.code() if err is not None else None


def _at(committed: TopicPartition) -> TopicPartition:
    """The committed position, with its leader epoch when it has one (librdkafka then checks the
    offset against the log, as it does for a committed offset it fetched itself)."""
    if committed.leader_epoch is None:
        return TopicPartition(committed.topic, committed.partition, committed.offset)
    return TopicPartition(committed.topic, committed.partition, committed.offset, leader_epoch=committed.leader_epoch)
