"""Dead-lettering: a record a service cannot use goes to the dead-letter topic, with why.

A dead letter must always fit the topic, whatever the record it reports: a record near the
broker's size limit, wrapped with a reason, would exceed it, the produce would fail, and the
service would stop on that record at every restart (a poison pill). So the original value is
kept whole only up to `excerpt_bytes` (at most a quarter of the dead-letter topic's
`max.message.bytes`); a larger one is cut to an excerpt and marked `truncated`, and the source
topic/partition/offset say where to read it whole. If the broker still refuses the dead letter,
it is sent once more as the record's reference: without key and value, its reason cut to
REFERENCE_REASON_CHARS; if that fails too the failure is counted and logged with the reference:
one bad record never stops a service.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from confluent_kafka import Message
from prometheus_client import Counter

from services.core.codec import codec
from services.core.errors import BadInput, BrokerError, KafkaOperationError, ProducerInErrorState, TopicGone
from services.core.kafka import topic_config
from services.core.metrics import DEAD_LETTERS
from services.core.redaction import mask
from services.core.runtime import now_ms
from services.core.terminal import shortened

log = logging.getLogger(__name__)

DEFAULT_EXCERPT_BYTES = 64 * 1024
KEY_BYTES = 256
REASON_CHARS = 1000
REFERENCE_REASON_CHARS = 200  # a reference alone: at most ~800 bytes of UTF-8 with the source's names
_OBJECT_ADDRESS = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-f]+>")

DEAD_LETTER_FAILURES = Counter(
    "rdv_deadletter_failures_total",
    "Records skipped without a dead letter: the producer refused the letter even as the record's reference "
    "(over its message.max.bytes, or closed). A broker's refusal (the topic missing, an ACL) stops the service "
    "instead.",
    ["service", "topic"],
)
# The error types a service dead-letters (services/core/errors.py): their series start at 0 when a
# service starts, so the first letter of each is an increase the alert rules see (a series born at
# 1 is none to increase(), and RdvDeadLetters and RdvDeadLettersLost missed every first one; a review).
ERROR_TYPES = ("DecodeFailed", "LookupsSpent", "UnknownFingerprint", "UnexpectedFailure")


def clean_reason(text: str) -> str:
    """A reason fit for a person: no object addresses, no remembered secret (a registry's error
    text is quoted in it, and a dead letter outlives any log), at most REASON_CHARS characters."""
    return shortened(mask(_OBJECT_ADDRESS.sub("", text)).strip(), REASON_CHARS)


def excerpt_limit(config: Mapping[str, Any], topic: str, timeout: float = 10.0, known: int | None = None) -> int:
    """How much of an original value a dead letter on `topic` may carry (a quarter of its
    max.message.bytes, at most DEFAULT_EXCERPT_BYTES); the default if the broker does not say.
    `known`: the limit the service's producer read at start (Producer.topic_limit): not asked again."""
    if known is not None:
        return max(256, min(DEFAULT_EXCERPT_BYTES, known // 4))
    try:
        limit = int(topic_config(config, topic, "max.message.bytes", timeout) or "")
    except (BrokerError, ValueError) as exc:
        log.debug("max.message.bytes of %s unknown (%s): dead letters keep %d bytes", topic, exc,
                  DEFAULT_EXCERPT_BYTES)
        return DEFAULT_EXCERPT_BYTES
    return max(256, min(DEFAULT_EXCERPT_BYTES, limit // 4))


class Produces(Protocol):
    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None,
                partition: int | None = None, headers: Any = None) -> None: ...


class DeadLetters:
    """Writes DeadLetter records for one service; originals travel untouched up to `excerpt_bytes`."""

    def __init__(self, producer: Produces, topic: str, service: str, excerpt_bytes: int = DEFAULT_EXCERPT_BYTES,
                 sources: Iterable[str] = ()):
        """`sources`: the topics the service reads, whose counters start at 0 now (`ERROR_TYPES`)."""
        self._producer = producer
        self._topic = topic
        self._service = service
        self._excerpt = excerpt_bytes
        self._codec = codec("deadletter")
        for source in sources:
            DEAD_LETTER_FAILURES.labels(service, source)
            for error_type in ERROR_TYPES:
                DEAD_LETTERS.labels(service, source, error_type)

    @classmethod
    def for_topic(
        cls, producer: Produces, config: Mapping[str, Any], topic: str, service: str, known: int | None = None,
        sources: Iterable[str] = (),
    ) -> DeadLetters:
        """Dead letters sized for what `topic` accepts (`known`: its limit, if already read)."""
        return cls(producer, topic, service, excerpt_limit(config, topic, known=known), sources)

    def send(self, msg: Message, error: BadInput | Exception) -> None:
        """Dead-letter `msg` with the reason; never raises for the record's size or shape."""
        source_topic = msg.topic() or "?"
        error_type = type(error).__name__
        reason = clean_reason(str(error.message) if isinstance(error, BadInput) else f"{error_type}: {error}")
        refused: list[KafkaOperationError] = []
        for letter in self._letters(msg, reason, error_type):
            try:
                self._producer.produce(self._topic, self._codec.encode(letter), key=letter["key"])
                break
            except (TopicGone, ProducerInErrorState):
                # Every dead letter after it would be lost too, uncounted by the topic, or the producer
                # takes nothing now, whatever the record (a review: a fatal producer counted each
                # record of its batch lost, its alert fired): the service stops.
                raise
            except KafkaOperationError as err:
                refused.append(err)
        else:
            DEAD_LETTER_FAILURES.labels(self._service, source_topic).inc()
            log.error("cannot dead-letter %s[%s]@%s (%s); skipped it: %s", source_topic, msg.partition(),
                      msg.offset(), "; then ".join(map(str, refused)), reason)
            return
        DEAD_LETTERS.labels(self._service, source_topic, error_type).inc()
        log.warning("dead-lettered %s[%s]@%s: %s", source_topic, msg.partition(), msg.offset(), reason)

    def _letters(self, msg: Message, reason: str, error_type: str) -> Iterator[dict[str, Any]]:
        """The letter, then, refused (e.g. a producer message.max.bytes below the excerpt), its
        reference alone: the key and a whole reason (3 kB of UTF-8 with the key's 256 bytes) had it
        refused again by a topic its reference fits (a review)."""
        yield self._record(msg, reason, error_type, self._excerpt)
        reference = self._record(msg, shortened(reason, REFERENCE_REASON_CHARS), error_type, 0)
        yield {**reference, "key": None, "truncated": reference["truncated"] or reference["key"] is not None}

    def _record(self, msg: Message, reason: str, error_type: str, excerpt: int) -> dict[str, Any]:
        _kind, timestamp = msg.timestamp()
        key = msg.key()
        key = key if isinstance(key, bytes) else None
        value = msg.value()
        truncated = (key is not None and len(key) > KEY_BYTES) or (value is not None and len(value) > excerpt)
        return {
            "reason": reason,
            "error_type": error_type,
            "service": self._service,
            "source_topic": msg.topic() or "?",
            "source_partition": msg.partition(),
            "source_offset": msg.offset(),
            "source_timestamp": timestamp if timestamp and timestamp > 0 else None,
            "key": key[:KEY_BYTES] if key is not None else None,
            "value": value[:excerpt] if value is not None else None,
            "rejected_at": now_ms(),
            "value_size": len(value) if value is not None else None,
            "truncated": truncated,
        }
