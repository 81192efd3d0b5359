"""Requests and scores read by compiled loops (numba): only what the join needs, every byte checked.

Why: fastavro builds a dict of the whole record — the request's thirty features, its metadata —
for the rendezvous to keep five fields of it: 17 µs a request and 5 µs a score, a third of the
rendezvous' own work per request (bench/join_ceiling.py). A compiled walk of the Avro encoding
checks the record as fastavro would (varints of at most 10 bytes, lengths inside the record,
union indexes, strings that are UTF-8, nothing left over) and hands back where the needed fields
are; Python then makes the few strings it keeps.

Only records framed with the codec's current single-object header, while the schema still has the
layout walked here, take this path, and only when the walk finds them valid: anything else
(an older writer schema, registry framing, a damaged record) goes to `Codec.decode`, so errors
and their messages are exactly fastavro's (services/rendezvous/records.py).
"""

from __future__ import annotations

import struct
from typing import Any

from services.core.avro_walk import branch, string, varint
from services.core.codec import MAGIC, Codec
from services.core.comparison_columns import signature
from services.core.compiled import compiled

# The layouts walked here (comparison_columns.signature of schemas/request.avsc and score.avsc).
REQUEST_LAYOUT: Any = (
    ("request_id", "string"), ("created_at", "long"), ("deadline", "long"),
    ("reply_to", ("null", (("topic", "string"), ("partition", ("null", "int"))))),
    ("features", ("map", "double")), ("payload", ("null", (("content_type", "string"), ("data", "bytes")))),
    ("metadata", ("map", "string")),
)  # fmt: skip
SCORE_LAYOUT: Any = (
    ("request_id", "string"), ("model", "string"), ("version", "string"), ("instance", "string"),
    ("score", ("null", "double")), ("label", ("null", "string")), ("error", ("null", "string")),
    ("deadline", "long"), ("received_at", "long"), ("scored_at", "long"), ("compute_ms", "double"),
)  # fmt: skip
_DOUBLE = struct.Struct("<d")


@compiled()
def _utf8(buf: Any, start: int, end: int) -> bool:
    """Whether the bytes [start, end) are UTF-8 as Python's strict decoder takes it (no overlong
    forms, no surrogates, nothing above U+10FFFF)."""
    i = start
    while i < end:
        byte = buf[i]
        if byte < 0x80:
            i += 1
            continue
        if byte < 0xC2 or byte > 0xF4:
            return False
        more = 1 if byte < 0xE0 else (2 if byte < 0xF0 else 3)
        if i + more >= end:  # its continuation bytes run past the end
            return False
        low, high = 0x80, 0xBF
        if byte == 0xE0:
            low = 0xA0
        elif byte == 0xED:
            high = 0x9F
        elif byte == 0xF0:
            low = 0x90
        elif byte == 0xF4:
            high = 0x8F
        second = buf[i + 1]
        if second < low or second > high:
            return False
        for k in range(2, more + 1):
            if buf[i + k] & 0xC0 != 0x80:
                return False
        i += more + 1
    return True


@compiled()
def _string(buf: Any, pos: int, end: int, text: bool) -> tuple[int, int]:
    """(start, position after it) of the string (or bytes, `text` False) at `pos`; -1 if invalid."""
    start, pos = string(buf, pos, end)
    if pos < 0 or (text and not _utf8(buf, start, pos)):
        return 0, -1
    return start, pos


@compiled()
def _map(buf: Any, pos: int, end: int, doubles: bool) -> tuple[int, int]:
    """(entries, position after it) of a map of doubles (or of strings); position -1 if invalid."""
    entries = 0
    while True:
        count, pos = varint(buf, pos, end)
        if pos < 0:
            return 0, -1
        if count == 0:
            return entries, pos
        if count < 0:  # a negative count is followed by the block's size in bytes
            count = -count
            size, pos = varint(buf, pos, end)
            if pos < 0 or size < 0:
                return 0, -1
        for _ in range(count):
            _start, pos = _string(buf, pos, end, True)
            if pos < 0:
                return 0, -1
            if doubles:
                pos += 8
                if pos > end:
                    return 0, -1
            else:
                _start, pos = _string(buf, pos, end, True)
                if pos < 0:
                    return 0, -1
        entries += count


# A walk takes a microsecond: it keeps the GIL (releasing it per record would only invite a switch).
@compiled(nogil=False)
def walk_request(buf: Any, skip: int) -> tuple[int, ...]:
    """(valid 1/0, request_id start, end, created_at, deadline, has reply_to 1/0, its topic start,
    end, has a partition 1/0, partition, features, has a payload 1/0) of the Request body at
    `skip`."""
    end = len(buf)
    rid, pos = _string(buf, skip, end, True)
    if pos < 0:
        return (0,) * 12
    rid_end = pos
    created, pos = varint(buf, pos, end)
    if pos < 0:
        return (0,) * 12
    deadline, pos = varint(buf, pos, end)
    if pos < 0:
        return (0,) * 12
    reply, pos = branch(buf, pos, end, 2)
    topic, topic_end, has_partition, partition = 0, 0, 0, 0
    if pos < 0:
        return (0,) * 12
    if reply == 1:
        topic, pos = _string(buf, pos, end, True)
        if pos < 0:
            return (0,) * 12
        topic_end = pos
        has_partition, pos = branch(buf, pos, end, 2)
        if pos < 0:
            return (0,) * 12
        if has_partition == 1:
            partition, pos = varint(buf, pos, end)
            if pos < 0:
                return (0,) * 12
    features, pos = _map(buf, pos, end, True)
    if pos < 0:
        return (0,) * 12
    payload, pos = branch(buf, pos, end, 2)
    if pos < 0:
        return (0,) * 12
    if payload == 1:
        _start, pos = _string(buf, pos, end, True)
        if pos < 0:
            return (0,) * 12
        _start, pos = _string(buf, pos, end, False)
        if pos < 0:
            return (0,) * 12
    _entries, pos = _map(buf, pos, end, False)
    if pos != end:
        return (0,) * 12
    return (1, rid, rid_end, created, deadline, reply, topic, topic_end, has_partition, partition, features, payload)


@compiled()
def _optional_string(buf: Any, pos: int, end: int) -> tuple[int, int, int]:
    """(present 1/0, start, position after it) of a [null, string] union; position -1 if invalid."""
    present, pos = branch(buf, pos, end, 2)
    if pos < 0:
        return 0, 0, -1
    if present == 0:
        return 0, pos, pos
    start, pos = _string(buf, pos, end, True)
    return 1, start, pos


@compiled(nogil=False)
def walk_score(buf: Any, skip: int) -> tuple[int, ...]:
    """(valid 1/0, then start and end of request_id, model and version, has a score 1/0, its
    offset, has a label 1/0, its start and end, has an error 1/0, its start and end, compute_ms's
    offset) of the Score body at `skip`."""
    end = len(buf)
    rid, pos = _string(buf, skip, end, True)
    rid_end = pos
    model, pos = _string(buf, pos, end, True) if pos >= 0 else (0, pos)
    model_end = pos
    version, pos = _string(buf, pos, end, True) if pos >= 0 else (0, pos)
    version_end = pos
    _instance, pos = _string(buf, pos, end, True) if pos >= 0 else (0, pos)  # not kept
    if pos < 0:
        return (0,) * 16
    scored, pos = branch(buf, pos, end, 2)
    if pos < 0:
        return (0,) * 16
    score_at = pos
    if scored == 1:
        pos += 8
    labelled, label, pos = _optional_string(buf, pos, end)
    if pos < 0:
        return (0,) * 16
    label_end = pos
    failed, error, pos = _optional_string(buf, pos, end)
    if pos < 0:
        return (0,) * 16
    error_end = pos
    for _ in range(3):  # deadline, received_at, scored_at (not kept)
        _value, pos = varint(buf, pos, end)
        if pos < 0:
            return (0,) * 16
    if pos + 8 != end:  # compute_ms, the last field
        return (0,) * 16
    return (1, rid, rid_end, model, model_end, version, version_end, scored, score_at, labelled, label, label_end,
            failed, error, error_end, pos)


class Walker:
    """Whether a codec's current records can be walked here, and its header."""

    def __init__(self, codec: Codec, layout: Any) -> None:
        self.header = MAGIC + codec.fingerprint
        self.usable = signature(codec.schema) == layout

    def takes(self, value: bytes | None) -> bool:
        return self.usable and value is not None and value.startswith(self.header)


def double_at(value: bytes, offset: int) -> float:
    return float(_DOUBLE.unpack_from(value, offset)[0])


def warm_up() -> None:
    """Compile (or load from the cache) the walks now, so that no record waits for them."""
    walk_request(b"", 0)
    walk_score(b"", 0)
