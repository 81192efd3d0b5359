"""Committable offsets: everything below the oldest record still in use, with its mark."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import TopicPartition

from services.rendezvous.offsets import OffsetBook


@dataclass
class Owner:
    closed: bool = False

    @property
    def settled(self) -> bool:
        return self.closed


def test_commit_stops_at_the_oldest_open_mailbox() -> None:
    book = OffsetBook()
    first, second = Owner(), Owner()
    book.track("req", 0, 10, first)
    book.track("req", 0, 11, None)
    book.track("req", 0, 12, second)
    assert [(t.partition, t.offset) for t in book.to_commit()] == [(0, 10)]
    second.closed = True
    assert [t.offset for t in book.to_commit()] == [10]
    first.closed = True
    moves = book.to_commit()
    assert [t.offset for t in moves] == [13]
    book.mark_committed(moves)
    assert book.to_commit() == []
    book.forget([TopicPartition("req", 0)])
    assert book.to_commit() == []


def test_the_mark_of_the_oldest_open_record_travels_with_its_offset() -> None:
    book = OffsetBook()
    first, second = Owner(), Owner()
    book.track("req", 1, 5, first, mark="a=3")
    book.track("req", 1, 6, second, mark="a=4")
    assert [(t.offset, t.metadata) for t in book.to_commit(lambda _t, _p, _o: "now")] == [(5, "a=3")]
    first.closed = True
    assert [(t.offset, t.metadata) for t in book.to_commit(lambda _t, _p, _o: "now")] == [(6, "a=4")]
    second.closed = True
    assert [(t.offset, t.metadata) for t in book.to_commit(lambda _t, p, o: f"now {p}@{o}")] == [(7, "now 1@7")]
