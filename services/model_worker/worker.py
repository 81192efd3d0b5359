"""The model worker: read every request, score it in micro-batches, write Score records.

Commit order (at-least-once; the rendezvous de-duplicates by model + request):
  1. produce one Score per request of the batch,
  2. flush: wait until the broker acknowledged every Score,
  3. commit the request offsets of the batch.
A crash between 2 and 3 re-scores that batch after restart; no request is ever skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message, TopicPartition
from prometheus_client import Counter, Histogram

from services.core.codec import codec
from services.core.commits import AtLeastOnce
from services.core.deadletter import DeadLetters
from services.core.errors import BadInput, ConfigError
from services.core.health import BrokerHealth
from services.core.kafka import Consumer, Producer, next_offsets, partition_counts
from services.core.metrics import DECODE_ERRORS, LATENCY_BUCKETS, child
from services.core.runtime import now_ms, run_poll_loop
from services.model_worker.models import Model, Prediction, features_to_matrix, load_model
from services.model_worker.settings import WorkerSettings

log = logging.getLogger(__name__)

SERVICE = "model_worker"
REQUESTS = Counter("rdv_model_requests_total", "Requests read by a model worker.", ["model", "version"])
SCORES = Counter(
    "rdv_model_scores_total", "Scores written, by outcome (ok | error).", ["model", "version", "outcome"]
)
COMPUTE = Histogram(
    "rdv_model_compute_seconds", "Model time per micro-batch.", ["model", "version"], buckets=LATENCY_BUCKETS
)
BATCH = Histogram(
    "rdv_model_batch_size", "Requests per micro-batch.", ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)


@dataclass(frozen=True, slots=True)
class Scored:
    """Outputs of one request: a prediction, or the error the model raised for it."""

    prediction: Prediction | None
    error: str | None
    compute_ms: float


def score_batch(model: Model, rows: Sequence[dict[str, float]]) -> list[Scored]:
    """Score a batch; if the model raises, re-score one by one so only the guilty rows fail."""
    started = time.perf_counter()
    try:
        predictions = model.predict(features_to_matrix(rows, model.feature_names))
    # A model may raise anything; it is that request's error, never the worker's end.
    except Exception as exc:  # noqa: BLE001
        if len(rows) == 1:
            return [Scored(None, f"{type(exc).__name__}: {exc}", _ms_since(started))]
        return [scored for row in rows for scored in score_batch(model, [row])]
    if len(predictions) != len(rows):
        error = f"model returned {len(predictions)} outputs for {len(rows)} inputs"
        return [Scored(None, error, _ms_since(started)) for _ in rows]
    elapsed = _ms_since(started)
    return [Scored(p, None, elapsed) for p in predictions]


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


class ModelWorker:
    """One model, one consumer group; `run(stop)` until the flag is set."""

    def __init__(self, settings: WorkerSettings, model: Model | None = None):
        self.settings = settings
        self.model = model or load_model(settings.model)
        self.name = settings.name or self.model.name
        self.version = settings.version or self.model.version
        self.instance = settings.instance_id()
        self.topics = settings.topics()
        self.ready = threading.Event()
        self.health = BrokerHealth()
        self.scored = 0
        self._requests = codec("request")
        self._scores = codec("score")
        self._labels = (self.name, self.version)

    def readiness(self) -> tuple[bool, str]:
        if not self.health.up:
            return False, self.health.describe()
        return (True, "ready") if self.ready.is_set() else (False, "waiting for a partition assignment")

    def run(self, stop: threading.Event) -> None:
        config: dict[str, Any] = {**self.settings.librdkafka(), "error_cb": self.health.error_cb}
        counts = partition_counts(config, [self.topics.requests, self.topics.scores],
                                  timeout=self.settings.connect_timeout_s)
        if counts[self.topics.requests] != counts[self.topics.scores]:
            raise ConfigError(
                f"{self.topics.scores} has {counts[self.topics.scores]} partitions but "
                f"{self.topics.requests} has {counts[self.topics.requests]}: "
                "scores are written to the request's partition"
            )
        with ExitStack() as stack:
            producer = Producer(config)
            stack.callback(producer.close)
            consumer = Consumer({
                **config,
                "group.id": self.settings.group_id(self.name),
                "client.id": f"{self.name}-{self.instance}",
                "auto.offset.reset": self.settings.start_from,
                # A dead replica's partitions move on after 10 s (librdkafka's default is 45 s).
                "session.timeout.ms": 10_000,
            })
            stack.callback(consumer.close)
            consumer.subscribe([self.topics.requests], on_assign=self._on_assign)
            dead_letters = DeadLetters.for_topic(producer, config, self.topics.deadletter, SERVICE)
            committer = AtLeastOnce(producer, consumer, self._waiting, self.health)
            handler = _BatchScorer(self, consumer, producer, dead_letters, committer, stop)
            log.info("model %s %s (%s) scoring %s", self.name, self.version, self.instance,
                     self.topics.requests)
            run_poll_loop(consumer, handler, stop, max_batch=self.settings.max_batch, max_wait=0.1)
            if handler.pending:
                handler.commit()
            log.info("model %s stopping after %d scores", self.name, self.scored)

    def _waiting(self, what: str) -> None:
        self.health.mark_down()
        log.warning("model %s: %s", self.name, what)

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        log.info("model %s assigned %s", self.name, [p.partition for p in partitions])
        start_ms = self.settings.start_at_ms(now_ms())
        if start_ms is not None and partitions:
            self._start_new_partitions_at(consumer, partitions, start_ms)
        self.ready.set()

    def _start_new_partitions_at(self, consumer: Any, partitions: list[TopicPartition], start_ms: int) -> None:
        """Catch-up: partitions this group never committed start at `start_ms`, not at the end."""
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=15)}
        fresh = [TopicPartition(tp.topic, tp.partition, start_ms) for tp in partitions
                 if committed.get(tp.partition, -1) < 0]
        if not fresh:
            return
        starts = {tp.partition: tp.offset for tp in consumer.offsets_for_times(fresh, timeout=15)}
        for tp in partitions:
            if tp.partition in starts:
                # No record at or after start_ms: begin at the end (OFFSET_END = -1).
                tp.offset = starts[tp.partition] if starts[tp.partition] >= 0 else -1
        consumer.assign(partitions)
        log.info("model %s catching up from %d on partitions %s", self.name, start_ms, sorted(starts))


class _BatchScorer:
    """Decode -> score -> produce per polled batch; flush -> commit every commit interval.

    Committing after every batch would block the next batch on two broker round trips;
    the offsets of handled batches are kept and committed together (after the flush that
    acknowledges their scores) at most every `commit_interval_ms`, and once more at the end.
    """

    def __init__(
        self, worker: ModelWorker, consumer: Consumer, producer: Producer, dead: DeadLetters,
        committer: AtLeastOnce, stop: threading.Event,
    ):
        self.w = worker
        self.consumer = consumer
        self.producer = producer
        self.dead = dead
        self.committer = committer
        self.stop = stop
        self.interval_s = worker.settings.commit_interval_ms / 1000.0
        self.pending: dict[tuple[str, int], int] = {}
        self.last_commit = time.monotonic()

    def next_wakeup(self) -> float:
        if not self.pending:
            return 0.1
        return max(0.0, self.last_commit + self.interval_s - time.monotonic())

    def on_tick(self) -> None:
        self.producer.poll(0)
        if self.pending and time.monotonic() - self.last_commit >= self.interval_s:
            self.commit()

    def commit(self) -> None:
        """Scores acknowledged, then offsets committed; retried while the broker is away.
        If we are stopping before that succeeds, those requests are simply scored again later."""
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.pending.items()]
        self.last_commit = time.monotonic()
        if self.committer.commit(offsets, give_up=self.stop.is_set):
            self.pending.clear()
            self.w.health.mark_up()

    def on_batch(self, messages: list[Message]) -> None:
        if not messages:
            return
        received_at = now_ms()
        requests, sources = self._decode(messages)
        if requests:
            self._score_and_produce(requests, sources, received_at)
        for tp in next_offsets(messages):
            self.pending[(tp.topic, tp.partition)] = tp.offset

    def _decode(self, messages: list[Message]) -> tuple[list[dict[str, Any]], list[Message]]:
        requests, sources = [], []
        for msg in messages:
            try:
                requests.append(self.w._requests.decode(msg.value()))
                sources.append(msg)
            except BadInput as err:
                DECODE_ERRORS.labels(SERVICE, msg.topic(), type(err).__name__).inc()
                if self.w.settings.dead_letter:
                    self.dead.send(msg, err)
        return requests, sources

    def _score_and_produce(
        self, requests: list[dict[str, Any]], sources: list[Message], received_at: int
    ) -> None:
        w = self.w
        child(REQUESTS, *w._labels).inc(len(requests))
        child(BATCH, *w._labels).observe(len(requests))
        results = score_batch(w.model, [r["features"] for r in requests])
        child(COMPUTE, *w._labels).observe(results[0].compute_ms / 1000.0)
        scored_at = now_ms()
        errors = 0
        for request, msg, result in zip(requests, sources, results, strict=True):
            prediction = result.prediction
            errors += result.error is not None
            record = {
                "request_id": request["request_id"],
                "model": w.name,
                "version": w.version,
                "instance": w.instance,
                "score": prediction.score if prediction else None,
                "label": prediction.label if prediction else None,
                "error": result.error,
                "deadline": request["deadline"],
                "received_at": received_at,
                "scored_at": scored_at,
                "compute_ms": result.compute_ms,
            }
            # Same partition number as the request: co-partitioning holds whatever
            # partitioner the request's producer used (Java murmur2, librdkafka crc32, ...).
            try:
                value = w._scores.encode(record)
            # A model output Avro cannot carry (e.g. a label that is not a string) is that
            # request's error, never the worker's end.
            except Exception as exc:  # noqa: BLE001
                errors += result.error is None
                record.update(score=None, label=None, error=f"model output not encodable: {exc}"[:1000])
                value = w._scores.encode(record)
            self.producer.produce(w.topics.scores, value, key=msg.key(), partition=msg.partition())
        w.scored += len(requests)
        child(SCORES, *w._labels, "ok").inc(len(requests) - errors)
        if errors:
            child(SCORES, *w._labels, "error").inc(errors)

