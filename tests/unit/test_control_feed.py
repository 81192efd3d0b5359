"""The control topic's reader (services/control/topic.py `ControlFeed`) when a record cannot be
read yet (its schema id's registry away): it waits, with those after it, instead of being refused."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Message

from services.control import topic
from services.control.schedule import Schedule
from services.core.errors import BrokerError, DecodeFailed


class Tail:
    """The topic's records as a TopicTail hands them, each once, from where the last read ended:
    `history` to the end as of now, then `arrived` per poll."""

    partition_count = 1  # as the control topic must be

    def __init__(self, *_args: Any) -> None:
        self.history: list[Message] = []
        self.arrived: list[list[Message]] = []

    def read_to_end(self, _timeout: float) -> list[Message]:
        records, self.history = self.history, []
        return records

    def poll(self) -> list[Message]:
        return self.arrived.pop(0) if self.arrived else []


def _record(version: int, offset: int) -> Message:
    schedule = Schedule(models=("champion",), version=version)
    return Message(topic="rdv.control", partition=0, offset=offset, value=topic.encode_schedule(schedule),
                   timestamp=(2, 1_700_000_000_000 + offset))


@pytest.fixture
def registry_away(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """While its item is True, every record's schema lookup fails as a registry away makes it fail."""
    away = [True]
    decode = topic.decode_schedule

    def decode_or_wait(value: bytes | None) -> Schedule:
        if away[0]:
            raise DecodeFailed("schema registry http://registry:8081 unreachable", retriable=True)
        return decode(value)

    monkeypatch.setattr(topic, "TopicTail", Tail)
    monkeypatch.setattr(topic, "decode_schedule", decode_or_wait)
    return away


def test_a_record_that_cannot_be_read_yet_waits_with_those_after_it(registry_away: list[bool]) -> None:
    """Taken for refused, it was skipped for good: the instance stayed on an older version (a review)."""
    feed = topic.ControlFeed({}, "rdv.control")
    tail: Tail = feed._tail  # type: ignore[assignment]
    tail.arrived = [[_record(2, 5)], [_record(3, 6)], []]
    assert feed.poll() == [] and feed.poll() == []  # v2 waits, and v3 behind it
    registry_away[0] = False
    assert [record.schedule.version for record in feed.poll() if record.schedule] == [2, 3]


def test_a_history_that_cannot_be_read_yet_is_said_not_skipped(registry_away: list[bool]) -> None:
    """Skipped, the rendezvous found no schedule and seeded (and answered by) its bootstrap one."""
    feed = topic.ControlFeed({}, "rdv.control")
    feed._tail.history = [_record(1, 0)]  # type: ignore[attr-defined]
    with pytest.raises(BrokerError, match=r"the schedule history on rdv.control cannot be read yet \(schema "):
        feed.read_history()
    registry_away[0] = False
    assert [record.schedule.version for record in feed.read_history() if record.schedule] == [1]
