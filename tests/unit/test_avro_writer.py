"""The compiled encoders (services/core/avro_writer.py) write exactly fastavro's bytes, and any
value they do not take goes to fastavro, which writes or refuses it as it always did."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core import avro_writer
from services.core.avro_writer import Unfit, compile_encoder, long_bytes, string_bytes
from services.core.codec import CODEC_NAMES, codec, load_schema, parse_plain, schemas_dir

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCHEMAS = (*CODEC_NAMES, "archived_request")


def _plain_values(node: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Records of exactly the plain Python types the schema node asks for."""
    if isinstance(node, list):
        return st.one_of(*(_plain_values(branch, named) for branch in node))
    if isinstance(node, str):
        simple: dict[str, st.SearchStrategy[Any]] = {
            "null": st.none(), "boolean": st.booleans(), "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1), "double": st.floats(width=64), "string": st.text(max_size=30),
            "bytes": st.binary(max_size=30),
        }
        return simple[node] if node in simple else named[node.rpartition(".")[2]]
    kind = node["type"]
    if kind == "record":
        fields = {f["name"]: _plain_values(f["type"], named) for f in node["fields"]}
        named[node["name"]] = strategy = st.fixed_dictionaries(fields)
        return strategy
    if kind == "enum":
        named[node["name"]] = strategy = st.sampled_from(node["symbols"])
        return strategy
    if kind == "array":
        return st.lists(_plain_values(node["items"], named), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), _plain_values(node["values"], named), max_size=4)
    return _plain_values(kind, named)


def _fastavro_bytes(name: str, record: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_plain(codec(name).schema), record)
    return buf.getvalue()


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_schema_compiles(name: str) -> None:
    assert compile_encoder(codec(name).schema) is not None


@pytest.mark.parametrize("name", SCHEMAS)
@FAST
@given(data=st.data())
def test_compiled_bytes_equal_fastavro_on_generated_records(name: str, data: st.DataObject) -> None:
    schema = codec(name).schema
    record = data.draw(_plain_values(schema, {}))
    encoder = compile_encoder(schema)
    assert encoder is not None
    assert encoder(record) == _fastavro_bytes(name, record)  # plain values: never Unfit


ANSWER: dict[str, Any] = {
    "request_id": "r", "status": "OK", "model": "m", "version": "1", "score": 0.5, "label": None, "reason": "r",
    "created_at": 1, "deadline": 2, "answered_at": 3, "schedule": "s", "schedule_version": 1,
}
def test_strings_repeated_past_the_cache_still_encode_right() -> None:
    encoder = compile_encoder(codec("answer").schema)
    assert encoder is not None
    for i in range(avro_writer.STRINGS_KEPT + 50):
        record = {**ANSWER, "request_id": f"id-{i}", "reason": f"reason {i % 7}"}
        assert encoder(record) == _fastavro_bytes("answer", record)


def test_long_strings_are_encoded_but_not_kept() -> None:
    """Kept whatever their size, 1,024 strings of a megabyte at one place of a schema (feature
    names a gateway client sent) were held for good (a review): only short ones are kept."""
    import gc
    import tracemalloc

    encoder = compile_encoder(codec("answer").schema)
    assert encoder is not None
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(40):
            record = {**ANSWER, "reason": f"{i} " + "x" * 100_000}
            assert encoder(record) == _fastavro_bytes("answer", record)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1_000_000  # 40 reasons of 100 kB each, kept: 8 MB (the string and its bytes)


UNFIT: list[tuple[str, dict[str, Any], str | None]] = [
    ("an int where a double is due", {"score": 1}, None),
    ("a numpy float", {"score": np.float64(0.25)}, None),
    ("a str subclass", {"model": type("Name", (str,), {})("m")}, None),
    ("a lone surrogate", {"reason": "bad \udc80"}, None),
    ("a long out of range", {"created_at": 2**63}, None),
    ("an unknown enum symbol", {"status": "MAYBE"}, None),
    ("a missing field with a default", {}, "schedule"),
    ("a missing field without a default", {}, "reason"),
]


@pytest.mark.parametrize(("what", "change", "missing"), UNFIT, ids=[u[0] for u in UNFIT])
def test_values_it_does_not_take_go_to_fastavro_with_the_same_outcome(
    what: str, change: dict[str, Any], missing: str | None
) -> None:
    answers = codec("answer")
    record = {k: v for k, v in {**ANSWER, **change}.items() if k != missing}
    encoder = compile_encoder(answers.schema)
    assert encoder is not None
    with pytest.raises(Unfit):
        encoder(record)
    try:
        expected: bytes | type[BaseException] = answers.header + _fastavro_bytes("answer", record)
    except Exception as exc:  # noqa: BLE001 (whatever fastavro raises, the codec must raise the same)
        expected = type(exc)
    if isinstance(expected, bytes):
        assert answers.encode(record) == expected
    else:
        with pytest.raises(expected):
            answers.encode(record)


def test_a_schema_with_a_construct_it_does_not_compile_gets_no_encoder() -> None:
    fixed = {"type": "record", "name": "F",
             "fields": [{"name": "f", "type": {"type": "fixed", "name": "X", "size": 2}}]}
    union = {"type": "record", "name": "U", "fields": [{"name": "u", "type": ["null", "long", "string"]}]}
    recursive = {"type": "record", "name": "Node",
                 "fields": [{"name": "next", "type": ["null", "Node"]}]}
    assert [compile_encoder(s) for s in (fixed, union, recursive)] == [None, None, None]


def test_a_named_type_used_twice_is_written_both_times() -> None:
    schema = {"type": "record", "name": "Pair", "namespace": "t", "fields": [
        {"name": "a", "type": {"type": "enum", "name": "Side", "symbols": ["L", "R"]}},
        {"name": "b", "type": "t.Side"}, {"name": "c", "type": "Side"}]}
    encoder = compile_encoder(schema)
    assert encoder is not None
    record = {"a": "R", "b": "L", "c": "R"}
    buf = io.BytesIO()
    schemaless_writer(buf, parse_plain(schema), record)
    assert encoder(record) == buf.getvalue() == b"\x02\x00\x02"


@pytest.mark.parametrize("n", [0, 1, -1, 63, -64, 64, 2**31, -(2**63), 2**63 - 1, 1_764_470_000_000])
def test_long_bytes_is_avro_zigzag(n: int) -> None:
    schema = {"type": "record", "name": "L", "fields": [{"name": "n", "type": "long"}]}
    buf = io.BytesIO()
    schemaless_writer(buf, parse_plain(schema), {"n": n})
    assert long_bytes(n) == buf.getvalue()


def test_string_bytes_counts_utf8_bytes() -> None:
    assert string_bytes("é") == b"\x04\xc3\xa9"


def test_the_schema_files_are_the_ones_tested() -> None:
    assert {p.stem for p in schemas_dir().glob("*.avsc")} == set(SCHEMAS)
    assert all(load_schema(schemas_dir() / f"{n}.avsc")["type"] == "record" for n in SCHEMAS)


@pytest.mark.parametrize("value", [None, "x"])
def test_a_union_with_null_second_writes_the_right_branch(value: str | None) -> None:
    schema = {"type": "record", "name": "N", "fields": [{"name": "u", "type": ["string", "null"]}]}
    encoder = compile_encoder(schema)
    assert encoder is not None
    buf = io.BytesIO()
    schemaless_writer(buf, parse_plain(schema), {"u": value})
    assert encoder({"u": value}) == buf.getvalue()


def test_varints_stay_right_and_cached_past_the_cache_of_high_bytes() -> None:
    def fastavro_long(value: int) -> bytes:
        buf = io.BytesIO()
        schemaless_writer(buf, "long", value)
        return buf.getvalue()

    base = 1_796_000_000_000  # epoch ms: zig-zagged, a new high part every 8,192
    values = [base + k * (1 << 13) + k % 100 for k in range(avro_writer.HIGH_GROUPS_KEPT + 50)]
    assert [long_bytes(v) for v in values] == [fastavro_long(v) for v in values]
    assert (values[-1] << 1) >> 14 in avro_writer._HIGH_GROUPS  # the newest is still kept once it was full
    assert len(avro_writer._HIGH_GROUPS) <= avro_writer.HIGH_GROUPS_KEPT
