"""Records whose schema-registry id cannot be looked up yet wait for it (services/core/schema_wait.py).
The whole path, a real registry and broker: tests/integration/test_schema_registry.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import Message, TopicPartition

from services.core.codec import Codec, codec
from services.core.errors import DecodeFailed
from services.core.schema_wait import SchemaWait, before, first_waiting
from tests.unit.test_codec import REQUEST


def batch(*runs: tuple[str, int, range]) -> list[Message]:
    return [Message(topic=topic, partition=p, offset=o, value=b"") for topic, p, offsets in runs for o in offsets]


def test_a_partition_waits_from_its_first_record_that_must_and_the_others_go_on() -> None:
    messages = batch(("requests", 0, range(3, 8)), ("requests", 1, range(0, 4)), ("scores", 0, range(9, 11)))
    waiting: dict[tuple[Any, ...], str] = {
        ("requests", 0, 5): "registry down", ("requests", 0, 7): "later", ("scores", 0, 10): "spent"}

    held = first_waiting(messages, lambda m: waiting.get((m.topic(), m.partition(), m.offset())))

    assert held == {("requests", 0): (5, "registry down"), ("scores", 0): (10, "spent")}
    kept = before(messages, {key: offset for key, (offset, _why) in held.items()})
    assert [(m.topic(), m.partition(), m.offset()) for m in kept] == [
        ("requests", 0, 3), ("requests", 0, 4), *(("requests", 1, o) for o in range(4)), ("scores", 0, 9)]


class Registry:
    """Answers for schema ids, in turn: a schema, or a failure."""

    def __init__(self, *answers: Mapping[str, Any] | DecodeFailed):
        self.answers, self.asked = list(answers), 0

    def __call__(self, schema_id: int) -> Mapping[str, Any]:
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, DecodeFailed):
            raise answer
        return answer


def framed(schema_id: int) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + codec("request").encode(REQUEST)[10:]


def test_an_id_the_registry_cannot_look_up_now_is_said_why_and_asked_again_later() -> None:
    reader = Codec(codec("request").schema)
    registry = Registry(DecodeFailed("registry down: HTTP 503", retriable=True), reader.schema)
    reader.read_registry_ids(registry)

    assert reader.unresolved(framed(41)) == "registry down: HTTP 503"
    assert reader.unresolved(framed(41)) is None  # looked up now, and kept
    assert reader.unresolved(framed(41)) is None and registry.asked == 2
    assert reader.decode(framed(41))["request_id"] == REQUEST["request_id"]


def test_an_id_refused_for_good_does_not_wait_its_decode_says_why() -> None:
    reader = Codec(codec("request").schema)
    reader.read_registry_ids(Registry(DecodeFailed("schema id 9: HTTP 404")))
    assert reader.unresolved(framed(9)) is None
    try:
        reader.decode(framed(9))
    except DecodeFailed as err:
        assert "HTTP 404" in err.message
    else:
        raise AssertionError("an id the registry refused was decoded")


def test_single_object_records_and_readers_without_a_registry_never_wait() -> None:
    reader = Codec(codec("request").schema)
    assert not reader.looks_up_ids and reader.unresolved(framed(3)) is None
    registry = Registry()
    reader.read_registry_ids(registry)
    assert reader.looks_up_ids
    assert reader.unresolved(codec("request").encode(REQUEST)) is None
    assert reader.unresolved(b"") is None and reader.unresolved(None) is None and registry.asked == 0


class Asked:
    """What the wait asks of the consumer, in order (the real one's effects: the integration test)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, int, int]]]] = []

    def _note(self, what: str, partitions: list[TopicPartition]) -> None:
        self.calls.append((what, [(tp.topic, tp.partition, tp.offset) for tp in partitions]))

    def pause(self, partitions: list[TopicPartition]) -> None:
        self._note("pause", partitions)

    def rewind(self, start: TopicPartition) -> bool:
        self._note("rewind", [start])
        return True

    def resume_at(self, partitions: list[TopicPartition], starts: list[TopicPartition]) -> list[object]:
        self._note("resume_at", starts)
        return []


def waiting_on(offsets: set[tuple[str, int, int]], clock: list[float]) -> SchemaWait:
    wait = SchemaWait("test", {}, retry_s=1.0, clock=lambda: clock[0])
    wait._unresolved = lambda m: "registry down" if (m.topic(), m.partition(), m.offset()) in offsets else None  # type: ignore[method-assign]
    return wait


def test_a_held_partition_is_read_again_from_its_record_once_its_time_is_up() -> None:
    clock, consumer = [0.0], Asked()
    wait = waiting_on({("scores", 1, 4)}, clock)
    kept = wait.admit(batch(("scores", 1, range(2, 7)), ("scores", 0, range(0, 2))), consumer)
    assert [(m.partition(), m.offset()) for m in kept] == [(1, 2), (1, 3), (0, 0), (0, 1)]
    assert consumer.calls == [("pause", [("scores", 1, 4)]), ("rewind", [("scores", 1, 4)])]
    wait.resume_due(consumer, lambda _tp: False)  # not yet
    clock[0] = 1.0
    wait.resume_due(consumer, lambda _tp: False)
    assert consumer.calls[-1] == ("resume_at", [("scores", 1, 4)]) and wait.held == set()


def test_a_hold_whose_partition_flows_again_is_dropped_not_rewound_to_later() -> None:
    """Resumed early by the handler (the rendezvous' intake or brake), with the schema found by then:
    the hold's timer seeked back, and its records were read twice (a review)."""
    clock, consumer = [0.0], Asked()
    wait = waiting_on({("requests", 0, 3)}, clock)
    wait.admit(batch(("requests", 0, range(3, 5))), consumer)
    wait._unresolved = lambda _m: None  # type: ignore[method-assign]
    wait.admit(batch(("requests", 0, range(3, 9))), consumer)
    clock[0] = 5.0
    wait.resume_due(consumer, lambda _tp: False)
    assert wait.held == set() and [what for what, _ in consumer.calls] == ["pause", "rewind"]


def test_held_partitions_let_go_are_given_back_to_be_resumed() -> None:
    """librdkafka keeps a partition paused across its release and a new assignment: one given back
    to the same member was never read again (a review). Kept paused by the handler, a hold is
    left to the handler to resume."""
    clock, consumer = [0.0], Asked()
    wait = waiting_on({("requests", 0, 1), ("requests", 2, 5)}, clock)
    wait.admit(batch(("requests", 0, range(0, 3)), ("requests", 2, range(5, 6))), consumer)
    released = wait.forget([TopicPartition("requests", 0), TopicPartition("requests", 1)])
    assert [(tp.topic, tp.partition) for tp in released] == [("requests", 0)] and wait.held == {("requests", 2)}
    clock[0] = 1.0
    wait.resume_due(consumer, lambda tp: tp.partition == 2)
    assert wait.held == set() and consumer.calls[-1][0] == "rewind"
    wait.admit(batch(("requests", 2, range(5, 6))), consumer)
    assert [(tp.topic, tp.partition) for tp in wait.clear()] == [("requests", 2)] and wait.held == set()
