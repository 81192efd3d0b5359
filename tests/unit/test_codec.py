"""Single-object encoding: round trip, fingerprint, evolution, bad input."""

from __future__ import annotations

import copy
import io
import struct

import fastavro
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from services.core.codec import MAGIC, Codec, codec, crc64_avro
from services.core.errors import DecodeFailed, UnknownFingerprint

REQUEST = {
    "request_id": "r-1",
    "created_at": 1_700_000_000_000,
    "deadline": 1_700_000_000_200,
    "reply_to": {"topic": "replies", "partition": 3},
    "features": {"a": 1.5, "b": -2.0},
    "payload": {"content_type": "text/plain", "data": b"hi"},
    "metadata": {"tenant": "t"},
}


def test_round_trip_keeps_every_field_and_times_stay_ints() -> None:
    c = codec("request")
    decoded = c.decode(c.encode(REQUEST))
    assert decoded == REQUEST
    assert isinstance(decoded["created_at"], int)


def test_header_is_magic_plus_little_endian_crc64_of_canonical_form() -> None:
    c = codec("request")
    data = c.encode(REQUEST)
    canonical = to_parsing_canonical_form(fastavro.parse_schema(c.schema))
    assert data[:2] == MAGIC
    assert data[2:10] == struct.pack("<Q", crc64_avro(canonical.encode()))
    assert data[2:10].hex() == fastavro_fingerprint(canonical, "CRC-64-AVRO")


def test_crc64_avro_known_vector() -> None:
    # The fingerprint of the schema "null" (Avro spec test vector: 0x63dd24e7cc258f8a).
    assert crc64_avro(b'"null"') == 0x63DD24E7CC258F8A


def test_body_is_plain_avro_readable_by_fastavro() -> None:
    c = codec("request")
    body = c.encode(REQUEST)[10:]
    decoded = fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(c.schema))
    assert decoded["request_id"] == "r-1"


def _with_added_field(schema: dict[str, object]) -> dict[str, object]:
    newer = copy.deepcopy(schema)
    newer["fields"].append({"name": "priority", "type": "int", "default": 5})  # type: ignore[attr-defined]
    return newer


def test_new_reader_decodes_old_writer_with_the_default() -> None:
    old = codec("request").schema
    old_writer = Codec(old)
    new_reader = Codec(_with_added_field(old), older_writers=[old])
    decoded = new_reader.decode(old_writer.encode(REQUEST))
    assert decoded["priority"] == 5 and decoded["request_id"] == "r-1"


def test_old_reader_that_knows_the_new_writer_ignores_the_added_field() -> None:
    old = codec("request").schema
    newer = _with_added_field(old)
    reader = Codec(old, older_writers=[newer])
    assert reader.decode(Codec(newer).encode({**REQUEST, "priority": 9})) == REQUEST


def test_unknown_fingerprint_is_bad_input() -> None:
    newer = _with_added_field(codec("request").schema)
    with pytest.raises(UnknownFingerprint, match="unknown writer schema fingerprint"):
        codec("request").decode(Codec(newer).encode({**REQUEST, "priority": 1}))


@pytest.mark.parametrize(
    "data",
    [None, b"", b"\xc3", b"plain text", b"\xc3\x01" + b"\x00" * 8, codec("request").encode(REQUEST)[:30],
     codec("request").encode(REQUEST) + b"\x00"],
)
def test_corrupt_bytes_are_bad_input_never_a_crash(data: bytes | None) -> None:
    with pytest.raises((DecodeFailed, UnknownFingerprint)):
        codec("request").decode(data)


def test_every_schema_file_has_a_codec() -> None:
    for name in ("request", "score", "answer", "comparison", "deadletter"):
        assert len(codec(name).fingerprint) == 8
