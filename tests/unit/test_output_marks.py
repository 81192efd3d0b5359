"""The mark a request read after a takeover gets (service.py `_output_end`): where the outputs of
its partition end, as this instance's producer delivered them, or where recovery found they may
start. A partition given up and taken back by the same instance must not keep the ends of its
earlier ownership, or the requests it re-reads are marked past the answers it wrote for them. And
a request the previous owner may have answered keeps recovery's floors as its mark even after this
instance delivered outputs of its own: the previous owner's answer lies before them."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import Message, TopicPartition

from services.core.kafka import Producer
from services.localkafka.config import free_port
from services.rendezvous.recovery import Mark
from services.rendezvous.service import Rendezvous
from services.rendezvous.settings import RendezvousSettings
from tests.unit.test_rendezvous_intake import Consumer


@pytest.fixture
def service() -> Iterator[Rendezvous]:
    """A rendezvous owning partitions 0 and 1, its producer's delivered ends set by each test."""
    service = Rendezvous(RendezvousSettings(models=("champion",)))
    t = service.topics
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0}, delivered=True)
    consumer = Consumer([TopicPartition(topic, p) for topic in (t.requests, t.scores) for p in range(2)])
    service._ctx = SimpleNamespace(consumer=consumer, producer=producer, draining=False)  # type: ignore[assignment]
    try:
        yield service
    finally:
        producer.close(timeout=1)


def _delivered(service: Rendezvous) -> dict[tuple[str, int], int]:
    assert service._ctx is not None and service._ctx.producer is not None
    return service._ctx.producer.delivered_ends


def test_a_partition_taken_back_is_marked_from_recovery_not_from_the_earlier_ownership(service: Rendezvous) -> None:
    t = service.topics
    # The earlier ownership wrote answers and comparison records up to 500 on partition 0, 300 on 1.
    _delivered(service).update({(t.answers, 0): 500, (t.log, 0): 500, (t.answers, 1): 300})

    service.on_released([TopicPartition(t.requests, 0), TopicPartition(t.scores, 0)], lost=False)
    service.takeover.floors.update({(t.answers, 0): 400, (t.log, 0): 380})  # what its recovery found

    assert (service._output_end(t.answers, 0), service._output_end(t.log, 0)) == (400, 380)
    assert service._output_end(t.answers, 1) == 300  # a partition kept keeps its ends


def test_a_re_read_request_keeps_the_floors_as_its_mark_after_this_instance_delivered_outputs(
    service: Rendezvous,
) -> None:
    t = service.topics
    # Recovery of partition 0 found the previous owner's outputs from 400 / 380; requests ended at 120.
    service.takeover.floors.update({(t.answers, 0): 400, (t.log, 0): 380})
    service.takeover.reread_ends[0] = 120
    # Since then this instance answered re-read requests the previous owner had not: delivered to 450 / 390.
    _delivered(service).update({(t.answers, 0): 450, (t.log, 0): 390, (t.answers, 1): 70})

    def mark(partition: int, offset: int) -> tuple[int, int]:
        decoded = Mark.decode(service._mark(partition, offset))
        assert decoded is not None
        return decoded.answers, decoded.log

    assert mark(0, 119) == (400, 380)  # the previous owner may have answered it after 400
    assert mark(0, 120) == (450, 390)  # read after recovery: only this instance answers it
    assert mark(1, 5) == (70, 0)  # a partition without a re-read window: its ends
    assert service._current_mark(t.requests, 0, 100) == service._mark(0, 100)  # a position counts the same
    assert service._current_mark(t.scores, 0, 100) is None

    service.on_released([TopicPartition(t.requests, 0), TopicPartition(t.scores, 0)], lost=False)
    assert 0 not in service.takeover.reread_ends  # taken back later, its recovery says anew


def test_the_re_read_ends_after_the_last_request_the_scan_could_have_found_answered(service: Rendezvous) -> None:
    """What the scan found for requests not re-read is handed to the join's bounded memory once
    the requests before the scan's end are read again (after the last, or before any later one)."""
    from services.client.client import make_request
    from services.core.codec import codec

    ended: list[tuple[int, str]] = []
    on_request = service.join.on_request

    def read(request: Any) -> Any:
        ended.append((request.offset, "read"))
        return on_request(request)

    service.join.end_reread = lambda partition: ended.append((partition, "end"))  # type: ignore[method-assign]
    service.join.on_request = read  # type: ignore[method-assign]
    service.takeover.reread_ends[0] = 120
    encode = codec("request").encode
    for offset in (100, 119, 130):
        record = make_request({"f": 1.0}, budget_ms=200, reply_topic=None, reply_partition=None)
        service._on_request(Message(topic=service.topics.requests, partition=0, offset=offset, value=encode(record),
                                    timestamp=(1, record["created_at"])))
    assert ended == [(100, "read"), (119, "read"), (0, "end"), (0, "end"), (130, "read")]
