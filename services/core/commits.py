"""How a consume-transform-produce service makes its work final.

Both strategies keep the order "outputs acknowledged, then inputs committed":

- `AtLeastOnce`: flush the producer (every output acknowledged), then commit the consumer
  offsets. A crash between the two repeats work; nothing is lost.
- `ExactlyOnce`: outputs and input offsets go in one Kafka transaction
  (`send_offsets_to_transaction` with the consumer's group metadata, so a zombie instance
  from an older group generation is fenced). Readers with isolation.level=read_committed
  see each output once. Call `begin()` once after `init()`; `commit()` ends the open
  transaction and opens the next.

While the broker is away both retry (they never spin: each try waits up to `retry_s`;
send_offsets_to_transaction may block until the broker is back whatever its timeout,
librdkafka issue #5456, so blocked calls are reported to readiness via `health.blocking`)
until the work is final or `give_up` says stop; an abortable transaction error is raised
as `TransactionAborted` so the caller can rewind its inputs to the committed offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from services.core.errors import ConfigError, DeliveryFailed, KafkaOperationError
from services.core.health import BrokerHealth
from services.core.kafka import CommitRejected, Consumer, Producer

log = logging.getLogger(__name__)


class TransactionAborted(KafkaOperationError):
    """The open transaction was aborted; its outputs are discarded, inputs must be re-read."""


class Committer(Protocol):
    transactional: bool

    def init(self) -> None: ...

    def commit(self, offsets: list[TopicPartition], give_up: Callable[[], bool]) -> bool: ...

    def abort(self) -> None: ...


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


class AtLeastOnce:
    transactional = False

    def __init__(
        self, producer: Producer, consumer: Consumer, on_wait: Callable[[str], None], health: BrokerHealth,
        retry_s: float = 5.0,
    ):
        self.producer, self.consumer, self.on_wait, self.retry_s = producer, consumer, on_wait, retry_s
        self.health = health

    def init(self) -> None:
        return None

    def commit(self, offsets: list[TopicPartition], give_up: Callable[[], bool]) -> bool:
        """Flush, then commit; False if `give_up()` turned true before it was done."""
        while True:
            try:
                with self.health.blocking():
                    self.producer.flush(self.retry_s)
                    self.consumer.commit(offsets)
                return True
            except CommitRejected as err:
                # At-least-once: whoever owns these partitions now re-reads from the last commit.
                log.warning("%s; the new owner repeats that work", err)
                return True
            except (DeliveryFailed, KafkaOperationError) as err:
                if not err.retriable:
                    raise
                self.on_wait(f"waiting for the broker to take our outputs: {err}")
            if give_up():
                return False

    def abort(self) -> None:
        return None


class ExactlyOnce:
    transactional = True

    def __init__(
        self, producer: Producer, consumer: Consumer, on_wait: Callable[[str], None], health: BrokerHealth,
        retry_s: float = 5.0,
    ):
        self.producer, self.consumer, self.on_wait, self.retry_s = producer, consumer, on_wait, retry_s
        self.health = health
        self._native = producer.native

    def init(self) -> None:
        """Register the transactional id (aborting a dead predecessor's open transaction)."""
        while True:
            try:
                self._native.init_transactions(self.retry_s)
                break
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is not None and err.retriable():
                    self.on_wait(f"waiting for the transaction coordinator: {err.str()}")
                    continue
                raise ConfigError(f"cannot start transactions: {exc}") from None
        self._native.begin_transaction()

    def commit(self, offsets: list[TopicPartition], give_up: Callable[[], bool]) -> bool:
        """Commit outputs + offsets atomically and open the next transaction."""
        if offsets:
            self._send_offsets(offsets)
        # A timed-out commit may or may not have completed on the broker: only retrying the
        # commit itself is safe (librdkafka makes it idempotent); aborting now could repeat work.
        if not self._retry(lambda: self._native.commit_transaction(self.retry_s), give_up):
            return False
        self.producer.raise_failures()
        self._native.begin_transaction()
        return True

    def _send_offsets(self, offsets: list[TopicPartition]) -> None:
        """Add the input offsets to the transaction; on any failure abort it (safe: nothing is
        committed yet). Retrying instead can hang once the broker is back (librdkafka #5456)."""
        try:
            with self.health.blocking():
                self._native.send_offsets_to_transaction(
                    offsets, self.consumer.native.consumer_group_metadata(), self.retry_s)
        except KafkaException as exc:
            err = _kafka_error(exc)
            if err is not None and err.fatal():
                raise KafkaOperationError(f"transaction failed: {exc}") from None
            self.on_wait(f"could not add offsets to the transaction ({exc}); aborting it")
            self.abort()
            raise TransactionAborted(f"transaction aborted: {err.str() if err else exc}") from None

    def _retry(self, action: Callable[[], None], give_up: Callable[[], bool]) -> bool:
        while True:
            try:
                with self.health.blocking():
                    action()
                return True
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is not None and err.txn_requires_abort():
                    self.abort()
                    raise TransactionAborted(f"transaction aborted: {err.str()}") from None
                if err is None or not err.retriable():
                    raise KafkaOperationError(f"transaction failed: {exc}") from None
                self.on_wait(f"transaction waiting for the broker: {err.str()}")
            if give_up():
                return False
            time.sleep(0.2)  # the failed call already waited retry_s or failed fast; don't spin

    def abort(self) -> None:
        """Abort the open transaction (retried until the broker takes it) and open the next."""
        while True:
            try:
                with self.health.blocking():
                    self._native.abort_transaction(self.retry_s)
                break
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is None or not err.retriable():
                    raise KafkaOperationError(f"abort_transaction failed: {exc}") from None
                self.on_wait(f"abort waiting for the broker: {err.str()}")
        self.producer.discard_failures()
        self._native.begin_transaction()
