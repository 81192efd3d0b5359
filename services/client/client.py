"""Send scoring requests over Kafka and await their answers.

The return address is a reply topic and one partition of it that this client reads
(assigned directly, no consumer group). Answers are correlated by request_id; answers for
other clients that share the partition are ignored. The client starts reading at the
partition's end offset *before* it sends anything, so no answer can slip past it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from services.core.codec import codec
from services.core.errors import BadInput, BrokerError, ConfigError, RendezvousError
from services.core.kafka import Consumer, Producer, partition_counts
from services.core.runtime import now_ms
from services.core.settings import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    request_id: str
    status: str
    model: str | None
    version: str | None
    score: float | None
    label: str | None
    reason: str
    created_at: int
    deadline: int
    answered_at: int
    schedule: str
    schedule_version: int
    received_at: int

    @property
    def latency_ms(self) -> int:
        """Created to received by this client: the end-to-end latency."""
        return self.received_at - self.created_at

    @classmethod
    def from_record(cls, record: Mapping[str, Any], received_at: int) -> Answer:
        # Only the fields this client knows: newer writers may add defaulted fields.
        known = {name: record[name] for name in cls.__dataclass_fields__ if name in record}
        return cls(**{**known, "received_at": received_at})


class AnswerTimeout(RendezvousError):
    """No answer arrived within the client's wait (the service may be down)."""

    retriable = True


def make_request(
    features: Mapping[str, float],
    *,
    budget_ms: int,
    reply_topic: str | None,
    reply_partition: int | None,
    request_id: str | None = None,
    payload: tuple[str, bytes] | None = None,
    metadata: Mapping[str, str] | None = None,
    created_at: int | None = None,
) -> dict[str, Any]:
    """A Request record (see schemas/request.avsc)."""
    created = created_at if created_at is not None else now_ms()
    return {
        "request_id": uuid.uuid4().hex if request_id is None else request_id,
        "created_at": created,
        "deadline": created + budget_ms,
        "reply_to": {"topic": reply_topic, "partition": reply_partition} if reply_topic else None,
        "features": {k: float(v) for k, v in features.items()},
        "payload": {"content_type": payload[0], "data": payload[1]} if payload else None,
        "metadata": dict(metadata or {}),
    }


class Client:
    """A scoring client: `score()` (sync), `submit()` (a Future), `score_many()`, `ascore()`."""

    def __init__(
        self,
        config: Mapping[str, Any],
        topics: Topics,
        *,
        budget_ms: int = 200,
        reply_partition: int | None = None,
        answer_wait_s: float = 10.0,
    ):
        self.topics = topics
        self.budget_ms = budget_ms
        self.answer_wait_s = answer_wait_s
        counts = partition_counts(config, [topics.requests, topics.replies])
        partitions = counts[topics.replies]
        if reply_partition is not None and not 0 <= reply_partition < partitions:
            raise ConfigError(
                f"reply partition {reply_partition} not in {topics.replies} (0..{partitions - 1})"
            )
        self.reply_partition = random.randrange(partitions) if reply_partition is None else reply_partition
        self._requests = codec("request")
        self._answers = codec("answer")
        self._producer = Producer(config)
        self._consumer = Consumer({**config, "group.id": f"rdv-client-{uuid.uuid4().hex}"})
        self._pending: dict[str, Future[Answer]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._start_reading()
        self._reader = threading.Thread(target=self._read_answers, name="rdv-client-answers", daemon=True)
        self._reader.start()

    def _start_reading(self) -> None:
        tp = TopicPartition(self.topics.replies, self.reply_partition)
        try:
            _low, high = self._consumer.native.get_watermark_offsets(tp, timeout=10.0)
        except KafkaException as exc:
            raise BrokerError(
                f"cannot read the end of {tp.topic}[{tp.partition}]: {exc}"
            ) from None
        self._consumer.assign([TopicPartition(self.topics.replies, self.reply_partition, high)])

    # -- sending ---------------------------------------------------------------------------

    def submit(
        self,
        features: Mapping[str, float],
        *,
        budget_ms: int | None = None,
        request_id: str | None = None,
        payload: tuple[str, bytes] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Future[Answer]:
        """Send one request; the Future resolves to its Answer."""
        record = make_request(
            features, budget_ms=budget_ms or self.budget_ms, reply_topic=self.topics.replies,
            reply_partition=self.reply_partition, request_id=request_id, payload=payload, metadata=metadata,
        )
        future: Future[Answer] = Future()
        rid = record["request_id"]
        with self._lock:
            self._pending[rid] = future
        self._producer.produce(self.topics.requests, self._requests.encode(record), key=rid.encode())
        self._producer.poll(0)
        return future

    def score(self, features: Mapping[str, float], **kwargs: Any) -> Answer:
        """Send one request and wait for its answer."""
        future = self.submit(features, **kwargs)
        self._producer.flush()
        return self._wait(future)

    def score_many(self, rows: Iterable[Mapping[str, float]], **kwargs: Any) -> list[Answer]:
        """Send a batch, then wait for every answer (in input order)."""
        futures = [self.submit(row, **kwargs) for row in rows]
        self._producer.flush()
        return [self._wait(f) for f in futures]

    async def ascore(self, features: Mapping[str, float], **kwargs: Any) -> Answer:
        """asyncio form of `score`."""
        future = self.submit(features, **kwargs)
        self._producer.poll(0)
        return await asyncio.wait_for(asyncio.wrap_future(future), self.answer_wait_s)

    def flush(self) -> None:
        self._producer.flush()

    def _wait(self, future: Future[Answer]) -> Answer:
        try:
            return future.result(timeout=self.answer_wait_s)
        except FutureTimeout:
            raise AnswerTimeout(
                f"no answer within {self.answer_wait_s:.0f}s: is the rendezvous running on "
                f"{self.topics.requests}?"
            ) from None

    # -- receiving -------------------------------------------------------------------------

    def _read_answers(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self._consumer.consume(500, 0.1)
            except RendezvousError as err:
                log.error("client stopped reading answers: %s", err)
                self._fail_all(err)
                return
            if messages:
                received = now_ms()
                for msg in messages:
                    self._resolve(msg.value(), received)

    def _resolve(self, value: bytes | None, received_at: int) -> None:
        try:
            record = self._answers.decode(value)
        except BadInput as err:
            log.warning("ignoring an undecodable answer on %s: %s", self.topics.replies, err)
            return
        with self._lock:
            future = self._pending.pop(record["request_id"], None)
        if future is not None and not future.done():
            future.set_result(Answer.from_record(record, received_at))

    def _fail_all(self, err: Exception) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(err)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=5)
        self._producer.close()
        self._consumer.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
