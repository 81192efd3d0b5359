"""Decoding Comparison batches with the compiled loop (services/core/compiled_decode.py): the same
columns as fastavro's records, and nothing invalid read."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.core import compiled_decode
from services.core.avro_walk import utf8
from services.core.avro_writer import long_bytes
from services.core.codec import codec
from services.core.comparison_columns import DecodedBatch, Rejected, Strings
from services.core.compiled_decode import CurrentBatches, decode
from tests.unit.test_compare_report import edge_records, synthetic, two_block_value

COMPARISONS = codec("comparison")
HEADER = COMPARISONS.header


def text(strings: Strings, ids: np.ndarray) -> list[str | None]:
    return [None if i < 0 else strings.values[i] for i in ids.tolist()]


def outputs(batch: DecodedBatch) -> list[tuple[Any, ...]]:
    """Every output in record order (items in order), names as text, NaN as None."""
    order = np.argsort(batch.row, kind="stable")

    def number(x: float) -> float | None:
        return None if np.isnan(x) else x

    return list(zip(batch.row[order].tolist(), text(batch.model, batch.model.ids[order]),
                    text(batch.version, batch.version.ids[order]), [number(x) for x in batch.score[order].tolist()],
                    batch.scored[order].tolist(), text(batch.label, batch.label.ids[order]),
                    batch.error[order].tolist(), [number(x) for x in batch.latency_ms[order].tolist()],
                    batch.late[order].tolist(), strict=True))  # fmt: skip


def assert_reads_as_fastavro(got: DecodedBatch, values: list[bytes]) -> None:
    records = [COMPARISONS.decode(value) for value in values]
    for name in ("created_at", "deadline", "status"):
        expected = [r[name] for r in records]
        if name == "status":
            expected = [("OK", "FALLBACK", "TIMEOUT", "ERROR").index(status) for status in expected]
        assert getattr(got, name).tolist() == expected, name
    assert got.answered_at.tolist() == [-1 if r["answered_at"] is None else r["answered_at"] for r in records]
    assert text(got.chosen, got.chosen.ids) == [r["chosen_model"] for r in records]
    assert outputs(got) == as_fastavro_reads(records)
    for strings in (got.model, got.version, got.label):  # shorter first, then by bytes
        assert strings.values == sorted(set(strings.values), key=lambda t: (len(t.encode()), t.encode()))


def as_fastavro_reads(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The outputs of `records` as `outputs` lists them (from fastavro's dicts)."""
    return [(row, o["model"], o["version"], o["score"], o["score"] is not None, o["label"], o["error"] is not None,
             o["latency_ms"], o["late"]) for row, r in enumerate(records) for o in r["outputs"]]  # fmt: skip


def batches_of(records: list[dict[str, Any]], size: int) -> list[list[bytes]]:
    values = [COMPARISONS.encode(r) for r in records]
    return [values[i : i + size] for i in range(0, len(values), size)]


def test_batches_decode_as_fastavro_does() -> None:
    for values in batches_of([*synthetic(600, seed=7), *edge_records()], 150):
        assert_reads_as_fastavro(decode(values, HEADER), values)


def test_outputs_come_in_record_order() -> None:
    """The fold relies on it to skip a sort (fold._outputs)."""
    got = decode(batches_of(synthetic(300, seed=4), 300)[0], HEADER)
    assert bool((np.diff(got.row) >= 0).all())


def test_arrays_in_several_blocks_and_records_without_outputs() -> None:
    records = synthetic(40, seed=5)
    values = [two_block_value(r) for r in records] + [COMPARISONS.encode({**records[0], "outputs": []})]
    assert_reads_as_fastavro(decode(values, HEADER), values)


def test_long_strings_are_read() -> None:
    record = synthetic(1)[0]
    value = COMPARISONS.encode({**record, "outputs": [{**record["outputs"][0], "label": "y" * 500}]})
    assert decode([value], HEADER).label.values == ["y" * 500]


@pytest.mark.parametrize("distinct", [3, 14])
def test_strings_are_told_apart_when_their_slots_collide(monkeypatch: pytest.MonkeyPatch, distinct: int) -> None:
    """A table of 16 slots for up to 15 strings: most of them share a slot with another."""
    monkeypatch.setattr(compiled_decode, "STRINGS_KEPT", 15)
    monkeypatch.setattr(compiled_decode, "_SLOTS", 16)
    records = [{**r, "chosen_model": None, "outputs": [{**o, "model": f"m{i % distinct}"} for o in r["outputs"][:1]]}
               for i, r in enumerate(synthetic(200, seed=6))]  # fmt: skip
    values = [COMPARISONS.encode(r) for r in records]
    assert_reads_as_fastavro(decode(values, HEADER), values)


def test_a_value_without_the_header_is_rejected() -> None:
    good = COMPARISONS.encode(synthetic(1)[0])
    other = b"\xc3\x01" + bytes(8) + good[10:]  # another writer schema's fingerprint
    for batch in ([good, other], [good, HEADER[:5]]):
        with pytest.raises(Rejected, match="record 1 of the batch: a value without the current schema's header"):
            decode(batch, HEADER)
    assert CurrentBatches(COMPARISONS).decode([good, other]) is None


def first_difference(a: bytes, b: bytes) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)


def damaged(value: bytes, at: int, byte: int) -> bytes:
    return value[:at] + bytes([byte]) + value[at + 1 :]


def damage_of(kind: str) -> tuple[bytes, str]:
    """A valid record and a damaged copy of it, and the reason the decoder must give."""
    record = synthetic(1)[0]
    good = COMPARISONS.encode(record)
    # Where a field lies: the first byte that differs from a record with that field changed.
    last = record["outputs"][-1]
    if kind == "late is 2":
        outputs = [*record["outputs"][:-1], {**last, "late": not last["late"]}]
        flipped = COMPARISONS.encode({**record, "outputs": outputs})
        return damaged(good, first_difference(good, flipped), 2), "neither 0 nor 1"
    if kind == "status 4":
        other = COMPARISONS.encode({**record, "status": "ERROR" if record["status"] != "ERROR" else "OK"})
        return damaged(good, first_difference(good, other), 8), "index out of range"  # zig-zag 4
    if kind == "union index 2":
        other = COMPARISONS.encode({**record, "answered_at": None if record["answered_at"] is not None else 1})
        return damaged(good, first_difference(good, other), 4), "index out of range"
    if kind == "truncated":
        return good[:-1], "past the end"
    if kind == "one byte more":
        return good + b"\x00", "bytes left"
    if kind == "varint of 11 bytes":
        return HEADER + b"\x80" * 11, "longer than 10 bytes"
    if kind == "negative length":
        return HEADER + b"\x01", "negative length"
    if kind == "a block of 2**63 outputs":
        empty = COMPARISONS.encode({**record, "outputs": []})  # the array is the last field: its 0 ends it
        return empty[:-1] + MIN_LONG + b"\x00" + b"\x00", "block of more than"
    raise AssertionError(kind)


MIN_LONG = b"\xff" * 9 + b"\x01"  # -2**63 as Avro writes it (zig-zag: 2**64 - 1); its negation overflows


@pytest.mark.parametrize("kind", ["late is 2", "status 4", "union index 2", "truncated", "one byte more",
                                  "varint of 11 bytes", "negative length", "a block of 2**63 outputs"])
def test_a_damaged_record_is_rejected_with_its_reason(kind: str) -> None:
    bad, reason = damage_of(kind)
    good = COMPARISONS.encode(synthetic(2)[1])
    with pytest.raises(Rejected, match=f"record 1 of the batch: .*{reason}"):
        decode([good, bad], HEADER)


def test_a_label_that_is_not_utf8_is_rejected() -> None:
    record = synthetic(1)[0]
    labelled = next(o for o in record["outputs"] if o["label"] is not None)
    good = COMPARISONS.encode(record)
    other = COMPARISONS.encode({**record, "outputs": [{**o, "label": "\x01" + o["label"][1:]} if o is labelled else o
                                                      for o in record["outputs"]]})  # fmt: skip
    with pytest.raises(Rejected, match="not UTF-8"):
        decode([damaged(good, first_difference(good, other), 0xFF)], HEADER)


def test_more_distinct_names_than_kept_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled_decode, "STRINGS_KEPT", 4)
    monkeypatch.setattr(compiled_decode, "_SLOTS", 8)
    record = synthetic(1)[0]
    named = [{**record, "chosen_model": None, "outputs": [{**record["outputs"][0], "model": f"model-{i}"}]}
             for i in range(5)]
    assert len(decode([COMPARISONS.encode(r) for r in named[:4]], HEADER).model.values) == 4
    with pytest.raises(Rejected, match="record 4 of the batch: more than 4 distinct strings"):
        decode([COMPARISONS.encode(r) for r in named], HEADER)


def test_a_bug_in_the_decoder_hands_the_batch_to_the_slower_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    batches = CurrentBatches(COMPARISONS)

    def broken(_values: Any, _header: bytes) -> None:
        raise IndexError("a bug")

    monkeypatch.setattr(compiled_decode, "decode", broken)
    assert batches.decode([COMPARISONS.encode(synthetic(1)[0])]) is None
    assert "columnar decoding failed" in caplog.text


def _with_one_output(**changes: Any) -> dict[str, Any]:
    output = {"model": "m", "version": "v", "score": 0.5, "label": "l", "error": "e", "latency_ms": 3.0,
              "compute_ms": 1.0, "late": False}
    record = {"request_id": "r", "created_at": 1_700_000_000_000, "deadline": 1_700_000_000_200,
              "answered_at": 1_700_000_000_010, "status": "OK", "chosen_model": "m", "reason": "x",
              "schedule": "s", "schedule_version": 1, "outputs": [output]}
    for field, value in changes.items():
        if field in output:
            output[field] = value
        else:
            record[field] = value
    return record


@pytest.mark.parametrize("field", ["request_id", "chosen_model", "reason", "schedule", "model", "version", "label",
                                   "error"])
def test_a_length_near_2_to_the_63_is_past_the_end_not_a_wrap_around(field: str) -> None:
    """pos + size overflowed: the check passed and the next read was far outside the buffer (a
    segfault of the comparison service, again after every restart)."""
    base = _with_one_output()
    value = base["outputs"][0][field] if field in base["outputs"][0] else base[field]
    good = COMPARISONS.encode(base)
    at = first_difference(good, COMPARISONS.encode(_with_one_output(**{field: value + "z"})))  # its length
    bad = good[:at] + long_bytes(2**63 - 1) + good[at + 1:]
    with pytest.raises(Rejected, match=r"record 1 of the batch: .*past the end"):
        decode([good, bad], HEADER)


@pytest.mark.parametrize("field", ["request_id", "reason", "schedule", "error"])
def test_a_skipped_string_that_is_not_utf8_is_rejected_as_fastavro_rejects_it(field: str) -> None:
    """These strings are skipped, not read: unchecked, a record fastavro refuses was counted when
    its batch was large enough for this decoder, and dead-lettered when it was not."""
    record = synthetic(1)[0]
    if field == "error":
        record = {**record, "outputs": [{**record["outputs"][0], "error": "boom"}, *record["outputs"][1:]]}
    else:
        record = {**record, field: "some text"}
    good = COMPARISONS.encode(record)
    if field == "error":
        marked = {**record, "outputs": [{**record["outputs"][0], "error": "\x01oom"}, *record["outputs"][1:]]}
    else:
        marked = {**record, field: "\x01" + record[field][1:]}
    bad = damaged(good, first_difference(good, COMPARISONS.encode(marked)), 0xFF)
    with pytest.raises(Exception):  # noqa: B017 - fastavro's own UnicodeDecodeError or BadInput
        COMPARISONS.decode(bad)
    with pytest.raises(Rejected, match="record 1 of the batch: a string that is not UTF-8"):
        decode([good, bad], HEADER)


def test_the_compiled_utf8_check_agrees_with_pythons_decoder() -> None:
    edges = [b"", b"plain", "é".encode(), "€".encode(), "𝄞".encode(), b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80",
             b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\x9f\xbf", b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80",
             b"\xf4\x8f\xbf\xbf", b"\xf5\x80\x80\x80", b"\xff", b"\xe2\x82", b"a\xe2\x82\xac", b"\x80", b"\xc3("]
    rng = np.random.default_rng(7)
    alphabet = np.array([0x41, 0x7F, 0x80, 0xBF, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xA0, 0x9F, 0x90],
                        dtype=np.uint8)
    drawn = [rng.choice(alphabet, size=int(rng.integers(1, 7))).tobytes() for _ in range(3000)]
    for text in edges + drawn:
        try:
            text.decode("utf-8")
            python_takes = True
        except UnicodeDecodeError:
            python_takes = False
        buf = np.frombuffer(b"\x00" + text + b"\x00", dtype=np.uint8)  # with bytes around it, never read
        assert utf8(buf, 1, 1 + len(text)) is python_takes, text
