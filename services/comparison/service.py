"""The live comparison service: read the comparison log, keep a sliding window, export metrics.

Per batch: decode each Comparison record once (an undecodable or implausible one is
dead-lettered and counted; it never stops the service), fold it into the lifetime counters,
the champion tracker, the frozen "self" references and the event-time window. A large batch of
valid records is decoded and folded all at once, with numpy (fold.py: the same result, a
fraction of the CPU); any other batch record by record. Every
`export_interval_s` the window is merged and the gauges are rebuilt (metrics.py).

Commit order: every record read is finished when its batch returns, and this service produces
nothing but dead letters. The shared skeleton (services/core/service.py) commits, at most every
`commit_interval_ms`, off the poll loop (and when partitions are revoked, and at shutdown): it
flushes the dead letters, then commits the positions after the last records handled.
After a restart the window starts empty from the committed position (the gauges fill again
within one window); so it does when this instance re-reads from there (a rewind, partitions lost
uncommitted), or it would count the records since twice. Counters are process-lifetime, as
Prometheus expects of counters.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from math import isfinite
from typing import Any, cast

from confluent_kafka import KafkaException, Message, TopicPartition

from services.comparison import fold, kernels
from services.comparison import metrics as m
from services.comparison.settings import ComparisonSettings
from services.comparison.window import ChampionTracker, References, SlidingWindow
from services.control.follower import ScheduleFollower
from services.core.codec import codec
from services.core.compiled_decode import CurrentBatches, warm_up
from services.core.control_records import is_control_record
from services.core.deadletter import DeadLetters
from services.core.errors import BadInput, DecodeFailed, RendezvousError, UnexpectedFailure
from services.core.kafka import partition_counts
from services.core.metrics import DECODE_ERRORS
from services.core.runtime import EARLIEST_PLAUSIBLE_MS, EARLIEST_PLAUSIBLE_YEAR, now_ms
from services.core.service import Context, Probed, SimpleHandler, StreamService, StreamSpec
from services.stats.deadline import met_deadline

log = logging.getLogger(__name__)

SERVICE = "comparison"
# Outputs (a model's part of a record): the raw values kept between compactions, a few MB. Counted
# by records, a log of 300 models a record held 3 million values (~280 MB) before one (a review).
COMPACT_EVERY = 30_000
# A model name with fewer outputs than this share of the champion's scores almost none of the requests
# (every model scores every request): while another name waits for a place, it gives its own.
SPARSE_SHARE = 0.01


def validate(record: dict[str, Any], latest_ok_ms: int) -> None:
    """Checks Avro cannot express; a failure dead-letters the record."""
    created = record["created_at"]
    if created < EARLIEST_PLAUSIBLE_MS:  # `rendezvous compare` leaves these out too
        raise DecodeFailed(f"created_at must be epoch milliseconds since {EARLIEST_PLAUSIBLE_YEAR}, got {created}")
    if created > latest_ok_ms:
        # One such record would move the event-time window's end and expire everything else.
        raise DecodeFailed(f"created_at {created} is in the future (this host's clock allows {latest_ok_ms})")
    if record["deadline"] < 0:  # deadline - created_at would wrap in the batch path's int64s
        raise DecodeFailed(f"deadline must be epoch milliseconds, got {record['deadline']}")
    seen: set[str] = set()
    for out in record["outputs"]:
        # Not finite: it would poison the latency sketch. Negative: no model answers before it is
        # asked (the rendezvous writes at least 0), and it would count as a deadline met.
        if not isfinite(out["latency_ms"]) or out["latency_ms"] < 0:
            raise DecodeFailed(f"output of {out['model']!r} has latency_ms {out['latency_ms']}")
        if out["model"] in seen:  # each copy would count as a pair (comparison_columns.repeating_a_model)
            raise DecodeFailed(f"model {out['model'][:100]!r} has more than one output in the record")
        seen.add(out["model"])


class ComparisonService(SimpleHandler, Probed):
    """One comparison instance; `run(stop)` until the flag is set."""

    def __init__(self, settings: ComparisonSettings):
        super().__init__()
        self.settings = settings
        self.topics = settings.topics()
        self.processed = 0
        self._schedules: ScheduleFollower | None = None  # followed from `run`, unless --champion
        self._start_empty()
        self._labels = m.LabelBudget(settings.max_models, (settings.champion, settings.canary))
        self._touched: set[tuple[str, str]] = set()
        self._last_output: dict[tuple[str, str], float] = {}  # series labels -> when last counted (monotonic)
        self._counted_to: dict[int, int] = {}  # partition -> the offset its counters counted up to, when re-read
        self._series: dict[tuple[str, str], tuple[str, str]] = {}  # raw (model, version) -> labels
        self._codec = codec("comparison")
        self._batches = CurrentBatches(self._codec)
        self._export_every = settings.export_interval_s
        self._next_export = time.monotonic() + self._export_every
        self._dead: DeadLetters | None = None
        self._uncompacted = 0  # outputs folded since the window was last compacted
        self.service = StreamService(StreamSpec(
            name=SERVICE, config=settings.librdkafka(), subscription=[self.topics.log],
            group_id=settings.group_id(), processing="at-least-once",
            commit_interval_ms=settings.commit_interval_ms, max_batch=settings.max_batch, max_wait_s=0.2,
            connect_timeout_s=settings.connect_timeout_s,
            # The rendezvous writes the log in transactions: an aborted record was never logged.
            consumer_config={"auto.offset.reset": settings.start_from, "isolation.level": "read_committed"},
            outputs=(self.topics.deadletter,),
            records={self.topics.log: "comparison"},
        ), self)
        self.ready = self.service.ready

    def run(self, stop: threading.Event) -> None:
        partition_counts(self.settings.librdkafka(), [self.topics.log, self.topics.deadletter],
                         timeout=self.settings.connect_timeout_s)
        if self._batches.usable:
            # The compiled loops, loaded (or compiled) before the first batch; after the check,
            # which says at once when no broker answers (compiled first, with a cold cache, 10 s later).
            warm_up()
            kernels.warm_up()
        log.info("comparison reading %s (window %gs in %d buckets)", self.topics.log,
                 self.settings.window_s, self.settings.buckets)
        with contextlib.ExitStack() as closing:
            if not self.settings.champion:
                self._schedules = self._follow_schedule()
                if self._schedules is not None:
                    closing.callback(self._schedules.close)
            self.service.run(stop)
            self.export()
        log.info("comparison stopping after %d records", self.processed)

    def _follow_schedule(self) -> ScheduleFollower | None:
        """The schedule whose preferred model is the champion; None (the champion then inferred
        from OK answers, and said) when the control topic cannot be read."""
        name = self.settings.schedule_name
        try:
            return ScheduleFollower(self.settings.librdkafka(), self.topics.control, name)
        except (RendezvousError, KafkaException) as err:
            log.warning("cannot follow schedule %s on %s (%s): the champion is the chosen model of the latest OK "
                        "answer instead", name, self.topics.control, err)
            return None

    def _preferred(self) -> str | None:
        """The preferred model of the schedule in force, kept a label place of its own (None: no
        schedule followed, or none in force yet)."""
        schedule = self._schedules.in_force() if self._schedules is not None else None
        if schedule is None:
            return None
        champion = schedule.models[0]
        self._labels.reserve_champion(champion)
        return champion

    def start(self, ctx: Context) -> None:
        super().start(ctx)
        assert ctx.producer is not None
        self._dead = DeadLetters.for_topic(ctx.outputs, ctx.config, self.topics.deadletter, SERVICE,
                                           known=ctx.producer.topic_limit(self.topics.deadletter),
                                           sources=ctx.spec.subscription)

    def _start_empty(self) -> None:
        """The window and what it learnt, as at start (then filled from the committed offsets)."""
        settings = self.settings
        self.window = SlidingWindow(settings.bucket_ms(), settings.buckets)
        self.champion = ChampionTracker(settings.champion, self._preferred)
        self.references = References(settings.reference_size)

    # -- the poll loop's handler -----------------------------------------------------------

    def on_rewind(self) -> None:
        """Re-read from the committed offsets (a lost output voided the work since): folded
        again, the records since would count twice, so the window starts empty, as at start,
        and the counters skip what they counted already (`_counted_to`)."""
        self._remember_counted()
        super().on_rewind()
        self._start_empty()
        log.warning("comparison window emptied: re-reading %s from the committed offsets", self.topics.log)

    def on_released(self, partitions: list[TopicPartition], lost: bool) -> None:
        # Read past what was committed (lost, or revoked when the revoke's commit failed: the
        # skeleton goes on): given back to this instance, they are read again from the committed
        # offset, and were counted twice (a coordinator failover with one instance, a review).
        uncommitted = lost or self._read_past_committed(partitions)
        if uncommitted:
            self._remember_counted()
        super().on_released(partitions, lost)
        if uncommitted:
            self._start_empty()
            log.warning("comparison window emptied: partitions given up uncommitted are read again by their next "
                        "owner")

    def _read_past_committed(self, partitions: list[TopicPartition]) -> bool:
        released = {(tp.topic, tp.partition) for tp in partitions}
        return any((tp.topic, tp.partition) in released for tp in self.positions.finished())

    def _remember_counted(self) -> None:
        for (_topic, partition), next_offset in self.positions.read_to().items():
            self._counted_to[partition] = max(next_offset, self._counted_to.get(partition, 0))

    def _read_again(self, records: list[Message]) -> tuple[list[Message], list[Message]]:
        """(records whose counters were incremented before a rewind or a loss, the others); a
        partition read past where it was is forgotten. Only after one of those: the lifetime
        counters counted the re-read records twice (a review), the window does not."""
        counted_to = self._counted_to
        again: list[Message] = []
        fresh: list[Message] = []
        for msg in records:
            (again if (msg.offset() or 0) < counted_to.get(msg.partition() or 0, -1) else fresh).append(msg)
        for msg in records:
            if (msg.offset() or 0) >= counted_to.get(msg.partition() or 0, 1 << 62) - 1:
                del counted_to[msg.partition() or 0]  # read up to where it was: counted from here on
        return again, fresh

    def next_wakeup(self) -> float:
        return max(0.0, self._next_export - time.monotonic())

    def on_batch(self, messages: list[Message]) -> None:
        if not messages:
            return
        latest_ok = now_ms() + self.settings.future_tolerance_ms()
        self.champion.refresh()
        records, values = messages, list(map(Message.value, messages))
        if None in values:  # seals carry no comparison; only a null value can be one
            records = [msg for msg in messages if msg.value() is not None or not is_control_record(msg)]
            values = [msg.value() for msg in records]
        folded, rejected, outputs = len(records), 0, 0
        if self._counted_to:
            again, records = self._read_again(records)
            if again:  # into the window only: the counters counted them when they were first read
                again_tally, again_rejected = self._fold(again, [msg.value() for msg in again], latest_ok,
                                                         counted=True)
                rejected += again_rejected
                outputs += sum(again_tally.outputs.values())
                values = [msg.value() for msg in records]
        tally, rejected_now = self._fold(records, values, latest_ok)
        # A champion counted as '_other' has no series of its own to miss in. A reserved one has,
        # before its first output too: --champion X restarted during X's outage dropped every miss.
        labelled = self._labels.labelled
        tally.absent = Counter({name: n for name, n in tally.absent.items() if name in labelled})
        tally.apply()
        now = time.monotonic()
        for pair, _outcome, _met in tally.outputs:
            self._last_output[pair] = now
        self._compact_now_and_then(outputs + sum(tally.outputs.values()))
        self.processed += folded - rejected - rejected_now
        self.positions.advance(messages)

    def _fold(
        self, records: list[Message], values: list[bytes | None], latest_ok: int, counted: bool = False
    ) -> tuple[m.Tally, int]:
        """`records` (their `values`) folded in at once, or else one by one: their counter
        increments, and how many were rejected (`counted`: read before, their rejections too)."""
        tally = self._fold_at_once(values, latest_ok)
        if tally is not None:
            return tally, 0
        tally = m.Tally()
        return tally, self._fold_each(records, latest_ok, tally, counted)

    def _compact_now_and_then(self, outputs: int) -> None:
        """Fold the window's raw values into its sketches every COMPACT_EVERY outputs: the sketch
        and paired-sum calls cost per call, so larger lists are cheaper per value; a view of the
        window (`export`) compacts whatever is left first."""
        self._uncompacted += outputs
        if self._uncompacted >= COMPACT_EVERY:
            self.window.compact()
            self._uncompacted = 0

    def _fold_at_once(self, values: list[bytes | None], latest_ok: int) -> m.Tally | None:
        """A large batch of valid current-schema records, decoded and folded in at once (fold.py),
        and its counter increments; None (nothing done) for any other batch: the record path
        decodes, checks and rejects one by one."""
        if len(values) < fold.MIN_RECORDS or not self._batches.usable or None in values:
            return None
        batch = self._batches.decode(cast(list[bytes], values))  # None if one has an older schema
        if batch is None or not fold.valid(batch, latest_ok):
            return None
        tally = m.Tally()
        try:
            fold.fold(batch, self._series_labels, self._labels.chosen, self.champion, self.references,
                      self.window, tally, self._labels.labelled)  # fmt: skip
        # A valid batch never fails here; if a bug makes one, the record path takes the batch and
        # nothing stops (the counters count it once; the window may hold what was folded before).
        except Exception:
            log.exception("folding a batch of %d records at once failed; folding them one by one", len(values))
            return None
        return tally

    def _fold_each(self, messages: list[Message], latest_ok: int, tally: m.Tally, counted: bool = False) -> int:
        """Decode, check and fold one record at a time; returns how many were rejected."""
        decode = self._codec.decode
        rejected = 0
        for msg in messages:
            try:
                record = decode(msg.value())
                validate(record, latest_ok)
            except BadInput as err:
                self._reject(msg, err, counted)
                rejected += 1
                continue
            try:
                self.observe(record, tally)
            # One record must never stop the service: dead-letter whatever it made fail, go on.
            except Exception as exc:
                log.exception("unexpected failure on %s[%s]@%s", msg.topic(), msg.partition(), msg.offset())
                self._reject(msg, UnexpectedFailure(f"processing failed: {type(exc).__name__}: {exc}"), counted)
                rejected += 1
        return rejected

    def on_tick(self) -> None:
        if time.monotonic() >= self._next_export:
            self.export()

    # -- records ---------------------------------------------------------------------------

    def observe(self, record: dict[str, Any], tally: m.Tally) -> None:
        """Fold one decoded, valid record into counters, champion, references and window.

        Model and version names are replaced by their label values first (`LabelBudget`), so
        every aggregate below is bounded by the label budget too.
        """
        series = self._series
        counts = tally.outputs
        references = self.references
        frozen = references.frozen
        budget = record["deadline"] - record["created_at"]
        for out in record["outputs"]:
            raw = (out["model"], out["version"])
            labels = series.get(raw)
            if labels is None:
                labels = self._admit(raw)
            model = out["model"] = labels[0]
            if out["error"] is None:
                met = met_deadline(None, out["score"], out["latency_ms"], budget)
                key = (labels, "late" if out["late"] else "ok", met)
                if model not in frozen:
                    references.add(model, out["score"])
            else:
                key = (labels, "error", False)
            counts[key] = counts.get(key, 0) + 1
        chosen = record["chosen_model"]
        if chosen:
            record["chosen_model"] = self._labels.chosen(chosen)
        tally.answers[record["status"]] += 1
        tally.records += 1
        champion = self.champion.observe(record)
        if champion and record["status"] != "ERROR" and all(out["model"] != champion for out in record["outputs"]):
            tally.absent[champion] += 1
        if not self.window.add(record, champion):
            tally.stale += 1

    def _series_labels(self, model: str, version: str) -> tuple[str, str]:
        labels = self._series.get((model, version))
        return labels if labels is not None else self._admit((model, version))

    def _admit(self, raw: tuple[str, str]) -> tuple[str, str]:
        """Label values of a (model, version) seen for the first time; its counters start at 0."""
        model = self._labels.model(raw[0])
        labels = (model, self._labels.version(model, raw[1]))
        if labels not in self._touched:
            self._touched.add(labels)
            m.touch_model(*labels)
        # A flood of names takes the slow path, and so does a name too long to be a label: kept as
        # a key, 3,200 names of 200 kB (anyone may write the log) held 640 MB for good (a review).
        if len(self._series) < 64 * self.settings.max_models and max(map(len, raw)) <= m.MAX_LABEL_CHARS:
            self._series[raw] = labels
        return labels

    def _reject(self, msg: Message, err: BadInput, counted: bool = False) -> None:
        """Dead-letter `msg` (again, when read again: the letter may have been lost with the
        position), counted once (`counted`: it was, when first read; a review)."""
        assert self._dead is not None
        if not counted:
            DECODE_ERRORS.labels(SERVICE, msg.topic(), type(err).__name__).inc()
        self._dead.send(msg, err)

    # -- export ----------------------------------------------------------------------------

    def export(self) -> None:
        """Recompute every window gauge and publish them together."""
        started = time.monotonic()
        self._next_export = started + self._export_every
        self._give_back_idle_labels()
        view = self.window.view()
        # Names given back their places (`_give_back_idle_labels`: sparse ones) are still in the
        # window under their own names: exported so, each export added a new lot of them, 2,835
        # names against --max-models 50 under forged records (a review). Counted as '_other' now.
        view.totals.fold_into(m.OTHER, self._labels.admitted | {m.OTHER})
        try:
            samples = m.window_samples(view, self.champion.current, self.references.frozen,
                                       {name: self.references.count(name) for name in self._labels_seen()},
                                       canary=self.settings.canary or None)
        # What the window holds came from the log (anyone may write it): a figure it cannot be
        # computed from leaves the last published ones, said and counted, never the service's end.
        except Exception:
            m.EXPORT_FAILURES.inc()
            log.exception("the window's figures could not be computed; the last published ones stay")
            return
        m.WINDOW.publish(samples)
        log.debug("exported the window in %.1f ms", (time.monotonic() - started) * 1000)

    def _give_back_idle_labels(self) -> None:
        """With the label budget full, the names no longer in the window give their places back:
        their series and references go, and names counted as 'other' meanwhile are labelled
        afresh. So do, while a name waits for a place, names with fewer outputs in the window than
        SPARSE_SHARE of the champion's: every model scores every request the champion does, and
        forged records naming 50 models every two minutes kept them in the window, a new
        challenger counted as '_other' for good (a review). Measured against the champion's
        outputs, not the records anyone may write, and the champion never gives its own. Done at
        an export, where the record path and the batch fold hold the same state."""
        self._give_back_idle_versions()
        if not self._labels.full:
            return
        outputs = self.window.outputs_by_model()
        # Never the champion's, nor a reserved name's (given by flag, or the schedule's champion):
        # silent for a window (an outage), it gave its place back, its missed count went to 0 and
        # later misses were dropped (a review). Champions of earlier schedules are reserved no more.
        idle = set(self._labels.admitted - outputs.keys() - self._labels.reserved - {self.champion.current})
        if not idle and self._labels.wanted:
            idle = self._sparse_names(outputs)
        if not idle:
            return
        self._labels.forget(idle)
        for raw, labels in list(self._series.items()):
            if labels[0] in idle or labels[0] == m.OTHER or labels[1] == m.OTHER:
                del self._series[raw]
        gone = {pair for pair in self._touched if pair[0] in idle}
        self._touched -= gone
        for pair in gone:
            self._last_output.pop(pair, None)
        for model, version in gone:
            m.forget_series(model, version)
        for model in idle:
            self.references.forget(model)
        log.info("the label budget (--max-models %d) was full: %d model name(s) no longer in the window, or with "
                 "under %.0f%% of its records while another waited, gave their places back", self.settings.max_models,
                 len(idle), SPARSE_SHARE * 100)

    def _sparse_names(self, outputs: dict[str, int]) -> set[str]:
        """Admitted names with fewer `outputs` in the window than SPARSE_SHARE of the champion's
        (none while no champion is known)."""
        champion = self.champion.current
        least = SPARSE_SHARE * outputs.get(champion, 0) if champion else 0
        return {name for name in self._labels.admitted - self._labels.reserved - {champion}
                if outputs.get(name, 0) < least}

    def _give_back_idle_versions(self) -> None:
        """With the version budget full, versions without an output for a whole window give their
        places back, those of models still running too: a model deployed version after version
        took a place per version for good, and its later ones were counted as 'other' (a review)."""
        if not self._labels.versions_full:
            return
        idle_since = time.monotonic() - self.settings.window_s
        idle = {pair for pair, at in self._last_output.items() if at < idle_since and pair[1] != m.OTHER}
        if not idle:
            return
        self._labels.forget_versions(idle)
        models = {model for model, _version in idle}
        for raw, labels in list(self._series.items()):
            if labels in idle or (labels[0] in models and labels[1] == m.OTHER):
                del self._series[raw]  # labelled afresh: a version counted as 'other' may now have a place
        for pair in idle:
            del self._last_output[pair]
            self._touched.discard(pair)
            m.forget_version_series(*pair)
        log.info("the version budget (4 x --max-models %d) was full: %d version(s) without an output for %s s "
                 "gave their places back", self.settings.max_models, len(idle), self.settings.window_s)

    def _labels_seen(self) -> set[str]:
        return {model for model, _version in self._touched}
