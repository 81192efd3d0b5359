"""Dead letters always fit: cut to an excerpt, then sent as a reference alone."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, Message

from services.core.codec import codec
from services.core.deadletter import DEAD_LETTER_FAILURES, REFERENCE_REASON_CHARS, DeadLetters
from services.core.errors import BadInput, ProducerInErrorState, RecordTooLarge, TopicGone
from services.core.kafka import topic_gone

LETTERS = codec("deadletter")


class Refusing:
    """A producer that refuses a record (value and key) over `limit` bytes, as the real one does."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[tuple[dict[str, Any], bytes | None]] = []

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None, partition: int | None = None,
                headers: Any = None) -> None:
        size = len(value or b"") + len(key or b"")
        if size > self.limit:
            raise RecordTooLarge(f"a record of {size} bytes is over what {topic} takes")
        self.sent.append((LETTERS.decode(value), key if isinstance(key, bytes) else None))


def bad(value: bytes, key: bytes) -> Message:
    return Message(topic="rdv.requests", partition=2, offset=7, key=key, value=value)


def test_a_large_record_is_cut_to_its_excerpt_and_said_truncated() -> None:
    producer = Refusing(limit=1_000_000)
    DeadLetters(producer, "rdv.deadletter", "rendezvous", excerpt_bytes=1_000).send(bad(b"v" * 5_000, b"k"),
                                                                                  BadInput("no Request"))
    [(letter, key)] = producer.sent
    assert letter["value"] == b"v" * 1_000 and letter["truncated"] and letter["value_size"] == 5_000
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == ("rdv.requests", 2, 7)
    assert key == b"k" and letter["reason"] == "no Request"


def test_a_letter_refused_whole_goes_as_its_reference_without_key_value_or_the_whole_reason() -> None:
    """The second try kept the key (up to 256 bytes) and a reason of 1,000 characters (3 kB of
    UTF-8): refused again by a small topic, the letter was skipped where its reference fit (a review)."""
    producer = Refusing(limit=700)
    reason = "理" * 1_000
    DeadLetters(producer, "rdv.deadletter", "rendezvous").send(bad(b"v" * 5_000, b"k" * 10_000), BadInput(reason))
    [(letter, key)] = producer.sent
    assert key is None and letter["key"] is None and letter["value"] == b"" and letter["truncated"]
    assert letter["reason"] == reason[: REFERENCE_REASON_CHARS - 1] + "…"
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == ("rdv.requests", 2, 7)


def test_a_letter_refused_even_as_its_reference_is_counted_and_the_service_goes_on() -> None:
    before = DEAD_LETTER_FAILURES.labels("rendezvous", "rdv.requests")._value.get()
    producer = Refusing(limit=10)
    DeadLetters(producer, "rdv.deadletter", "rendezvous").send(bad(b"v", b"k"), BadInput("no Request"))
    assert producer.sent == []
    assert DEAD_LETTER_FAILURES.labels("rendezvous", "rdv.requests")._value.get() == before + 1


def test_a_services_dead_letter_series_start_at_zero_so_the_first_letter_is_an_increase() -> None:
    """A counter series is born holding its first count, which increase() cannot see: the alert
    rules missed every first dead letter of a kind, and every first letter lost (a review)."""
    from prometheus_client import REGISTRY

    from services.core import errors
    from services.core.deadletter import ERROR_TYPES

    DeadLetters(Refusing(limit=10), "rdv.deadletter", "fresh-service", sources=["rdv.fresh"])
    for error_type in ERROR_TYPES:
        assert issubclass(getattr(errors, error_type), errors.BadInput)
        assert REGISTRY.get_sample_value("rdv_deadletters_total", {"service": "fresh-service", "topic": "rdv.fresh",
                                                                   "error": error_type}) == 0.0
    assert REGISTRY.get_sample_value("rdv_deadletter_failures_total",
                                     {"service": "fresh-service", "topic": "rdv.fresh"}) == 0.0
    for why in ("timed_out", "transaction"):
        assert REGISTRY.get_sample_value("rdv_kafka_producers_replaced_total", {"why": why}) is not None


class Gone:
    """A producer whose dead-letter topic was deleted: librdkafka's verdict, as Producer raises it."""

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None, partition: int | None = None,
                headers: Any = None) -> None:
        raise topic_gone(topic, None, KafkaError(KafkaError._UNKNOWN_TOPIC))


def test_a_dead_letter_topic_deleted_stops_the_service_instead_of_skipping_every_letter() -> None:
    """Each letter after the deletion was logged 'cannot dead-letter ...; skipped it' and its record
    committed, the service ready all along (a review: 156 of 167 bad records so)."""
    before = DEAD_LETTER_FAILURES.labels("model", "rdv.requests")._value.get()
    with pytest.raises(TopicGone, match=r"rdv\.deadletter does not exist \(deleted while serving\?\)"):
        DeadLetters(Gone(), "rdv.deadletter", "model").send(bad(b"v", b"k"), BadInput("no Request"))
    assert DEAD_LETTER_FAILURES.labels("model", "rdv.requests")._value.get() == before


class TooLargeThenGone(Gone):
    """A producer that refuses the whole letter as too large, then finds its topic deleted."""

    def __init__(self) -> None:
        self.tries = 0

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None, partition: int | None = None,
                headers: Any = None) -> None:
        self.tries += 1
        if self.tries == 1:
            raise RecordTooLarge(f"a record of {len(value or b'')} bytes is over what {topic} takes")
        super().produce(topic, value, key, partition, headers)


def test_a_dead_letter_topic_found_deleted_at_the_second_try_stops_the_service_too() -> None:
    """The reference's try counted the topic's deletion as one more refusal: the letter was
    skipped and its record committed, where the first try's TopicGone stops the service."""
    before = DEAD_LETTER_FAILURES.labels("model", "rdv.requests")._value.get()
    producer = TooLargeThenGone()
    with pytest.raises(TopicGone, match=r"rdv\.deadletter does not exist"):
        DeadLetters(producer, "rdv.deadletter", "model").send(bad(b"v" * 5_000, b"k"), BadInput("no Request"))
    assert producer.tries == 2
    assert DEAD_LETTER_FAILURES.labels("model", "rdv.requests")._value.get() == before


class Failed:
    """A producer failed for good (fenced, or a fatal idempotence error): it takes no record."""

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None, partition: int | None = None,
                headers: Any = None) -> None:
        raise ProducerInErrorState(f"produce to {topic} failed: KafkaError{{code=_FATAL}}")


def test_a_producer_that_takes_nothing_stops_the_service_instead_of_counting_each_record_lost() -> None:
    """At least once, a fatal producer's refusal was taken for the record's: its dead letter refused
    too, each record of the batch counted in rdv_deadletter_failures_total, the alert fired (a review)."""
    before = DEAD_LETTER_FAILURES.labels("rendezvous", "rdv.requests")._value.get()
    with pytest.raises(ProducerInErrorState):
        DeadLetters(Failed(), "rdv.deadletter", "rendezvous").send(bad(b"v", b"k"), BadInput("no Request"))
    assert DEAD_LETTER_FAILURES.labels("rendezvous", "rdv.requests")._value.get() == before
