"""Records whose schema-registry id cannot be looked up yet wait for it (services/core/schema_wait.py).
The whole path, a real registry and broker: tests/integration/test_schema_registry.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import Message

from services.core.codec import Codec, codec
from services.core.errors import DecodeFailed
from services.core.schema_wait import before, first_waiting
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
