"""Decoding a batch of Comparison bodies by their shapes: records laid out alike are read as columns
at fixed offsets.

Why: the lockstep walk (vectordecode.py) advances a cursor per record field by field, and checks
every step — about six numpy calls per field, a hundred fields per record. But the records one
rendezvous writes come in a handful of *shapes*: the same request-id length, the same model and
version names in the same order, the same varint widths for times, a label or an error here or
there. Once one record of a shape has been walked (in plain Python, once), every other record of
that shape is recognised by comparing its structural bytes with the walked one's — a few 8-byte
words per record, one gather — and each of its values is then one gather at a fixed offset.

What makes two records the same shape (`Shape.fits`): the same length and, byte for byte, the same
single-object header, string lengths, union branches, array block counts, model/version/chosen-model names, varint
widths (their continuation bits) and boolean bytes that are 0 or 1. Every record that fits a shape
is therefore valid exactly as the walked one was, field by field, so nothing is misread: the values
left free (times, scores, latencies, status, labels) are read as columns and checked where Avro
leaves room for a bad value (a status index out of range, a label that is not UTF-8).

Shapes are remembered across batches (`Shapes`: the 64 used last) and matched all at once
(`_Catalogue`: per record length, the few words that tell its shapes apart, then the rest of the
one shape each record agreed with). Records of shapes not seen before are walked, at most 16 a
batch, and whatever is left is decoded by the lockstep walk and merged in: a flood of distinct
shapes costs the lockstep walk and those walks, never a wrong value.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.core import vectordecode
from services.core.codec import Codec
from services.core.vectordecode import MAX_ITEMS, STRING_MAX, DecodedBatch, Rejected, Strings

log = logging.getLogger(__name__)

FIRST_WORDS = 4  # at most this many words tell a shape from the others of its length
SHAPES_KEPT = 64  # shapes remembered between batches
WALKS_PER_BATCH = 16  # records of new shapes walked per batch; the rest go to the lockstep walk
_U64 = np.uint64
_SEVEN_BITS = _U64(0x7F)
_ONE = _U64(1)


@dataclass(frozen=True)
class ItemShape:
    """One model output of a shape: names fixed, values at body offsets (-1: null)."""

    model: str
    version: str
    score: int
    label: tuple[int, int] | None  # (offset, length) of the label's bytes
    error: bool
    latency: int
    late: int


@dataclass(frozen=True)
class Shape:
    """A record layout: its body length, the structural words to compare, where its values are."""

    length: int
    check_at: np.ndarray  # body offsets of 8-byte words...
    check_mask: np.ndarray  # ...the bits of each that are structural...
    check_value: np.ndarray  # ...and what they must be
    structure: tuple[np.ndarray, np.ndarray]  # the same, byte by byte: (mask, value) of each byte
    created_at: tuple[int, int]  # (offset, width) of a varint
    deadline: tuple[int, int]
    answered_at: tuple[int, int] | None
    status: tuple[int, int]
    chosen: str | None
    items: tuple[ItemShape, ...]

    def fits(self, words: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Which of the records at `starts` (each `length` bytes long) have this shape (one shape
        at a time: for the records of a shape just learnt; `_Catalogue` matches the known ones)."""
        found = words[starts[:, None] + self.check_at]
        fit: np.ndarray = ((found & self.check_mask) == self.check_value).all(axis=1)
        return fit


class _Walk:
    """One body read field by field in Python, noting which bits of which bytes are structural."""

    def __init__(self, body: bytes):
        self.body = body
        self.pos = 0
        self.mask = bytearray(len(body))
        self.expect = bytearray(len(body))

    def _need(self, end: int) -> None:
        if end > len(self.body):
            raise Rejected("a field runs past the end of its record")

    def _varint(self) -> tuple[int, int, int]:
        """(offset, width, zig-zag decoded value) of the varint here."""
        start = pos = self.pos
        raw = shift = 0
        while True:
            self._need(pos + 1)
            if pos - start == 10:
                raise Rejected("a varint longer than 10 bytes")
            byte = self.body[pos]
            raw |= (byte & 0x7F) << shift
            shift += 7
            pos += 1
            if byte < 0x80:
                break
        self.pos = pos
        return start, pos - start, (raw >> 1) ^ -(raw & 1)

    def _structural(self, start: int, end: int, mask: int = 0xFF) -> None:
        for at in range(start, end):
            self.mask[at] = mask
            self.expect[at] = self.body[at] & mask

    def exact_long(self) -> int:
        """A long that is part of the shape (a length, a branch, a count): every bit of it."""
        start, width, value = self._varint()
        self._structural(start, start + width)
        return value

    def long(self) -> tuple[int, int]:
        """A long left free: only its width (the continuation bits) is part of the shape."""
        start, width, _value = self._varint()
        self._structural(start, start + width, 0x80)
        return start, width

    def index(self, branches: int) -> int:
        value = self.exact_long()
        if not 0 <= value < branches:
            raise Rejected("a union or enum index out of range")
        return value

    def string(self, content: bool = False) -> tuple[int, int]:
        """(offset, length) of a string; its length is structural, its content too if `content`."""
        size = self.exact_long()
        if size < 0:
            raise Rejected("a negative string length")
        start = self.pos
        self._need(start + size)
        if content:
            self._structural(start, start + size)
        self.pos = start + size
        return start, size

    def key(self, content: bool = False) -> tuple[int, int]:
        """A string the decoder keeps (a label; a name if `content`): at most STRING_MAX bytes,
        as vectordecode."""
        start, size = self.string(content)
        if size > STRING_MAX:
            raise Rejected("a string too long (or negative) for the fixed-width keys")
        return start, size

    def name(self) -> str:
        """A model, version or chosen-model name: its bytes are structural."""
        start, size = self.key(content=True)
        try:
            return self.body[start : start + size].decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected("a string that is not UTF-8") from None

    def double(self) -> int:
        start = self.pos
        self._need(start + 8)
        self.pos = start + 8
        return start

    def boolean(self) -> int:
        start = self.pos
        self._need(start + 1)
        if self.body[start] > 1:
            raise Rejected("a boolean that is neither 0 nor 1")
        self._structural(start, start + 1, 0xFE)  # any other 0/1 byte fits
        self.pos = start + 1
        return start

    def checks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The structural bits as 8-byte words: (offsets, masks, values)."""
        at: list[int] = []
        pos = 0
        while pos < len(self.mask):
            if self.mask[pos]:
                at.append(pos)
                pos += 8
            else:
                pos += 1
        masks = [int.from_bytes(self.mask[pos : pos + 8], "little") for pos in at]
        values = [int.from_bytes(self.expect[pos : pos + 8], "little") for pos in at]
        return np.array(at, dtype=np.int64), np.array(masks, dtype=np.uint64), np.array(values, dtype=np.uint64)


def walk(value: bytes, header: bytes) -> Shape:
    """The shape of one Comparison value: `header`, then a body of vectordecode.LAYOUT (offsets
    count from the value's first byte); `Rejected` if it is not valid."""
    if not value.startswith(header):
        raise Rejected("a value without the current schema's header")
    w = _Walk(value)
    w._structural(0, len(header))
    w.pos = len(header)
    w.string()  # request_id
    created_at, deadline = w.long(), w.long()
    answered_at = w.long() if w.index(2) == 1 else None
    status = w.long()  # an enum index, read as a column and checked there
    chosen = w.name() if w.index(2) == 1 else None
    w.string()  # reason
    w.string()  # schedule
    w.long()  # schedule_version
    items: list[ItemShape] = []
    while count := w.exact_long():
        if count < 0:  # a negative count is followed by the block's size in bytes
            count = -count
            w.exact_long()
        if count > MAX_ITEMS:
            raise Rejected("an array block with implausibly many items")
        items.extend(_item(w) for _ in range(count))
    if w.pos != len(value):
        raise Rejected("a record does not end where its fields end")
    at, masks, values = w.checks()
    structure = (np.frombuffer(bytes(w.mask), dtype=np.uint8), np.frombuffer(bytes(w.expect), dtype=np.uint8))
    return Shape(len(value), at, masks, values, structure, created_at, deadline, answered_at, status, chosen,
                 tuple(items))  # fmt: skip


def _item(w: _Walk) -> ItemShape:
    model, version = w.name(), w.name()
    score = w.double() if w.index(2) == 1 else -1
    label = w.key() if w.index(2) == 1 else None
    error = w.index(2) == 1
    if error:
        w.string()
    latency = w.double()
    w.double()  # compute_ms
    return ItemShape(model, version, score, label, error, latency, w.boolean())


class Shapes:
    """The shapes learnt so far and `decode`, which uses and extends them."""

    def __init__(self, header: bytes, kept: int = SHAPES_KEPT, walks: int = WALKS_PER_BATCH) -> None:
        self.header = header
        self.kept = kept
        self.walks = walks
        self._known: list[Shape] = []
        self._last_used: list[int] = []  # by shape: the number of the last batch it took records of
        self._batches = 0
        self._catalogue: _Catalogue | None = None

    def decode(self, values: Sequence[bytes]) -> DecodedBatch:
        """The columns of `values` (each `header` then a body), as `vectordecode.decode_bodies`
        makes them, by shape where it can; `Rejected` if one lacks the header or is not valid."""
        padded = vectordecode.padded_buffer(values)
        words = vectordecode.words_at(padded)
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        starts = np.cumsum(lengths) - lengths
        kind = self._match(values, words, starts, lengths)
        matched = np.flatnonzero(kind >= 0)
        # The shapes this batch used, numbered from 0 (a few dozen at most: counted, not sorted).
        used = np.flatnonzero(np.bincount(kind[matched], minlength=len(self._known)))
        local = np.zeros(len(self._known), dtype=np.int64)
        local[used] = np.arange(len(used))
        columns = _Columns(len(values), words)
        columns.add_shapes([self._known[i] for i in used.tolist()], matched, local[kind[matched]], starts)
        left = np.flatnonzero(kind < 0)
        if len(left):
            rest = [values[i] for i in left.tolist()]
            if not all(value.startswith(self.header) for value in rest):
                raise Rejected("a value without the current schema's header")
            columns.add_decoded(left, vectordecode.decode_bodies(rest, skip=len(self.header)))
        return columns.finish()

    def _match(self, values: Sequence[bytes], words: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """The index of the known shape each record fits, -1 for none; records of new shapes are
        walked (up to `walks` of them) and their shapes learnt."""
        self._batches += 1
        if self._catalogue is None:
            kind = np.full(len(values), -1, dtype=np.int64)
        else:
            kind = self._catalogue.match(words, starts, sizes)
        left = np.flatnonzero(kind < 0)
        for _ in range(self.walks):
            if not len(left):
                break
            first = int(left[0])
            shape = walk(values[first], self.header)
            candidates = left[sizes[left] == shape.length]
            fit = candidates[shape.fits(words, starts[candidates])]
            if not len(fit) or fit[0] != first:  # a shape must fit the record it was walked from
                raise AssertionError("a walked shape does not fit its own record")
            kind[fit] = len(self._known)
            self._known.append(shape)
            self._last_used.append(0)
            left = left[kind[left] < 0]
        for index in np.flatnonzero(np.bincount(kind[kind >= 0], minlength=len(self._known))).tolist():
            self._last_used[index] = self._batches
        if len(self._catalogue.shapes if self._catalogue else ()) != len(self._known):
            kind = self._forget_unused(kind)
            self._catalogue = _Catalogue(list(self._known)) if self._known else None
        return kind

    def _forget_unused(self, kind: np.ndarray) -> np.ndarray:
        """Keep the `kept` shapes used last; `kind` renumbered to match."""
        if len(self._known) <= self.kept:
            return kind
        keep = sorted(sorted(range(len(self._known)), key=lambda i: -self._last_used[i])[: self.kept])
        number = np.full(len(self._known) + 1, -1, dtype=np.int64)  # the extra entry maps -1 to -1
        number[keep] = np.arange(len(keep))
        self._known = [self._known[i] for i in keep]
        self._last_used = [self._last_used[i] for i in keep]
        renumbered: np.ndarray = number[kind]
        return renumbered


class _Catalogue:
    """Known shapes as padded arrays, so that every record of a batch is matched at once: per
    record length, a few words of every shape of that length — the ones that tell it from the
    others — in one gather, then the rest of the words of the one shape each record agreed with."""

    def __init__(self, shapes: list[Shape]) -> None:
        self.shapes = shapes
        width = max(len(shape.check_at) for shape in shapes)
        self.at = np.zeros((len(shapes), width), dtype=np.int64)
        self.mask = np.zeros((len(shapes), width), dtype=np.uint64)  # padding: mask 0 always agrees
        self.value = np.zeros((len(shapes), width), dtype=np.uint64)
        by_length: dict[int, list[int]] = {}
        for index, shape in enumerate(shapes):
            by_length.setdefault(shape.length, []).append(index)
        self.first: dict[int, int] = {}  # by length: how many words tell its shapes apart
        for length, group in by_length.items():
            self.first[length] = 1
            for index in group:
                shape = shapes[index]
                order, telling = _telling_words(shape, [shapes[other] for other in group if other != index])
                self.first[length] = max(self.first[length], telling)
                words = len(order)
                self.at[index, :words], self.mask[index, :words] = shape.check_at[order], shape.check_mask[order]
                self.value[index, :words] = shape.check_value[order]
        self.by_length = {length: np.array(found, dtype=np.int64) for length, found in by_length.items()}
        # The shapes of one length mostly tell themselves apart by the same few offsets: each is
        # read once per record, then each shape's first words are picked from those (cheaply).
        self.first_at: dict[int, np.ndarray] = {}
        self.first_of: dict[int, np.ndarray] = {}
        for length, group_of in self.by_length.items():
            offsets = self.at[group_of, : self.first[length]]
            self.first_at[length], inverse = np.unique(offsets, return_inverse=True)
            self.first_of[length] = inverse.reshape(offsets.shape)

    def match(self, words: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        kind = np.full(len(starts), -1, dtype=np.int64)
        lengths, inverse = np.unique(sizes, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        ends = np.cumsum(np.bincount(inverse.ravel(), minlength=len(lengths)))
        for length, start, end in zip(lengths.tolist(), [0, *ends[:-1].tolist()], ends.tolist(), strict=True):
            shapes = self.by_length.get(length)
            if shapes is not None:
                rows = order[start:end]
                kind[rows] = self._fit(words, starts[rows], shapes, length)
        return kind

    def _fit(self, words: np.ndarray, at: np.ndarray, shapes: np.ndarray, length: int) -> np.ndarray:
        telling = self.first[length]
        first = slice(0, telling)
        read = words[at[:, None] + self.first_at[length]]  # records x distinct offsets of first words
        found = read[:, self.first_of[length]]  # records x shapes x first words
        agree = ((found & self.mask[shapes, first]) == self.value[shapes, first]).all(axis=2)
        kind = np.full(len(at), -1, dtype=np.int64)
        rows = np.flatnonzero(agree.any(axis=1))
        rest = slice(telling, None)
        while len(rows):  # more than once only where one record's first words agree with two shapes
            pick = agree[rows].argmax(axis=1)
            chosen = shapes[pick]
            found = words[at[rows, None] + self.at[chosen, rest]]
            fit = ((found & self.mask[chosen, rest]) == self.value[chosen, rest]).all(axis=1)
            kind[rows[fit]] = chosen[fit]
            agree[rows[~fit], pick[~fit]] = False
            rows = rows[~fit]
            rows = rows[agree[rows].any(axis=1)]
        return kind


def _telling_words(shape: Shape, others: list[Shape]) -> tuple[np.ndarray, int]:
    """An order of `shape`'s check words: first (greedily) the fewest, at most FIRST_WORDS, that
    tell it from each of `others` (same length), then the rest; and how many come first."""
    starts = shape.check_at
    if not others:
        return np.arange(len(starts)), 1
    mask, value = shape.structure
    # told[j, p]: byte p tells `shape` from others[j] (a bit both constrain, to different values).
    told = np.stack([(mask & m & (value ^ v)) != 0 for m, v in (other.structure for other in others)])
    before = np.concatenate([np.zeros((len(others), 1), dtype=np.int64), np.cumsum(told, axis=1)], axis=1)
    ends = np.minimum(starts + 8, shape.length)
    tells = (before[:, ends] - before[:, starts]) > 0  # others x words
    order: list[int] = []
    untold = np.ones(len(others), dtype=bool)
    while untold.any() and len(order) < FIRST_WORDS:
        gain = (tells & untold[:, None]).sum(axis=0)
        best = int(gain.argmax())
        if not gain[best]:
            break
        order.append(best)
        untold &= ~tells[:, best]
    return np.array(order + [i for i in range(len(starts)) if i not in order], dtype=np.int64), max(1, len(order))


@dataclass
class _Names:
    """One batch's strings of a kind, with ids in order of first sight; sorted as vectordecode's at the end."""

    index: dict[str, int] = field(default_factory=dict)

    def id(self, name: str) -> int:
        return self.index.setdefault(name, len(self.index))

    def ids(self, names: Sequence[str]) -> np.ndarray:
        """Ids of `names`, with one more entry, -1, at the end (so that id -1 maps to -1)."""
        return np.array([self.id(name) for name in names] + [-1], dtype=np.int64)

    def finish(self, ids: np.ndarray) -> Strings:
        values = sorted(self.index, key=lambda text: (len(text.encode()), text.encode()))
        position = {name: at for at, name in enumerate(values)}
        rank = np.array([position[name] for name in self.index] + [-1], dtype=np.int64)
        return Strings(values, rank[ids])


class _Table:
    """The matched shapes of one batch as arrays, indexed by shape number (fields) or item number."""

    def __init__(self, shapes: list[Shape], models: _Names, versions: _Names) -> None:
        self.fields = {name: _offsets([getattr(shape, name) for shape in shapes])
                       for name in ("created_at", "deadline", "answered_at", "status")}  # fmt: skip
        self.chosen = np.array([-1 if s.chosen is None else models.id(s.chosen) for s in shapes], dtype=np.int64)
        self.items = np.array([len(shape.items) for shape in shapes], dtype=np.int64)
        self.first_item = np.cumsum(self.items) - self.items
        items = [item for shape in shapes for item in shape.items]
        self.model = np.array([models.id(item.model) for item in items], dtype=np.int64)
        self.version = np.array([versions.id(item.version) for item in items], dtype=np.int64)
        self.score = np.array([item.score for item in items], dtype=np.int64)
        self.label = np.array([-1 if item.label is None else item.label[0] for item in items], dtype=np.int64)
        self.label_size = np.array([0 if item.label is None else item.label[1] for item in items], dtype=np.int64)
        self.error = np.array([item.error for item in items], dtype=bool)
        self.latency = np.array([item.latency for item in items], dtype=np.int64)
        self.late = np.array([item.late for item in items], dtype=np.int64)


def _offsets(fields: list[tuple[int, int] | None]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, widths) of a varint field by shape; offset -1 where a shape has it null."""
    return (np.array([-1 if f is None else f[0] for f in fields], dtype=np.int64),
            np.array([1 if f is None else f[1] for f in fields], dtype=np.int64))  # fmt: skip


class _Columns:
    """A DecodedBatch being filled: per-record columns by row, outputs appended group by group."""

    def __init__(self, records: int, words: np.ndarray) -> None:
        self.words = words
        self.created_at = np.zeros(records, dtype=np.int64)
        self.deadline = np.zeros(records, dtype=np.int64)
        self.answered_at = np.full(records, -1, dtype=np.int64)
        self.status = np.zeros(records, dtype=np.int64)
        self.chosen = np.full(records, -1, dtype=np.int64)
        self.outputs: dict[str, list[np.ndarray]] = {key: [] for key in (
            "row", "model", "version", "score", "scored", "label", "error", "latency_ms", "late")}  # fmt: skip
        self.models, self.versions, self.labels = _Names(), _Names(), _Names()
        self._label_at: list[np.ndarray] = []  # (start, size) of labels to gather, by output...
        self._label_size: list[np.ndarray] = []
        self._label_group: list[np.ndarray] = []  # ...and the shape's output they are the label of

    def add_shapes(self, shapes: list[Shape], rows: np.ndarray, kind: np.ndarray, starts: np.ndarray) -> None:
        """The records at `rows` (ascending), each of `shapes[kind]`, read at their shape's offsets:
        a constant number of gathers over the whole batch, however many shapes (per-shape numpy
        calls on small groups cost more than the reading itself)."""
        if not len(rows):
            return
        table = _Table(shapes, self.models, self.versions)
        at = starts[rows]
        for name in ("created_at", "deadline", "status"):
            getattr(self, name)[rows] = self._longs(at, table.fields[name], kind)
        answered = table.fields["answered_at"][0][kind] >= 0
        self.answered_at[rows[answered]] = self._longs(at[answered], table.fields["answered_at"], kind[answered])
        if ((self.status[rows] < 0) | (self.status[rows] > 3)).any():
            raise Rejected("a union or enum index out of range")
        self.chosen[rows] = table.chosen[kind]
        # One output per item of each record's shape, in record order, items in order.
        counts = table.items[kind]
        out_row = np.repeat(rows, counts)
        out_at = np.repeat(at, counts)
        item = np.repeat(table.first_item[kind] - (np.cumsum(counts) - counts), counts) + np.arange(len(out_row))
        scored = table.score[item] >= 0
        labelled = table.label[item] >= 0
        out = self.outputs
        out["row"].append(out_row)
        out["model"].append(table.model[item])
        out["version"].append(table.version[item])
        out["score"].append(np.where(scored, self.words[out_at + table.score[item]].view("<f8"), np.nan))
        out["scored"].append(scored)
        out["error"].append(table.error[item])
        out["latency_ms"].append(self.words[out_at + table.latency[item]].view("<f8"))
        out["late"].append((self.words[out_at + table.late[item]] & _ONE).astype(bool))
        label = np.full(len(out_row), -1, dtype=np.int64)
        label[labelled] = -2  # gathered and filled in by `finish`
        out["label"].append(label)
        self._label_at.append(out_at[labelled] + table.label[item[labelled]])
        self._label_size.append(table.label_size[item[labelled]])
        self._label_group.append(item[labelled])

    def _longs(self, at: np.ndarray, where: tuple[np.ndarray, np.ndarray], kind: np.ndarray) -> np.ndarray:
        """A varint field of each record (offset and width by shape; one call per width)."""
        offset, widths = where[0][kind], where[1]
        if (widths == widths[0]).all():  # the common case: times of one batch take the same width
            return _varints(self.words, at + offset, int(widths[0]))
        width = widths[kind]
        value = np.zeros(len(at), dtype=np.int64)
        for size in set(widths.tolist()):
            mine = width == size
            value[mine] = _varints(self.words, at[mine] + offset[mine], size)
        return value

    def add_decoded(self, rows: np.ndarray, batch: DecodedBatch) -> None:
        """The columns of the lockstep walk over the records at `rows` (its rows are 0..len(rows))."""
        for name in ("created_at", "deadline", "answered_at", "status"):
            getattr(self, name)[rows] = getattr(batch, name)
        models = self.models.ids(batch.model.values)
        self.chosen[rows] = models[batch.chosen.ids]
        out = self.outputs
        out["row"].append(rows[batch.row])
        out["model"].append(models[batch.model.ids])
        out["version"].append(self.versions.ids(batch.version.values)[batch.version.ids])
        out["label"].append(self.labels.ids(batch.label.values)[batch.label.ids])
        for name in ("score", "scored", "error", "latency_ms", "late"):
            out[name].append(getattr(batch, name))

    def finish(self) -> DecodedBatch:
        out = {name: _joined(parts) for name, parts in self.outputs.items()}
        label = out["label"].astype(np.int64, copy=False)
        if self._label_at:
            label[label == -2] = self._label_ids(
                np.concatenate(self._label_at), np.concatenate(self._label_size), np.concatenate(self._label_group))
        return DecodedBatch(
            created_at=self.created_at, deadline=self.deadline, answered_at=self.answered_at,
            status=self.status, chosen=self.models.finish(self.chosen),
            row=out["row"].astype(np.int64, copy=False),
            model=self.models.finish(out["model"].astype(np.int64, copy=False)),
            version=self.versions.finish(out["version"].astype(np.int64, copy=False)),
            score=out["score"].astype(np.float64, copy=False), scored=out["scored"].astype(bool, copy=False),
            label=self.labels.finish(label), error=out["error"].astype(bool, copy=False),
            latency_ms=out["latency_ms"].astype(np.float64, copy=False), late=out["late"].astype(bool, copy=False),
        )  # fmt: skip


    def _label_ids(self, start: np.ndarray, size: np.ndarray, group: np.ndarray) -> np.ndarray:
        """Label ids of the labels at (start, size). The labels of one output of one shape are
        mostly one value (a shape fixes the label's length), so each is compared with one of its
        group's; only those that differ are told apart by sorting (`distinct_strings`)."""
        keys = vectordecode.string_keys(self.words, start, size)
        one_of = np.zeros(int(group.max()) + 1, dtype=np.int64)
        one_of[group] = np.arange(len(group))  # any label of each group will do
        same = (keys == keys[one_of[group]]).all(axis=1)
        of_group = np.full(len(one_of), -1, dtype=np.int64)
        for found in np.flatnonzero(np.bincount(group)).tolist():
            of_group[found] = self.labels.id(vectordecode.key_text(keys[one_of[found]]))
        ids = of_group[group]
        if not same.all():
            other = ~same
            rest = vectordecode.distinct_strings(self.words, np.ones(int(other.sum()), dtype=bool),
                                                 start[other], size[other])  # fmt: skip
            ids[other] = self.labels.ids(rest.values)[rest.ids]
        return ids


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The parts as one array (the only part itself: no copy)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0)


def _varints(words: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """The zig-zag varints of `width` bytes at `at` (their widths are part of the shape)."""
    low = words[at]
    value = low & _SEVEN_BITS
    for k in range(1, min(width, 8)):
        value |= ((low >> _U64(8 * k)) & _SEVEN_BITS) << _U64(7 * k)
    if width > 8:
        high = words[at + 8]
        for k in range(width - 8):
            value |= ((high >> _U64(8 * k)) & _SEVEN_BITS) << _U64(7 * (8 + k))
    # Zig-zag decoding on the unsigned value (a logical shift), then reinterpreted as signed.
    signed: np.ndarray = (value >> _ONE).view(np.int64) ^ -(value & _ONE).view(np.int64)
    return signed


class CurrentBatches:
    """The columnar decoders for one codec's values: usable while the codec's schema still has
    `LAYOUT`, for values that all carry the codec's current single-object header. The comparison
    service and the report both choose between them and fastavro with it."""

    def __init__(self, codec: Codec) -> None:
        self.header = codec.header
        self.usable = vectordecode.layout_matches(codec.schema)
        self.shapes = Shapes(codec.header)

    def split(self, values: Sequence[bytes | None]) -> tuple[list[bytes], list[bytes | None]]:
        """The values written with the current schema, and the others (an older writer schema,
        which needs fastavro's resolution, or no value at all)."""
        header = self.header
        current: list[bytes] = []
        others: list[bytes | None] = []
        for value in values:
            if value is not None and value.startswith(header):
                current.append(value)
            else:
                others.append(value)
        return current, others

    def decode(self, values: Sequence[bytes]) -> DecodedBatch | None:
        """The columns of `values`; None when these decoders cannot take them all exactly (the
        schema changed, a value lacks the current header, or `Rejected`): the caller's slower path does."""
        if not self.usable:
            return None
        try:
            return self.shapes.decode(values)
        except Rejected as why:
            log.debug("columnar decoding rejected a batch of %d (%s): fastavro takes it", len(values), why)
            return None
        # A bug here must not stop a service: the caller's record-by-record path decodes the batch.
        except Exception:
            log.exception("columnar decoding failed on a batch of %d; fastavro takes it", len(values))
            return None
