"""The model worker: read every request, score it in micro-batches, write Score records.

Commit order (at-least-once; the rendezvous de-duplicates by model + request):
  1. produce one Score per request of the batch,
  2. flush: wait until the broker acknowledged every Score,
  3. commit the request offsets of the batch (2 and 3 run off the poll loop, in the shared
     service skeleton, at most every commit interval).
A crash between 2 and 3 re-scores that batch after restart; no request is ever skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message, TopicPartition
from prometheus_client import Counter, Histogram

from services.core.codec import codec
from services.core.deadletter import DeadLetters
from services.core.errors import BadInput, ConfigError, DecodeFailed
from services.core.kafka import Producer, partition_counts
from services.core.metrics import DECODE_ERRORS, LATENCY_BUCKETS, child
from services.core.runtime import now_ms
from services.core.service import Context, SimpleHandler, StreamService, StreamSpec
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


class ModelWorker(SimpleHandler):
    """One model, one consumer group; `run(stop)` until the flag is set."""

    def __init__(self, settings: WorkerSettings, model: Model | None = None):
        super().__init__()
        self.settings = settings
        self.model = model or load_model(settings.model)
        self.name = settings.name or self.model.name
        self.version = settings.version or self.model.version
        self.instance = settings.instance_id()
        self.topics = settings.topics()
        self.scored = 0
        self._requests = codec("request")
        self._scores = codec("score")
        self._labels = (self.name, self.version)
        self._scorer: _BatchScorer | None = None
        self.service = StreamService(StreamSpec(
            name=f"model {self.name}", config=settings.librdkafka(), subscription=[self.topics.requests],
            group_id=settings.group_id(self.name), processing="at-least-once",
            commit_interval_ms=settings.commit_interval_ms, max_batch=settings.max_batch,
            connect_timeout_s=settings.connect_timeout_s,
            consumer_config={
                "client.id": f"{self.name}-{self.instance}",
                "auto.offset.reset": settings.start_from,
                # A dead replica's partitions move on after 6 s (librdkafka's default is 45 s).
                "session.timeout.ms": 6_000,
            },
        ), self)
        self.ready = self.service.ready

    def readiness(self) -> tuple[bool, str]:
        return self.service.readiness()

    def run(self, stop: threading.Event) -> None:
        counts = partition_counts(self.settings.librdkafka(), [self.topics.requests, self.topics.scores],
                                  timeout=self.settings.connect_timeout_s)
        if counts[self.topics.requests] != counts[self.topics.scores]:
            raise ConfigError(
                f"{self.topics.scores} has {counts[self.topics.scores]} partitions but "
                f"{self.topics.requests} has {counts[self.topics.requests]}: "
                "scores are written to the request's partition"
            )
        log.info("model %s %s (%s) scoring %s", self.name, self.version, self.instance, self.topics.requests)
        self.service.run(stop)
        log.info("model %s stopping after %d scores", self.name, self.scored)

    def start(self, ctx: Context) -> None:
        super().start(ctx)
        assert ctx.producer is not None
        dead_letters = DeadLetters.for_topic(ctx.producer, ctx.config, self.topics.deadletter, SERVICE)
        self._scorer = _BatchScorer(self, ctx.producer, dead_letters)

    def on_batch(self, messages: list[Message]) -> None:
        assert self._scorer is not None
        self._scorer.on_batch(messages)
        self.positions.advance(messages)

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        start_ms = self.settings.start_at_ms(now_ms())
        if start_ms is not None and partitions and self.ctx is not None:
            self._start_new_partitions_at(self.ctx.consumer.native, partitions, start_ms)

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
    """Decode -> score -> produce per polled batch. Scores go out at once (the rendezvous waits
    for them); the skeleton flushes and commits the positions behind them off the poll loop."""

    def __init__(self, worker: ModelWorker, producer: Producer, dead: DeadLetters):
        self.w = worker
        self.producer = producer
        self.dead = dead

    def on_batch(self, messages: list[Message]) -> None:
        if not messages:
            return
        received_at = now_ms()
        requests, sources = self._decode(messages)
        if requests:
            self._score_and_produce(requests, sources, received_at)

    def _decode(self, messages: list[Message]) -> tuple[list[dict[str, Any]], list[Message]]:
        requests, sources = [], []
        for msg in messages:
            try:
                request = self.w._requests.decode(msg.value())
                if not request["request_id"]:
                    raise DecodeFailed("request_id is empty: nothing to answer it by")
                requests.append(request)
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

