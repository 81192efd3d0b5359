"""Decoding Comparison batches by shape (services/core/shapedecode.py): the same columns as the
lockstep walk, across batches that reuse, add and forget shapes, and nothing invalid read."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.core.codec import codec
from services.core.shapedecode import CurrentBatches, Shapes, walk
from services.core.vectordecode import DecodedBatch, Rejected, Strings, decode_bodies
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


def assert_same(got: DecodedBatch, expected: DecodedBatch) -> None:
    for name in ("created_at", "deadline", "answered_at", "status"):
        assert getattr(got, name).tolist() == getattr(expected, name).tolist(), name
    assert text(got.chosen, got.chosen.ids) == text(expected.chosen, expected.chosen.ids)
    assert outputs(got) == outputs(expected)
    for strings in (got.model, got.version, got.label):  # the order vectordecode gives them
        assert strings.values == sorted(set(strings.values), key=lambda t: (len(t.encode()), t.encode()))


def batches_of(records: list[dict[str, Any]], size: int) -> list[list[bytes]]:
    values = [COMPARISONS.encode(r) for r in records]
    return [values[i : i + size] for i in range(0, len(values), size)]


@pytest.mark.parametrize(("kept", "walks"), [(64, 16), (3, 2), (1, 0)])
def test_batches_decode_as_the_lockstep_walk_does(kept: int, walks: int) -> None:
    """Small caches and few walks send records to the lockstep walk and forget shapes: the
    columns stay the same."""
    shapes = Shapes(HEADER, kept=kept, walks=walks)
    renamed = [{**r, "outputs": [{**o, "model": o["model"][:-1] + "X"} for o in r["outputs"]]}
               for r in synthetic(150, seed=8)]  # same lengths as the first batches, other names
    for values in batches_of([*synthetic(600, seed=7), *renamed, *edge_records()], 150):
        assert_same(shapes.decode(values), decode_bodies(values, skip=len(HEADER)))
    assert len(shapes._known) <= kept


def test_labels_of_one_length_told_apart_within_a_shape() -> None:
    """A shape fixes a label's length, not its text: "ab" and "cd" share shapes."""
    rng = np.random.default_rng(4)
    records = [{**r, "outputs": [{**o, "label": None if o["label"] is None else ("ab", "cd")[int(rng.integers(2))]}
                                 for o in r["outputs"]]} for r in synthetic(300, seed=9)]  # fmt: skip
    shapes = Shapes(HEADER)
    for values in batches_of(records, 100):
        got = shapes.decode(values)
        assert_same(got, decode_bodies(values, skip=len(HEADER)))
        assert set(got.label.values) == {"ab", "cd"}


def test_arrays_in_several_blocks_and_records_without_outputs() -> None:
    records = synthetic(40, seed=5)
    values = [two_block_value(r) for r in records] + [COMPARISONS.encode({**records[0], "outputs": []})]
    shapes = Shapes(HEADER)
    for _ in range(2):  # learnt, then matched
        assert_same(shapes.decode(values), decode_bodies(values, skip=len(HEADER)))


def test_a_value_without_the_header_is_rejected_whether_walked_or_left_over() -> None:
    good = COMPARISONS.encode(synthetic(1)[0])
    other = b"\xc3\x01" + bytes(8) + good[10:]  # another writer schema's fingerprint
    with pytest.raises(Rejected, match="header"):
        Shapes(HEADER).decode([good, other])
    with pytest.raises(Rejected, match="header"):
        Shapes(HEADER, walks=1).decode([good, other])
    assert CurrentBatches(COMPARISONS).decode([good, other]) is None


def damaged(value: bytes, at: int, byte: int) -> bytes:
    return value[:at] + bytes([byte]) + value[at + 1 :]


@pytest.mark.parametrize("damage", ["late is 2", "status 4", "truncated", "one byte more", "label not UTF-8",
                                    "name byte"])
def test_a_damaged_record_never_fits_a_learnt_shape(damage: str) -> None:
    """The shape of `good` is learnt first; the damaged copy must then be walked (and rejected, or
    read as what it is), never read at the good one's offsets."""
    good = COMPARISONS.encode(synthetic(1)[0])
    shape = walk(good, HEADER)
    shapes = Shapes(HEADER)
    shapes.decode([good])
    if damage == "late is 2":
        bad = damaged(good, shape.items[-1].late, 2)
    elif damage == "status 4":
        bad = damaged(good, shape.status[0], 8)  # zig-zag 4: one past the last symbol
    elif damage == "truncated":
        bad = good[:-1]
    elif damage == "one byte more":
        bad = good + b"\x00"
    elif damage == "label not UTF-8":
        label = next(item.label for item in shape.items if item.label is not None)
        assert label is not None
        bad = damaged(good, label[0], 0xFF)
    else:  # the same length, another (chosen) model name: a valid record of another shape
        bad = damaged(good, good.index(b"champion"), ord("k"))
        got = shapes.decode([good, bad])
        assert_same(got, decode_bodies([good, bad], skip=len(HEADER)))
        assert text(got.chosen, got.chosen.ids) == ["champion", "khampion"]
        return
    with pytest.raises(Rejected):
        shapes.decode([good, bad])
    with pytest.raises(Rejected):
        decode_bodies([good, bad], skip=len(HEADER))  # the lockstep walk rejects it too


def test_a_walk_rejects_what_the_lockstep_walk_rejects() -> None:
    record = synthetic(1)[0]
    long_label = COMPARISONS.encode({**record, "outputs": [{**record["outputs"][0], "label": "y" * 65}]})
    for value in (long_label, HEADER + b"\x80" * 11):
        with pytest.raises(Rejected):
            walk(value, HEADER)
        with pytest.raises(Rejected):
            decode_bodies([value], skip=len(HEADER))


def test_a_bug_in_the_shapes_hands_the_batch_to_the_slower_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    batches = CurrentBatches(COMPARISONS)

    def broken(_values: Any) -> None:
        raise IndexError("a bug")

    monkeypatch.setattr(batches.shapes, "decode", broken)
    assert batches.decode([COMPARISONS.encode(synthetic(1)[0])]) is None
    assert "columnar decoding failed" in caplog.text
