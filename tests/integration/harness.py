"""Helpers for integration tests: run services in threads, read topics to a known end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from services.core.codec import codec
from services.core.control_records import is_control_record
from services.core.kafka import admin, reader
from services.core.kafka.error_kinds import kafka_code
from services.model_worker.settings import WorkerSettings
from services.model_worker.worker import ModelWorker
from services.rendezvous.service import Rendezvous
from services.rendezvous.settings import RendezvousSettings


class Service(Protocol):
    ready: threading.Event

    def run(self, stop: threading.Event) -> None: ...


@dataclass
class Services:
    """Services running in threads; a service that raised fails the test at teardown."""

    stop: threading.Event
    threads: list[threading.Thread] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def start(self, service: Service, ready_timeout: float = 60.0) -> Any:
        def target() -> None:
            try:
                service.run(self.stop)
            except BaseException as exc:  # noqa: BLE001 - re-raised at teardown
                self.errors.append(exc)
                service.ready.set()

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self.threads.append(thread)
        assert service.ready.wait(ready_timeout), f"{service} not ready in {ready_timeout}s"
        assert not self.errors, f"service failed to start: {self.errors[0]!r}"
        return service

    def worker(self, bootstrap: str, prefix: str, spec: str, **kwargs: Any) -> ModelWorker:
        settings = WorkerSettings(bootstrap=bootstrap, topic_prefix=prefix, model=spec, **kwargs)
        worker: ModelWorker = self.start(ModelWorker(settings))
        return worker

    def rendezvous(self, bootstrap: str, prefix: str, **kwargs: Any) -> Rendezvous:
        settings = RendezvousSettings(bootstrap=bootstrap, topic_prefix=prefix, **kwargs)
        settings.validate()
        service: Rendezvous = self.start(Rendezvous(settings))
        return service

    def stop_all(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        if self.errors:
            raise self.errors[0]


POLL_S = 0.05


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, *, check: Callable[[], None] | None = None
) -> None:
    """Poll a real condition until it holds; `check` (e.g. "the service is still alive") runs on
    every poll and fails the wait early. The one polling pause of the test suite lives here."""
    deadline = time.monotonic() + timeout
    while not condition():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_S)


# What a healthy single broker answers for a moment: a topic or partition created a moment ago
# without a leader yet (NOT_LEADER_FOR_PARTITION failed a CI run), a coordinator loading, a
# transaction's offsets not yet stable, or a request slower than its timeout on a loaded host.
_NOT_YET = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.OFFSET_NOT_AVAILABLE, KafkaError.UNKNOWN_LEADER_EPOCH, KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
    KafkaError.UNSTABLE_OFFSET_COMMIT,
})


def not_yet(exc: KafkaException) -> bool:
    """Whether a broker's refusal only means "not yet": a wait asks again."""
    return kafka_code(exc) in _NOT_YET


def settled(condition: Callable[[], bool]) -> Callable[[], bool]:
    """`condition` for `wait_until`, false (ask again) while the broker answers "not yet"."""
    def asked() -> bool:
        try:
            return condition()
        except KafkaException as exc:
            if not not_yet(exc):
                raise
            return False
    return asked


def wait_for_partitions(config: dict[str, Any], topics: list[str], count: int, timeout: float = 30.0) -> None:
    """Until the cluster's metadata gives each topic `count` partitions with a leader (after
    create_partitions, whose answer can come before the broker's metadata shows them)."""
    client = admin(config)

    def grown() -> bool:
        known = client.list_topics(timeout=10).topics
        return all(topic in known and known[topic].error is None and len(known[topic].partitions) == count
                   and all(p.leader >= 0 for p in known[topic].partitions.values()) for topic in topics)
    wait_until(settled(grown), timeout, f"{topics} to have {count} partitions, each with a leader")


def send_offsets_as_member(
    producer: Producer, config: dict[str, Any], group: str, offsets: list[TopicPartition]
) -> None:
    """Put `group`'s offsets into the producer's open transaction, as a member of that group
    would (a previous owner of the rendezvous' work, made up by a test)."""
    member = Consumer({**config, "group.id": group, "enable.auto.commit": False})
    try:
        producer.send_offsets_to_transaction(offsets, member.consumer_group_metadata(), 30)
    finally:
        member.close()


class PacedSender:
    """Calls `send(i)` for i = 0..total-1 at `rate` per second from a thread, then `finish()`.
    `stop()` ends it sooner: a test whose stream must outlast steps of unknown length (a CLI
    call on a loaded host) gives a generous `total` and stops once the steps are done."""

    def __init__(self, send: Callable[[int], None], total: int, rate: float,
                 finish: Callable[[], None] = lambda: None):
        self.send, self.total, self.rate, self.finish = send, total, rate, finish
        self.sent = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        started = time.monotonic()
        while self.sent < self.total and not self._stop.is_set():
            due = min(self.total, int((time.monotonic() - started) * self.rate) + 1)
            while self.sent < due:
                self.send(self.sent)
                self.sent += 1
            # A fixed request rate: wait for the moment the next request is due (or for stop()).
            self._stop.wait(max(0.0, started + self.sent / self.rate - time.monotonic()))
        self.finish()

    def start(self) -> PacedSender:
        self.thread.start()
        return self

    def join(self, timeout: float = 300.0) -> None:
        self.thread.join(timeout=timeout)
        assert not self.thread.is_alive(), "the sender did not finish"


def read_topic(
    config: dict[str, Any], topic: str, *, expect: int, timeout: float = 60.0, decode: str | None = None
) -> list[Any]:
    """Every record of `topic` once at least `expect` are there, read to the end offsets.

    Returns decoded records (when `decode` names a codec) or raw confluent-kafka messages.
    Reading to the high watermark after the count is reached makes "exactly N" checkable.
    Only data records count towards `expect`: a control record (a clock, a seal) counted as one let
    a read return before the last record it waited for (a seal on rdv.answers did, on a slow host).
    """
    consumer = reader(config, "test-reader")
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.topics[topic].partitions]
        consumer.assign(partitions)
        records: list[Any] = []
        data = 0
        deadline = time.monotonic() + timeout

        @settled
        def at_end() -> bool:
            for tp in consumer.position(partitions):
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=5)
                if (tp.offset < 0 and high > 0) or 0 <= tp.offset < high:
                    return False
            return True

        while True:
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    records.append(msg)
                    data += not is_control_record(msg)
            if data >= expect and at_end():
                break
            if time.monotonic() > deadline:
                break
        if decode is None:
            return records
        schema = codec(decode)  # control records (no value: clock, seal) carry nothing to decode
        return [schema.decode(m.value()) for m in records if not is_control_record(m)]
    finally:
        consumer.close()
