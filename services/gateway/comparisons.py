"""Comparison records of chosen requests, read from the log: how a call to a single model is answered.

The rendezvous writes one comparison record per request (every model's output, latency and error)
once every model reported or the deadline plus its linger passed, in a transaction. A call to one
model registers its request ids here *before* sending them; a reader thread, started on the first
such call, reads every partition of the log (read_committed, from the end as of its start) and
decodes only the records whose key is one of those ids.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from services.core.codec import codec
from services.core.errors import BadInput, BrokerError, RendezvousError
from services.core.futures import fail, settle
from services.core.kafka import Consumer, groupless, partition_counts
from services.gateway.errors import AnswerFailed

log = logging.getLogger(__name__)


class ComparisonTap:
    def __init__(self, config: Mapping[str, Any], topic: str):
        self._config = {**groupless(config, "gateway-log"),
                        "isolation.level": "read_committed", "enable.partition.eof": False}
        self._topic = topic
        self._pending: dict[str, list[Future[dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self.stopped: str | None = None  # why reading stopped for good, if it did

    @property
    def started(self) -> bool:
        return self._consumer is not None

    def start(self) -> None:
        """Position at the log's end and start reading (blocking: a metadata and offsets request)."""
        with self._lock:
            if self._consumer is not None:
                return
            partitions = partition_counts(self._config, [self._topic])[self._topic]
            consumer = Consumer(self._config)
            starts = []
            try:
                for p in range(partitions):
                    _low, high = consumer.native.get_watermark_offsets(TopicPartition(self._topic, p), timeout=10)
                    starts.append(TopicPartition(self._topic, p, high))
            except KafkaException as exc:  # the broker away or refusing: a 503 for the call, not a 500
                consumer.close()
                raise BrokerError(f"cannot start reading comparison records from {self._topic}: {exc}") from None
            consumer.assign(starts)
            self._consumer = consumer
            self._thread = threading.Thread(target=self._read, args=(consumer,), name="rdv-gateway-log",
                                            daemon=True)
            self._thread.start()
            log.info("reading comparison records from %s for calls to single models", self._topic)

    def expect(self, request_id: str) -> Future[dict[str, Any]]:
        if self.stopped is not None:
            raise BrokerError(f"this gateway {self.stopped}")
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._pending.setdefault(request_id, []).append(future)
        return future

    def abandon(self, request_id: str, future: Future[dict[str, Any]]) -> None:
        with self._lock:
            waiters = self._pending.get(request_id)
            if waiters and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._pending[request_id]

    def fail_all(self, err: Exception) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for waiters in pending.values():
            for future in waiters:
                fail(future, err)

    def _read(self, consumer: Consumer) -> None:
        records = codec("comparison")
        while not self._stop.is_set():
            try:
                messages = consumer.consume(1000, 0.1)
            except RendezvousError as err:
                log.error("stopped reading %s: %s", self._topic, err)
                self.stopped = f"stopped reading comparison records from {self._topic}: {err}"
                self.fail_all(BrokerError(f"this gateway {self.stopped}"))
                return
            for msg in messages:
                key = (msg.key() or b"").decode("utf-8", "replace")
                with self._lock:
                    waiters = self._pending.pop(key, None)
                if not waiters:
                    continue
                try:
                    record = records.decode(msg.value())
                except BadInput as err:
                    log.warning("undecodable comparison record for %s: %s", key, err)
                    for future in waiters:  # their record came, unreadable: said now, not at the grace's end
                        fail(future, AnswerFailed(f"the comparison record of this request cannot be read: {err}"))
                    continue
                for future in waiters:
                    settle(future, record)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()
