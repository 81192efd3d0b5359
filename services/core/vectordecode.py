"""Decoding a batch of Comparison bodies straight into columns, all records at once, with numpy.

Why: fastavro builds five dicts and a dozen strings per record only for the report to take them
apart again; reading a million records that way cost ~25 s of CPU, this way ~5 s
(bench/compare_read.py, reading included). Here
the Avro binary encoding is walked field by field for every record of the batch in lockstep:
one numpy operation reads, say, `created_at` of 10,000 records (a varint at 10,000 cursors),
and strings the report needs (model, version, label, chosen model) are deduplicated per batch,
so only a handful of `str` objects are ever made.

It knows one layout: the current `schemas/comparison.avsc` (`LAYOUT`, checked against the codec's
schema at start-up; `CurrentBatches`). Anything else falls back to fastavro (the report's
services/compare_report/decode.py, the comparison service's record path), which also handles
any batch this decoder rejects: a record whose fields do not end exactly at
its end, a varint longer than 10 bytes, a union or enum index out of range, a boolean that is
not 0/1, bytes that are not UTF-8. Nothing is misread silently: a batch is either fully valid
here or handed over whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The Comparison schema as this decoder walks it (name, type); `STRING_MAX` bounds the strings it
# gathers into fixed-width keys, longer ones fall back.
LAYOUT: tuple[tuple[str, Any], ...] = (
    ("request_id", "string"), ("created_at", "long"), ("deadline", "long"),
    ("answered_at", ("null", "long")),
    ("status", ("enum", ("OK", "FALLBACK", "TIMEOUT", "ERROR"))),
    ("chosen_model", ("null", "string")), ("reason", "string"), ("schedule", "string"),
    ("schedule_version", "long"),
    ("outputs", ("array", (
        ("model", "string"), ("version", "string"), ("score", ("null", "double")),
        ("label", ("null", "string")), ("error", ("null", "string")), ("latency_ms", "double"),
        ("compute_ms", "double"), ("late", "boolean"),
    ))),
)  # fmt: skip
STRING_MAX = 64
MAX_ITEMS = 10_000  # outputs per array block: more is not a Comparison record
_K = np.arange(10)
_SHIFTS = (7 * _K).astype(np.uint64)
_DOUBLE = np.arange(8)
# Odd random multipliers, one per key word, for `_distinct_rows`' hash (fixed: runs compare alike).
_ROW_HASH = np.random.default_rng(20261129).integers(1, 2**63, size=2 + STRING_MAX // 8, dtype=np.uint64) | np.uint64(1)
# The low n bytes of a little-endian word, for n = 0..8.
_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=np.uint64)


class Rejected(Exception):
    """The batch is not (entirely) the layout this decoder knows; decode it with fastavro."""


def signature(node: Any) -> Any:
    """A schema (dict/list/str) as the nested tuples of LAYOUT, to compare with it."""
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return tuple(signature(branch) for branch in node)
    kind = node["type"]
    if kind == "record":
        return tuple((f["name"], signature(f["type"])) for f in node["fields"])
    if kind == "enum":
        return ("enum", tuple(node["symbols"]))
    if kind == "array":
        return ("array", signature(node["items"]))
    if kind == "map":
        return ("map", signature(node["values"]))
    return signature(kind)


def layout_matches(schema: Mapping[str, Any]) -> bool:
    """True when `schema` is the Comparison layout this decoder walks."""
    return bool(signature(dict(schema)) == LAYOUT)


@dataclass(frozen=True)
class Strings:
    """Distinct strings of one field kind in a batch and, per occurrence, its index among them."""

    values: list[str]
    ids: np.ndarray


@dataclass(frozen=True)
class DecodedBatch:
    """Columns of one batch (rows are batch-local); names are `Strings` of the batch."""

    created_at: np.ndarray
    deadline: np.ndarray
    answered_at: np.ndarray  # -1 = null
    status: np.ndarray
    chosen: Strings  # ids -1 = null; values shared with `model`
    row: np.ndarray
    model: Strings
    version: Strings
    score: np.ndarray  # NaN = null
    scored: np.ndarray  # False = null (NaN in `score`, where a written NaN is True here)
    label: Strings  # ids -1 = null
    error: np.ndarray
    latency_ms: np.ndarray
    late: np.ndarray

    @property
    def records(self) -> int:
        return len(self.created_at)


class _Cursor:
    """One read position per record in a concatenation of record bodies; checks every step."""

    def __init__(self, values: Sequence[bytes], skip: int):
        padded = padded_buffer(values)
        self.buf = padded[:-8]
        self._words = words_at(padded)
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        self.end = np.cumsum(lengths)
        self.pos = self.end - lengths + skip
        self._last = max(len(self.buf) - 1, 0)

    def _check(self, pos: np.ndarray, rows: np.ndarray | None) -> None:
        end = self.end if rows is None else self.end[rows]
        if len(pos) and (pos > end).any():
            raise Rejected("a field runs past the end of its record")

    def _at(self, rows: np.ndarray | None) -> np.ndarray:
        return self.pos if rows is None else self.pos[rows]

    def _advance(self, rows: np.ndarray | None, new: np.ndarray) -> None:
        self._check(new, rows)
        if rows is None:
            self.pos = new
        else:
            self.pos[rows] = new

    def long(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Avro `long`/`int` (zig-zag varint) at each cursor."""
        pos = self._at(rows)
        if not len(pos):
            return np.zeros(0, dtype=np.int64)
        first = self.buf[np.minimum(pos, self._last)]
        if (first < 0x80).all():  # the common case: one byte
            value = first.astype(np.uint64)
            self._advance(rows, pos + 1)
        elif (same := self._same_size(pos, first)) is not None:
            value, size = same
            self._advance(rows, pos + size)
        else:
            raw = self.buf[np.minimum(pos[:, None] + _K, self._last)]
            stops = raw < 0x80
            if not stops.any(axis=1).all():
                raise Rejected("a varint longer than 10 bytes")
            size = stops.argmax(axis=1) + 1
            bits = ((raw & 0x7F).astype(np.uint64) << _SHIFTS) * (size[:, None] > _K)
            value = bits.sum(axis=1, dtype=np.uint64)
            self._advance(rows, pos + size)
        # Zig-zag decoding on the unsigned value (a logical shift), then reinterpreted as signed.
        return (value >> np.uint64(1)).view(np.int64) ^ -(value & np.uint64(1)).view(np.int64)

    def _same_size(self, pos: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, int] | None:
        """Varints that all take as many bytes as the first one (times of one batch, say: epoch
        ms are 6 bytes until 2039), read a byte position at a time; None if they do not."""
        size, byte = 1, first
        parts = [first & 0x7F]
        while byte[0] >= 0x80 and size < 10:
            if (byte < 0x80).any():
                return None
            byte = self.buf[np.minimum(pos + size, self._last)]
            parts.append(byte & 0x7F)
            size += 1
        if (byte >= 0x80).any():
            return None
        value = np.zeros(len(pos), dtype=np.uint64)
        for shift, part in zip(_SHIFTS, parts, strict=False):  # 10 shifts; parts holds 2 to 10
            value |= part.astype(np.uint64) << shift
        return value, size

    def index(self, branches: int, rows: np.ndarray | None = None) -> np.ndarray:
        """A union branch or enum symbol index, checked against the number of branches."""
        value = self.long(rows)
        if len(value) and ((value < 0) | (value >= branches)).any():
            raise Rejected("a union or enum index out of range")
        return value

    def double(self, rows: np.ndarray | None = None) -> np.ndarray:
        pos = self._at(rows)
        raw = self.buf[np.minimum(pos[:, None] + _DOUBLE, self._last)]
        self._advance(rows, pos + 8)
        return np.ascontiguousarray(raw).view("<f8").ravel()

    def boolean(self, rows: np.ndarray | None = None) -> np.ndarray:
        pos = self._at(rows)
        value = self.buf[np.minimum(pos, self._last)]
        if len(value) and (value > 1).any():
            raise Rejected("a boolean that is neither 0 nor 1")
        self._advance(rows, pos + 1)
        return value.astype(bool)

    def skip_string(self, rows: np.ndarray | None = None) -> None:
        size = self.long(rows)
        if len(size) and (size < 0).any():
            raise Rejected("a negative string length")
        self._advance(rows, self._at(rows) + size)

    def string(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) of a string at each cursor; the text is made later, once per value."""
        size = self.long(rows)
        if len(size) and ((size < 0) | (size > STRING_MAX)).any():
            raise Rejected("a string too long (or negative) for the fixed-width keys")
        start = self._at(rows).copy()
        self._advance(rows, start + size)
        return start, size

    def optional_string(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(present, start, length) of a [null, string] union; absent ones have length 0."""
        present = self.index(2, rows) == 1
        which = np.flatnonzero(present)
        where = which if rows is None else rows[which]
        start = np.zeros(len(present), dtype=np.int64)
        size = np.zeros(len(present), dtype=np.int64)
        start[which], size[which] = self.string(where)
        return present, start, size

    def texts(self, parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Strings:
        """Distinct strings among (present, start, length) triples, and an id per occurrence (-1 = absent)."""
        if not parts:
            return Strings([], np.zeros(0, dtype=np.int64))
        present = np.concatenate([p for p, _, _ in parts])
        start = np.concatenate([s for _, s, _ in parts])
        size = np.concatenate([n for _, _, n in parts])
        return distinct_strings(self._words, present, start, size)


def padded_buffer(values: Sequence[bytes]) -> np.ndarray:
    """The values concatenated, with 8 bytes of padding: an 8-byte word may start at any byte."""
    return np.frombuffer(b"".join((*values, bytes(8))), dtype=np.uint8)


def words_at(padded: np.ndarray) -> np.ndarray:
    """`words_at(padded)[p]`: the 8 bytes at byte p as a little-endian uint64 (unaligned, overlapping:
    a view with a stride of one byte, nothing copied), so one gather reads a word at any position."""
    return np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))


def distinct_strings(words: np.ndarray, present: np.ndarray, start: np.ndarray, size: np.ndarray) -> Strings:
    """Distinct strings among those at (start, size) where `present` (bytes read from `words`,
    see `words_at`), and an id per occurrence (-1 = absent); `Rejected` if one is not UTF-8."""
    distinct, inverse = _distinct_rows(string_keys(words, start[present], size[present]))
    ids = np.full(len(present), -1, dtype=np.int64)
    ids[present] = inverse
    try:
        values = [row[8:].tobytes()[: int(row[0])].decode("utf-8") for row in distinct]
    except UnicodeDecodeError:
        raise Rejected("a string that is not UTF-8") from None
    return Strings(values, ids)


def string_keys(words: np.ndarray, start: np.ndarray, size: np.ndarray) -> np.ndarray:
    """A key per string at (start, size): its length, then its bytes 8 at a time (zero past the
    end). Equal keys mean equal strings; the length keeps "a" apart from "a\0"."""
    columns = [size.astype(np.uint64)]
    for word in range(-(-int(size.max()) // 8) if len(size) else 0):
        left = np.clip(size - 8 * word, 0, 8)
        columns.append(words[np.minimum(start + 8 * word, len(words) - 1)] & _LOW_BYTES[left])
    return np.stack(columns, axis=1)


def key_text(key: np.ndarray) -> str:
    """The string of one `string_keys` row; `Rejected` if it is not UTF-8."""
    raw = np.ascontiguousarray(key, dtype="<u8").view(np.uint8)
    try:
        return raw[8:].tobytes()[: int(key[0])].decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("a string that is not UTF-8") from None


def _distinct_rows(keys: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The distinct rows of a uint64 matrix of string keys (length, then the bytes 8 at a time) in
    the strings' order (shorter first, then by bytes), and each row's index among them.

    Rows are told apart by a 64-bit hash (sorting ints is several times cheaper than sorting
    rows), then checked against the rows themselves: after a collision, by the rows."""
    if not len(keys):
        return [], np.zeros(0, dtype=np.int64)
    hashes = (keys * _ROW_HASH[: keys.shape[1]]).sum(axis=1, dtype=np.uint64)
    _hashes, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if (keys[first][inverse] != keys).any():
        _rows, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
    distinct = [keys[i].astype("<u8") for i in first.tolist()]  # little-endian: a word's bytes in string order
    order = sorted(range(len(distinct)), key=lambda i: (int(distinct[i][0]), distinct[i][1:].tobytes()))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return [distinct[i].view(np.uint8) for i in order], rank[inverse]


def decode_bodies(values: Sequence[bytes], skip: int = 0) -> DecodedBatch:
    """Columns of Avro binary bodies that start `skip` bytes into each value (after a single-object
    header of the current schema, say); `Rejected` if any of them is not a valid record."""
    cur = _Cursor(values, skip)
    cur.skip_string()  # request_id
    created_at, deadline = cur.long(), cur.long()
    answered_present = cur.index(2) == 1
    answered_at = np.full(len(values), -1, dtype=np.int64)
    answered_at[answered_present] = cur.long(np.flatnonzero(answered_present))
    status = cur.index(4)
    chosen = cur.optional_string()
    cur.skip_string()  # reason
    cur.skip_string()  # schedule
    cur.long()  # schedule_version
    outputs = _outputs(cur)
    if len(values) and (cur.pos != cur.end).any():
        raise Rejected("a record does not end where its fields end")
    models = cur.texts([chosen, *((np.ones(len(s), bool), s, n) for s, n in outputs["model"])])
    split = len(chosen[0])
    return DecodedBatch(
        created_at=created_at, deadline=deadline, answered_at=answered_at, status=status,
        chosen=Strings(models.values, models.ids[:split]), row=np.concatenate(outputs["row"]),
        model=Strings(models.values, models.ids[split:]),
        version=cur.texts([(np.ones(len(s), bool), s, n) for s, n in outputs["version"]]),
        score=np.concatenate(outputs["score"]), scored=np.concatenate(outputs["scored"]),
        label=cur.texts(outputs["label"]),
        error=np.concatenate(outputs["error"]), latency_ms=np.concatenate(outputs["latency_ms"]),
        late=np.concatenate(outputs["late"]),
    )  # fmt: skip


def _outputs(cur: _Cursor) -> dict[str, list[Any]]:
    """Walk every record's `outputs` array: items of all records with items left, in lockstep."""
    found: dict[str, list[Any]] = {k: [np.zeros(0, dtype=t)] for k, t in (
        ("row", np.int64), ("score", np.float64), ("scored", bool), ("error", bool), ("latency_ms", np.float64),
        ("late", bool))}
    found.update(model=[], version=[], label=[])
    rows = np.arange(len(cur.pos))
    left = _block(cur, rows)
    while len(rows := rows[left > 0]):
        left = left[left > 0]
        found["row"].append(rows)
        found["model"].append(cur.string(rows))
        found["version"].append(cur.string(rows))
        scored = cur.index(2, rows) == 1
        score = np.full(len(rows), np.nan)
        score[scored] = cur.double(rows[scored])
        found["score"].append(score)
        found["scored"].append(scored)
        found["label"].append(cur.optional_string(rows))
        error = cur.index(2, rows) == 1
        cur.skip_string(rows[error])
        found["error"].append(error)
        found["latency_ms"].append(cur.double(rows))
        cur.double(rows)  # compute_ms
        found["late"].append(cur.boolean(rows))
        left -= 1
        ended = left == 0
        left[ended] = _block(cur, rows[ended])  # the next block's count; 0 ends the array
    return found


def _block(cur: _Cursor, rows: np.ndarray) -> np.ndarray:
    """Item count of the next array block (a negative count is followed by the block's size)."""
    count = cur.long(rows)
    sized = count < 0
    if sized.any():
        cur.long(rows[sized])
        count = np.abs(count)
    if len(count) and (count > MAX_ITEMS).any():
        raise Rejected("an array block with implausibly many items")
    return count
