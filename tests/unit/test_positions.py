"""Commit positions of services that finish records within their batch (services/core/service.py)."""

from __future__ import annotations

import pytest
from confluent_kafka import Message, TopicPartition

from services.core.service import Positions, still_owned


def reference(batches: list[list[Message]]) -> dict[tuple[str, int], int]:
    """One past the last offset read of each partition, the plain way."""
    found: dict[tuple[str, int], int] = {}
    for batch in batches:
        for msg in batch:
            found[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
    return found


def batch(*runs: tuple[str, int, range]) -> list[Message]:
    return [Message(topic=topic, partition=p, offset=o, value=b"") for topic, p, offsets in runs for o in offsets]


@pytest.mark.parametrize("batches", [
    [batch(("log", 0, range(0, 500)), ("log", 1, range(0, 500)), ("log", 0, range(500, 700)))],  # p0 twice
    [batch(("log", 2, range(7, 8))), batch(("log", 2, range(8, 20)), ("log", 3, range(0, 4)))],
    [batch(("a", 0, range(0, 3)), ("b", 0, range(0, 9)), ("a", 0, range(3, 4)))],  # two topics, one number
    [batch(("a", 0, range(0, 100)), ("b", 0, range(0, 90)), ("a", 0, range(100, 110)))],  # the same, larger
    [[]],
])  # fmt: skip
def test_positions_are_one_past_the_last_record_of_each_partition(batches: list[list[Message]]) -> None:
    positions = Positions()
    for messages in batches:
        positions.advance(messages)
    assert {(tp.topic, tp.partition): tp.offset for tp in positions.finished()} == reference(batches)


def test_records_of_partitions_released_during_a_poll_are_left_to_their_next_owner() -> None:
    messages = batch(("log", 0, range(0, 3)), ("log", 1, range(0, 2)), ("other", 0, range(5, 6)))
    kept = still_owned(messages, {("log", 1): None, ("other", 0): None})
    assert [(m.topic(), m.partition(), m.offset()) for m in kept] == [("log", 1, 0), ("log", 1, 1), ("other", 0, 5)]


def test_a_partition_nothing_was_read_from_is_committed_where_it_starts_until_records_move_it() -> None:
    positions = Positions()
    start = TopicPartition("requests", 2, 40)
    assert positions.finished() == []
    positions.start_at(start)
    assert [(tp.partition, tp.offset) for tp in positions.finished()] == [(2, 40)]
    positions.start_at(TopicPartition("requests", 2, 99))  # known: a later start does not move it
    positions.advance(batch(("requests", 2, range(40, 45))))
    assert [(tp.partition, tp.offset) for tp in positions.finished()] == [(2, 45)]
