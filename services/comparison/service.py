"""The live comparison service: read the comparison log, keep a sliding window, export metrics.

Per batch: decode each Comparison record once (an undecodable or implausible one is
dead-lettered and counted; it never stops the service), fold it into the lifetime counters,
the champion tracker, the frozen "self" references and the event-time window. Every
`export_interval_s` the window is merged and the gauges are rebuilt (metrics.py).

Commit order: every record read is finished when its batch returns, and this service produces
nothing but dead letters. So at most every `commit_interval_ms` (and when partitions are
revoked, and at shutdown) it flushes the producer if anything was dead-lettered since the last
commit, then commits the positions after the last records handled. A synchronous commit per
batch would cost a broker round trip every ~2000 records for no gain in safety.
After a restart the window starts empty from the committed position (the gauges fill again
within one window); counters are process-lifetime, as Prometheus expects of counters.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from math import isfinite
from typing import Any

from confluent_kafka import Message, TopicPartition

from services.comparison import metrics as m
from services.comparison.settings import ComparisonSettings
from services.comparison.window import ChampionTracker, References, SlidingWindow
from services.core.codec import codec
from services.core.deadletter import DeadLetters
from services.core.errors import BadInput, DecodeFailed, UnexpectedFailure
from services.core.kafka import Consumer, Producer, partition_counts
from services.core.metrics import DECODE_ERRORS
from services.core.runtime import now_ms, run_poll_loop

log = logging.getLogger(__name__)

SERVICE = "comparison"


def validate(record: dict[str, Any], latest_ok_ms: int) -> None:
    """Checks Avro cannot express; a failure dead-letters the record."""
    created = record["created_at"]
    if created <= 0:
        raise DecodeFailed(f"created_at must be epoch milliseconds, got {created}")
    if created > latest_ok_ms:
        # One such record would move the event-time window's end and expire everything else.
        raise DecodeFailed(f"created_at {created} is in the future (this host's clock allows {latest_ok_ms})")
    for out in record["outputs"]:
        if not isfinite(out["latency_ms"]):  # would poison the latency sketch
            raise DecodeFailed(f"output of {out['model']!r} has latency_ms {out['latency_ms']}")


class ComparisonService:
    """One comparison instance; `run(stop)` until the flag is set."""

    def __init__(self, settings: ComparisonSettings):
        self.settings = settings
        self.topics = settings.topics()
        self.ready = threading.Event()
        self.processed = 0
        self.window = SlidingWindow(settings.bucket_ms(), settings.buckets)
        self.champion = ChampionTracker(settings.champion)
        self.references = References(settings.reference_size)
        self._labels = m.LabelBudget(settings.max_models)
        self._touched: set[tuple[str, str]] = set()
        self._series: dict[tuple[str, str], tuple[str, str]] = {}  # raw (model, version) -> labels
        self._codec = codec("comparison")
        self._export_every = settings.export_interval_s
        self._next_export = 0.0
        self._commit_every = settings.commit_interval_ms / 1000.0
        self._next_commit = 0.0
        self._uncommitted: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset
        self._unflushed = False  # dead letters produced since the last commit
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._dead: DeadLetters | None = None

    def run(self, stop: threading.Event) -> None:
        config = self.settings.librdkafka()
        partition_counts(config, [self.topics.log, self.topics.deadletter],
                         timeout=self.settings.connect_timeout_s)
        with ExitStack() as stack:
            producer = Producer(config)
            stack.callback(producer.close)
            consumer = Consumer({
                **config,
                "group.id": self.settings.group_id(),
                "auto.offset.reset": self.settings.start_from,
                # The rendezvous may write the log in transactions: an aborted record is not a request.
                "isolation.level": "read_committed",
            })
            stack.callback(consumer.close)
            self._consumer, self._producer = consumer, producer
            self._dead = DeadLetters.for_topic(producer, config, self.topics.deadletter, SERVICE)
            consumer.subscribe([self.topics.log], on_assign=self._on_assign, on_revoke=self._on_revoke,
                               on_lost=self._on_lost)
            log.info("comparison reading %s (window %gs in %d buckets)", self.topics.log,
                     self.settings.window_s, self.settings.buckets)
            self._next_export = time.monotonic() + self._export_every
            run_poll_loop(consumer, self, stop, max_batch=self.settings.max_batch, max_wait=0.2)
            self._commit()
            self.export()
            log.info("comparison stopping after %d records", self.processed)

    # -- the poll loop's handler -----------------------------------------------------------

    def next_wakeup(self) -> float:
        due = min(self._next_export, self._next_commit) if self._uncommitted else self._next_export
        return max(0.0, due - time.monotonic())

    def on_batch(self, messages: list[Message]) -> None:
        if not messages:
            return
        assert self._consumer is not None and self._producer is not None
        tally = m.Tally()
        decode = self._codec.decode
        latest_ok = now_ms() + int(self.settings.future_tolerance_s * 1000)
        rejected = 0
        for msg in messages:
            try:
                record = decode(msg.value())
                validate(record, latest_ok)
            except BadInput as err:
                self._reject(msg, err)
                rejected += 1
                continue
            try:
                self.observe(record, tally)
            # One record must never stop the service: dead-letter whatever it made fail, go on.
            except Exception as exc:
                log.exception("unexpected failure on %s[%s]@%s", msg.topic(), msg.partition(), msg.offset())
                self._reject(msg, UnexpectedFailure(f"processing failed: {type(exc).__name__}: {exc}"))
                rejected += 1
        tally.apply()
        self.window.compact()
        self.processed += len(messages) - rejected
        self._unflushed = self._unflushed or rejected > 0
        for tp in _next_offsets(messages):
            self._uncommitted[(tp.topic, tp.partition)] = tp.offset

    def on_tick(self) -> None:
        assert self._producer is not None
        self._producer.poll(0)
        now = time.monotonic()
        if self._uncommitted and now >= self._next_commit:
            self._commit()
        if now >= self._next_export:
            self.export()

    def _commit(self) -> None:
        """Commit the positions after every record handled; dead letters are acknowledged first."""
        assert self._consumer is not None and self._producer is not None
        self._next_commit = time.monotonic() + self._commit_every
        if not self._uncommitted:
            return
        if self._unflushed:
            self._producer.flush()
            self._unflushed = False
        offsets = [TopicPartition(topic, partition, offset)
                   for (topic, partition), offset in self._uncommitted.items()]
        self._consumer.commit(offsets)
        self._uncommitted.clear()

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
                # met_deadline(), inlined: no error (here) and within the budget
                key = (labels, "late" if out["late"] else "ok", out["latency_ms"] <= budget)
                if model not in frozen:
                    references.add(model, out["score"])
            else:
                key = (labels, "error", False)
            counts[key] = counts.get(key, 0) + 1
        chosen = record["chosen_model"]
        if chosen:
            record["chosen_model"] = self._labels.model(chosen)
        tally.answers[record["status"]] += 1
        tally.records += 1
        if not self.window.add(record, self.champion.observe(record)):
            tally.stale += 1

    def _admit(self, raw: tuple[str, str]) -> tuple[str, str]:
        """Label values of a (model, version) seen for the first time; its counters start at 0."""
        model = self._labels.model(raw[0])
        labels = (model, self._labels.version(model, raw[1]))
        if labels not in self._touched:
            self._touched.add(labels)
            m.touch_model(*labels)
        if len(self._series) < 64 * self.settings.max_models:  # a flood of names takes the slow path
            self._series[raw] = labels
        return labels

    def _reject(self, msg: Message, err: BadInput) -> None:
        assert self._dead is not None
        DECODE_ERRORS.labels(SERVICE, msg.topic(), type(err).__name__).inc()
        self._dead.send(msg, err)

    # -- export ----------------------------------------------------------------------------

    def export(self) -> None:
        """Recompute every window gauge and publish them together."""
        started = time.monotonic()
        samples = m.window_samples(self.window.view(), self.champion.current, self.references.frozen,
                                   {name: self.references.count(name) for name in self._labels_seen()},
                                   canary=self.settings.canary or None)
        m.WINDOW.publish(samples)
        self._next_export = time.monotonic() + self._export_every
        log.debug("exported the window in %.1f ms", (time.monotonic() - started) * 1000)

    def _labels_seen(self) -> set[str]:
        return {model for model, _version in self._touched}

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        log.info("comparison assigned %s", [p.partition for p in partitions])
        self.ready.set()

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        log.info("comparison revoked %s: committing what it handled", [p.partition for p in partitions])
        if self._consumer is not None and self._producer is not None:
            self._commit()

    def _on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # Another member may own these already: committing now could overwrite its progress.
        log.warning("comparison lost %s: not committing them", [p.partition for p in partitions])
        for p in partitions:
            self._uncommitted.pop((p.topic, p.partition), None)


def _next_offsets(messages: list[Message]) -> list[TopicPartition]:
    """Commit positions: one past the last record read, per partition (a partition's records
    arrive in offset order, so its last record in the batch has its highest offset)."""
    last = {(msg.topic(), msg.partition()): msg for msg in messages}
    return [TopicPartition(topic or "", partition or 0, (msg.offset() or 0) + 1)
            for (topic, partition), msg in last.items()]
