"""Comparison records decoded into columns by a compiled loop (numba): one plain Avro walk per record.

Why: the comparison service and `rendezvous compare` read every record of the log. fastavro
costs ~17 µs a record (a dict per record and per output); numpy alone needed ~650 lines of bit
masks to match records to learnt shapes, for ~0.85 µs a record, most of it numpy's cost per call.
Compiled, the walk a reader of the Avro specification would write — a varint, a string length, a
union index at a time — costs ~0.3 µs a record (~0.45 with the Python around it: 251-byte records
of three outputs, batches of 500), and reads plainly.

It walks one layout, `comparison_columns.LAYOUT` (the current `schemas/comparison.avsc`), and
checks every step as fastavro would: the single-object header, varints of at most 10 bytes, lengths
inside the record, union and enum indexes in range, booleans 0/1, an array block of at most
`MAX_ITEMS` items, the last field ending exactly at the record's end. The strings the readers need
(model, version, label, chosen model) are interned as they are met (a small hash table per kind
of string, in the loop), so only the distinct ones become `str` (and are checked to be UTF-8);
the others (request id, reason, schedule, error text) are skipped. Any failure raises `Rejected`
naming the record and why: the caller's fastavro path takes the batch and dead-letters the bad
record. The columns are a `comparison_columns.DecodedBatch`, the same as fastavro's records
(tests/unit/test_compiled_decode.py, tests/unit/test_compare_report.py).

The loop is compiled at first use and cached on disk (services/core/compiled.py: a few hundred
milliseconds to load, about five seconds to compile where there is no cache yet): services call
`warm_up()` when they start, so that no batch waits for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from services.core.avro_walk import NEGATIVE, PAST_END, STEP_REASONS, branch, checked_string, string, varint
from services.core.codec import Codec
from services.core.comparison_columns import MAX_ITEMS, DecodedBatch, Rejected, Strings, layout_matches, split_current
from services.core.compiled import compiled

log = logging.getLogger(__name__)

# Fewest bytes a ModelOutput can take (two empty strings, three null unions, two doubles, a
# boolean): the output columns are sized for the most outputs a batch's bytes can hold.
MIN_OUTPUT_BYTES = 22
STRINGS_KEPT = 4096  # distinct strings of one kind in one batch; more (not a real log) fall back
_SLOTS = 2 * STRINGS_KEPT  # open addressing, at most half full
_NULL_DOUBLE = np.uint64(0x7FF8000000000000)  # a quiet NaN: the score column's null

# Why a batch was refused, by the code the loop returns (after those of a step, avro_walk.py).
_HEADER, _BAD_BOOLEAN, _TRAILING, _BIG_BLOCK, _TOO_MANY_STRINGS = range(len(STEP_REASONS) + 1, len(STEP_REASONS) + 6)
REASONS = {
    **STEP_REASONS,
    _HEADER: "a value without the current schema's header",
    _BAD_BOOLEAN: "a boolean that is neither 0 nor 1",
    _TRAILING: "bytes left after the last field",
    _BIG_BLOCK: f"an array block of more than {MAX_ITEMS} items",
    _TOO_MANY_STRINGS: "more than {kept} distinct strings of one kind",
}

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


@compiled(inline="always")
def _bits(buf: np.ndarray, pos: int) -> np.uint64:
    """The 8 bytes at `pos` as a little-endian uint64 (a double's bits)."""
    value = np.uint64(0)
    for k in range(8):
        value |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
    return value


@compiled(inline="always")
def _intern(buf: np.ndarray, start: int, size: int, kind: int, slots: np.ndarray, table: np.ndarray,
            counts: np.ndarray) -> int:
    """The id of the string at (start, size) among those of its `kind` met so far (a new id when
    it is new); -1 when the kind already holds STRINGS_KEPT. `table[kind, i]` is (start, size) of
    id i."""
    h = _FNV_OFFSET
    for i in range(start, start + size):
        h = (h ^ np.uint64(buf[i])) * _FNV_PRIME
    mask = slots.shape[1] - 1
    slot = np.int64(h & np.uint64(mask))
    while True:
        found = slots[kind, slot]
        if found < 0:
            found = counts[kind]
            if found >= table.shape[1]:
                return -1
            counts[kind] = found + 1
            slots[kind, slot] = found
            table[kind, found, 0] = start
            table[kind, found, 1] = size
            return found
        if table[kind, found, 1] == size:
            other = table[kind, found, 0]
            same = True
            for i in range(size):
                if buf[start + i] != buf[other + i]:
                    same = False
                    break
            if same:
                return found
        slot = (slot + 1) & mask


@compiled(inline="always")
def _interned(buf, pos, end, kind, slots, tables, counts):  # type: ignore[no-untyped-def]
    """(id among the strings of its `kind`, position after it) of the string at `pos`
    (`_intern`; its UTF-8 is checked once per distinct string, when it becomes a `str`)."""
    start, pos = string(buf, pos, end)
    if pos < 0:
        return 0, pos
    found = _intern(buf, start, pos - start, kind, slots, tables, counts)
    if found < 0:
        return 0, -_TOO_MANY_STRINGS
    return found, pos


@compiled()
def _walk(buf, header, starts, ends, records, outputs, slots, tables, counts):  # type: ignore[no-untyped-def]
    """Decode every record of the batch into `records` (created_at, deadline, answered_at,
    status, chosen) and `outputs` (row, model, version, score bits, scored, label, error,
    latency bits, late); returns (outputs written, 0, 0) or (-1, reason code, record index).
    A step returns minus its reason as the position when it fails (avro_walk.py): `pos < 0`."""
    n_out = 0
    for r in range(len(starts)):
        pos, end = starts[r], ends[r]
        if end - pos < len(header):
            return -1, _HEADER, r
        for k in range(len(header)):
            if buf[pos + k] != header[k]:
                return -1, _HEADER, r
        pos += len(header)
        # request_id: skipped, its text checked all the same (as each skipped string's): a record
        # is refused alike whichever decoder reads its batch
        _start, pos = checked_string(buf, pos, end)
        if pos < 0:
            return -1, -pos, r
        # created_at, deadline
        for column in range(2):
            value, pos = varint(buf, pos, end)
            if pos < 0:
                return -1, -pos, r
            records[column, r] = value
        # answered_at: [null, long]
        present, pos = branch(buf, pos, end, 2)
        records[2, r] = -1
        if pos >= 0 and present:
            records[2, r], pos = varint(buf, pos, end)
        if pos < 0:
            return -1, -pos, r
        records[3, r], pos = branch(buf, pos, end, 4)  # status: an enum of 4
        if pos < 0:
            return -1, -pos, r
        # chosen_model: [null, string], interned with the model names
        present, pos = branch(buf, pos, end, 2)
        records[4, r] = -1
        if pos >= 0 and present:
            records[4, r], pos = _interned(buf, pos, end, 0, slots, tables, counts)
        if pos < 0:
            return -1, -pos, r
        # reason, schedule: skipped; schedule_version: read past
        for _skipped in range(2):
            _start, pos = checked_string(buf, pos, end)
            if pos < 0:
                return -1, -pos, r
        _value, pos = varint(buf, pos, end)
        if pos < 0:
            return -1, -pos, r
        # outputs: array blocks of ModelOutput until a block of 0 items
        while True:
            items, pos = varint(buf, pos, end)
            if pos < 0:
                return -1, -pos, r
            if items == 0:
                break
            if items < 0:  # a negative count is followed by the block's size in bytes
                items = -items
                value, pos = varint(buf, pos, end)
                if pos < 0:
                    return -1, -pos, r
                if value < 0:
                    return -1, NEGATIVE, r
            if items < 0 or items > MAX_ITEMS:  # still < 0: it was -2**63, a block of 2**63 items
                return -1, _BIG_BLOCK, r
            for _item in range(items):
                if n_out >= outputs.shape[1]:
                    return -1, PAST_END, r  # more outputs than the bytes can hold: cannot be valid
                outputs[0, n_out] = r
                # model, version: strings, interned by kind
                for kind in range(2):
                    outputs[1 + kind, n_out], pos = _interned(buf, pos, end, kind, slots, tables, counts)
                    if pos < 0:
                        return -1, -pos, r
                # score: [null, double]
                scored, pos = branch(buf, pos, end, 2)
                if pos < 0:
                    return -1, -pos, r
                outputs[3, n_out] = np.int64(_NULL_DOUBLE)
                outputs[4, n_out] = scored
                if scored:
                    if pos + 8 > end:
                        return -1, PAST_END, r
                    outputs[3, n_out] = np.int64(_bits(buf, pos))
                    pos += 8
                # label: [null, string], interned
                present, pos = branch(buf, pos, end, 2)
                outputs[5, n_out] = -1
                if pos >= 0 and present:
                    outputs[5, n_out], pos = _interned(buf, pos, end, 2, slots, tables, counts)
                if pos < 0:
                    return -1, -pos, r
                # error: [null, string], skipped (only whether there is one)
                failed, pos = branch(buf, pos, end, 2)
                outputs[6, n_out] = failed
                if pos >= 0 and failed:
                    _start, pos = checked_string(buf, pos, end)
                if pos < 0:
                    return -1, -pos, r
                # latency_ms, compute_ms (skipped): doubles; late: a boolean
                if pos + 17 > end:
                    return -1, PAST_END, r
                outputs[7, n_out] = np.int64(_bits(buf, pos))
                late = buf[pos + 16]
                if late > 1:
                    return -1, _BAD_BOOLEAN, r
                outputs[8, n_out] = late
                pos += 17
                n_out += 1
        if pos != end:
            return -1, _TRAILING, r
    return n_out, 0, 0


# The kinds of interned strings, in the order of `_walk`'s tables.
_MODELS, _VERSIONS, _LABELS = range(3)


def decode(values: Sequence[bytes], header: bytes) -> DecodedBatch:
    """The columns of `values` (each `header` then a Comparison body); `Rejected` naming the first
    record that is not valid."""
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    ends = np.cumsum(lengths)
    buf = np.frombuffer(b"".join(values), dtype=np.uint8)
    records = np.empty((5, len(values)), dtype=np.int64)
    outputs = np.empty((9, len(buf) // MIN_OUTPUT_BYTES + 1), dtype=np.int64)
    slots = np.full((3, _SLOTS), -1, dtype=np.int64)
    tables = np.empty((3, STRINGS_KEPT, 2), dtype=np.int64)
    counts = np.zeros(3, dtype=np.int64)
    header_bytes = np.frombuffer(header, dtype=np.uint8)
    written, reason, record = _walk(buf, header_bytes, ends - lengths, ends, records, outputs, slots, tables, counts)
    if written < 0:
        raise Rejected(f"record {record} of the batch: {REASONS[reason].format(kept=STRINGS_KEPT)}")
    out = outputs[:, :written]
    texts = [_texts(buf, tables[kind, : counts[kind]]) for kind in range(3)]
    models = _ordered(texts[_MODELS], records[4], out[1])
    return DecodedBatch(
        created_at=records[0], deadline=records[1], answered_at=records[2], status=records[3],
        chosen=Strings(models.values, models.ids[: len(values)]),
        row=out[0], model=Strings(models.values, models.ids[len(values):]),
        version=_ordered(texts[_VERSIONS], out[2]), label=_ordered(texts[_LABELS], out[5]),
        score=out[3].view(np.float64), scored=out[4].astype(bool), error=out[6].astype(bool),
        latency_ms=out[7].view(np.float64), late=out[8].astype(bool),
    )  # fmt: skip


def _texts(buf: np.ndarray, table: np.ndarray) -> list[bytes]:
    return [buf[start : start + size].tobytes() for start, size in table.tolist()]


def _ordered(texts: list[bytes], *ids: np.ndarray) -> Strings:
    """`texts` as strings in the other decoders' order (shorter first, then by bytes), with `ids`
    (concatenated) renumbered to match; `Rejected` if one is not UTF-8."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), texts[i]))
    try:
        values = [texts[i].decode("utf-8") for i in order]
    except UnicodeDecodeError:
        raise Rejected("a string that is not UTF-8") from None
    rank = np.empty(len(order) + 1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    rank[-1] = -1  # id -1 (null) stays -1
    return Strings(values, rank[np.concatenate(ids)] if len(ids) > 1 else rank[ids[0]])


def warm_up() -> None:
    """Compile (or load from the cache) the loop now, so that no batch waits for it."""
    decode([], b"")


class CurrentBatches:
    """The compiled decoder for one codec's values: usable while the codec's schema still has
    `LAYOUT`, for values that all carry the codec's current single-object header. The comparison
    service and the report both choose between it and fastavro with it."""

    def __init__(self, codec: Codec) -> None:
        self.header = codec.header
        self.usable = layout_matches(codec.schema)

    def split(self, values: Sequence[bytes | None]) -> tuple[list[bytes], list[bytes | None]]:
        """The values written with the current schema, and the others (`split_current`)."""
        return split_current(values, self.header)

    def decode(self, values: Sequence[bytes]) -> DecodedBatch | None:
        """The columns of `values`; None when this decoder cannot take them all exactly (the
        schema changed, a value lacks the current header, or one is not valid): the caller's
        fastavro path does, and dead-letters what is not valid."""
        if not self.usable:
            return None
        try:
            return decode(values, self.header)
        except Rejected as why:
            log.debug("the compiled decoder rejected a batch of %d (%s): fastavro takes it", len(values), why)
            return None
        # A bug here must not stop a service: the caller's record-by-record path decodes the batch.
        except Exception:
            log.exception("columnar decoding failed on a batch of %d; fastavro takes it", len(values))
            return None
