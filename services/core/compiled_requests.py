"""Requests read by compiled loops (numba): every byte checked, only what the reader needs.

Why: fastavro builds a dict of the whole record — the request's thirty features, its metadata —
where the rendezvous keeps five fields (17 µs a request, a third of its own work per request:
bench/join_ceiling.py) and a model worker wants the id, the deadline and the features as one row
of its model's matrix, which `Signature.prepare` then built from the dict again. One compiled walk
of the Avro encoding checks the record by the specification (varints of at most 10 bytes,
lengths inside the record, union indexes in range, strings that are UTF-8, nothing left over) and
hands back where the fields are; `walk_features` also writes the feature values straight into a
matrix row when the request names exactly the signature's features, in its order, all finite.

Only records framed with the codec's current schema (its single-object header, or a registry id
found to name it: `Codec.current_body`), while the schema still has the layout walked here
(`Walker`), take this path, and only when the walk finds them valid (for `walk_features`, also
exact). One the walk finds invalid is refused (`refuse_unwalked`), with fastavro's error when
fastavro refuses it too: fastavro reads some invalid bytes (a union's branch -1). Anything else (an
older writer schema, another framing; features in another order for a worker) goes to
`Codec.decode`, so its errors are fastavro's (services/rendezvous/records.py,
services/model_worker/walked.py, `decode_request`).
"""

from __future__ import annotations

from functools import cache
from typing import Any, NoReturn

import numpy as np

from services.core.avro_walk import branch, string, utf8, varint
from services.core.codec import Codec
from services.core.comparison_columns import signature
from services.core.compiled import compiled
from services.core.errors import DecodeFailed
from services.core.requests import RepeatedFeatures, request_problem

# The layout walked here (comparison_columns.signature of schemas/request.avsc).
REQUEST_LAYOUT: Any = (
    ("request_id", "string"), ("created_at", "long"), ("deadline", "long"),
    ("reply_to", ("null", (("topic", "string"), ("partition", ("null", "int"))))),
    ("features", ("map", "double")), ("payload", ("null", (("content_type", "string"), ("data", "bytes")))),
    ("metadata", ("map", "string")),
)  # fmt: skip
_INVALID = (0,) * 15
# Where a walk's fields are (`walk_request`: the first 14; `walk_features`: all 15). INPUTS to
# INPUTS_END: the encoding of the features and the payload, what a model scores.
VALID, ID, ID_END, CREATED, DEADLINE, FEATURES, PAYLOAD, INPUTS, INPUTS_END, EXACT = 0, 1, 2, 3, 4, 10, 11, 12, 13, 14
# No signature: `walk_request` matches no feature name (numba keeps global arrays as read-only
# constants, so the rows it never writes are made in the call: some 30 ns).
_NO_NAMES = np.empty(0, dtype=np.uint8)
_NO_ENDS = np.zeros(1, dtype=np.int64)


@compiled()
def string_span(buf: Any, pos: int, end: int, text: bool) -> tuple[int, int]:
    """(start, position after it) of the string (or bytes, `text` False) at `pos`; -1 if invalid."""
    start, pos = string(buf, pos, end)
    if pos < 0 or (text and not utf8(buf, start, pos)):
        return 0, -1
    return start, pos


@compiled()
def _strings_map(buf: Any, pos: int, end: int) -> int:
    """The position after the map of strings at `pos` (the metadata), -1 if it is not valid."""
    while True:
        count, pos = varint(buf, pos, end)
        if pos < 0:
            return -1
        if count == 0:
            return pos
        if count < 0:  # a negative count is followed by the block's size in bytes
            count = -count  # still < 0 when it was -2**63: more entries than any record holds
            size, pos = varint(buf, pos, end)
            if pos < 0 or size < 0 or count < 0:
                return -1
        for _ in range(count):  # (2 * count could overflow)
            _key, pos = string_span(buf, pos, end, True)
            if pos < 0:
                return -1
            _value, pos = string_span(buf, pos, end, True)
            if pos < 0:
                return -1


# The three below are called, not inlined at numba's level (`inline="always"`, as avro_walk's
# steps are): inlined, the walks took longer to compile where there is no cache yet (the
# rendezvous' 11.2 s against 9.7, a worker's 9.9 against 7.9, on a slow 2-core host) and
# `walk_features` ran slower (6.1 against 4.7 µs a call), for 0.15 µs less per `walk_request`
# (measured while the loops ran with reference counting: services/core/compiled.py).
@compiled()
def _same(buf: Any, start: int, end: int, names: Any, name_start: int, name_end: int) -> bool:
    if end - start != name_end - name_start:
        return False
    for k in range(end - start):  # noqa: SIM110 (a loop: numba compiles no generator in `all`)
        if buf[start + k] != names[name_start + k]:
            return False
    return True


@compiled()
def _features(buf: Any, pos: int, end: int, names: Any, ends: Any, rows: Any, row: int) -> tuple[int, int, int]:
    """(entries, exact 1/0, position after it) of the features map; position -1 if invalid. Exact:
    the keys are the names (`names`, name i ending at ends[i + 1]), in their order, each value
    finite — and then the values are in rows[row]."""
    wanted = len(ends) - 1
    entries, exact = 0, 1
    while True:
        count, pos = varint(buf, pos, end)
        if pos < 0:
            return 0, 0, -1
        if count == 0:
            return entries, exact if entries == wanted else 0, pos
        if count < 0:  # a negative count is followed by the block's size in bytes
            count = -count  # still < 0 when it was -2**63: more entries than any record holds
            size, pos = varint(buf, pos, end)
            if pos < 0 or size < 0 or count < 0:
                return 0, 0, -1
        for _ in range(count):
            key, pos = string_span(buf, pos, end, True)
            if pos < 0 or pos + 8 > end:
                return 0, 0, -1
            if exact and entries < wanted and _same(buf, key, pos, names, ends[entries], ends[entries + 1]):
                value = np.uint64(0)
                for k in range(8):
                    value |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
                if (value >> np.uint64(52)) & np.uint64(0x7FF) == np.uint64(0x7FF):
                    exact = 0  # NaN or an infinity: the signature's check explains it
                else:
                    rows.view(np.uint64)[row, entries] = value
            else:
                exact = 0
            pos += 8
            entries += 1


@compiled()
def _request(buf: Any, skip: int, names: Any, ends: Any, rows: Any, row: int) -> tuple[int, ...]:
    """`walk_features`' fields of the Request body at `skip` (all 0 when it is not valid)."""
    end = len(buf)
    rid, pos = string_span(buf, skip, end, True)
    if pos < 0:
        return _INVALID
    rid_end = pos
    created, pos = varint(buf, pos, end)
    if pos < 0:
        return _INVALID
    deadline, pos = varint(buf, pos, end)
    if pos < 0:
        return _INVALID
    reply, pos = branch(buf, pos, end, 2)
    topic, topic_end, has_partition, partition = 0, 0, 0, 0
    if pos < 0:
        return _INVALID
    if reply == 1:
        topic, pos = string_span(buf, pos, end, True)
        if pos < 0:
            return _INVALID
        topic_end = pos
        has_partition, pos = branch(buf, pos, end, 2)
        if pos < 0:
            return _INVALID
        if has_partition == 1:
            partition, pos = varint(buf, pos, end)
            if pos < 0:
                return _INVALID
    inputs = pos
    features, exact, pos = _features(buf, pos, end, names, ends, rows, row)
    if pos < 0:
        return _INVALID
    payload, pos = branch(buf, pos, end, 2)
    if pos < 0:
        return _INVALID
    if payload == 1:
        _start, pos = string_span(buf, pos, end, True)
        if pos < 0:
            return _INVALID
        _start, pos = string_span(buf, pos, end, False)
        if pos < 0:
            return _INVALID
    inputs_end = pos
    pos = _strings_map(buf, pos, end)
    if pos != end:
        return _INVALID
    return (1, rid, rid_end, created, deadline, reply, topic, topic_end, has_partition, partition, features, payload,
            inputs, inputs_end, exact)


# A walk takes a microsecond: it keeps the GIL (releasing it per record would only invite a switch).
@compiled(allocates=True, nogil=False)
def walk_request(buf: Any, skip: int) -> tuple[int, ...]:
    """(valid 1/0, request_id start, end, created_at, deadline, has reply_to 1/0, its topic start,
    end, has a partition 1/0, partition, features, has a payload 1/0, start and end of the
    features' and payload's encoding) of the Request body at `skip`."""
    return _request(buf, skip, _NO_NAMES, _NO_ENDS, np.empty((0, 0), dtype=np.float64), 0)[:14]


@compiled(nogil=False)
def walk_features(buf: Any, skip: int, names: Any, ends: Any, rows: Any, row: int) -> tuple[int, ...]:
    """`walk_request`'s fields, then exact 1/0: whether the features are exactly `names` (UTF-8
    bytes, name i at [ends[i], ends[i + 1])) in that order, all finite; their values are then in
    rows[row] (float64), else rows[row] holds anything."""
    return _request(buf, skip, names, ends, rows, row)


class Walker:
    """Whether a codec's current records can be walked here, and where a record's body starts."""

    def __init__(self, codec: Codec, layout: Any) -> None:
        self.usable = signature(codec.schema) == layout
        self._codec = codec

    def body_at(self, value: bytes | None) -> int:
        """Where the walk starts in `value`, framed with the current schema either way (a forged
        body registry-framed was read by fastavro alone: a review); 0 when it is not walked."""
        return self._codec.current_body(value) if self.usable else 0


def refuse_unwalked(codec: Codec, value: bytes | None) -> NoReturn:
    """Raise the error of a record in `codec`'s current framing that its walk found invalid:
    fastavro's when fastavro refuses it too, else ours. fastavro reads some bytes no Avro writer
    makes: a union's branch -1 as its last branch (a return address, or a score's 8 bytes, that
    no client wrote), a varint past 10 bytes. The walks check every byte by the specification,
    so what they refuse is refused, never read leniently and answered with confidence."""
    codec.decode(value)  # fastavro's reason first, when it has one
    raise unwalked(codec)


def unwalked(codec: Codec) -> DecodeFailed:
    """The error of a record fastavro reads but its walk refuses (`refuse_unwalked`): raised as is
    where fastavro's decode of it already succeeded, so it is not decoded again."""
    return DecodeFailed(f"invalid {codec.name} encoding: a union's branch out of range or a varint longer than "
                        "10 bytes (no Avro writer makes it; a lenient reader would make up a value)")


def walked_problem(fields: tuple[int, ...], request_id: str) -> str | None:
    """`request_problem` of a walked Request (whose id is `request_id`): it reads only these fields,
    and the features' count stands for the map (empty or not)."""
    return request_problem({"request_id": request_id, "created_at": fields[CREATED], "deadline": fields[DEADLINE],
                            "features": fields[FEATURES], "payload": True if fields[PAYLOAD] else None})


def feature_names(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """`walk_features`' form of a signature's names: their UTF-8 bytes end to end, and where each ends."""
    # surrogatepass: a name no UTF-8 key can spell (a lone surrogate) matches nothing, fails nothing
    encoded = [name.encode("utf-8", "surrogatepass") for name in names]
    ends = np.zeros(len(encoded) + 1, dtype=np.int64)
    ends[1:] = np.cumsum([len(e) for e in encoded])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), ends


@cache
def request_walker(codec: Codec) -> Walker:
    """The Request walk's `Walker` for `codec` (one per codec: a call hashes its key)."""
    return Walker(codec, REQUEST_LAYOUT)


def decode_request(codec: Codec, value: bytes | None) -> dict[str, Any]:
    """fastavro's dict of one Request, refused where the walk refuses it (`refuse_unwalked`): what
    every reader of requests that decodes them whole uses (a worker's usual path, replay, rescue),
    so none reads what the others refuse. Decoded first: that looks a new registry id up, which
    then says whether the record is framed with the current schema. Features whose map repeats a
    name come as `RepeatedFeatures`, which no model scores (the walk counts the map's entries)."""
    request = codec.decode(value)
    skip = request_walker(codec).body_at(value)
    if skip and value is not None:
        # On `walk_features`, a worker's one compiled walk: no other is compiled for this.
        fields = walk_features(value, skip, _NO_NAMES, _NO_ENDS, _NO_ROWS, 0)
        if not fields[VALID]:
            raise unwalked(codec)  # fastavro read it: its decode has no reason to give
        if fields[FEATURES] != len(request["features"]):
            request["features"] = RepeatedFeatures(request["features"], fields[FEATURES])
    return request


_NO_ROWS = np.empty((0, 0), dtype=np.float64)


def warm_up_features() -> None:
    """Compile (or load from the cache) `walk_features` now, so that no record waits for it (a
    worker's only walk; 4-8 s to compile on 2 cores, the rendezvous' `walk_request` as much)."""
    names, ends = feature_names(("x",))
    walk_features(b"", 0, names, ends, np.empty((1, 1)), 0)
