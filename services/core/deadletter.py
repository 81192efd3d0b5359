"""Dead-lettering: a record a service cannot use goes to the dead-letter topic, with why."""

from __future__ import annotations

import logging

from confluent_kafka import Message

from services.core.codec import codec
from services.core.errors import BadInput
from services.core.kafka import Producer
from services.core.metrics import DEAD_LETTERS
from services.core.runtime import now_ms

log = logging.getLogger(__name__)


class DeadLetters:
    """Writes DeadLetter records for one service; the original bytes travel untouched."""

    def __init__(self, producer: Producer, topic: str, service: str):
        self._producer = producer
        self._topic = topic
        self._service = service
        self._codec = codec("deadletter")

    def send(self, msg: Message, error: BadInput) -> None:
        source_topic = msg.topic() or "?"
        _kind, timestamp = msg.timestamp()
        key = msg.key()
        record = {
            "reason": str(error.message),
            "error_type": type(error).__name__,
            "service": self._service,
            "source_topic": source_topic,
            "source_partition": msg.partition(),
            "source_offset": msg.offset(),
            "source_timestamp": timestamp if timestamp and timestamp > 0 else None,
            "key": key if isinstance(key, bytes) else None,
            "value": msg.value(),
            "rejected_at": now_ms(),
        }
        self._producer.produce(self._topic, self._codec.encode(record), key=key)
        DEAD_LETTERS.labels(self._service, source_topic, type(error).__name__).inc()
        log.warning(
            "dead-lettered %s[%s]@%s: %s", source_topic, msg.partition(), msg.offset(), error.message
        )
