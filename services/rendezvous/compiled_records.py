"""Scores read by a compiled loop (numba): only what the join needs, every byte checked.

fastavro built a dict of every Score (5 µs) for the join to keep six fields; the walk takes ~0.5 µs
(a call from Python, 103-byte scores; 0.75 while the loops ran with numba's reference counting:
services/core/compiled.py). It checks the record as fastavro would and hands back where the
fields are, as the request walk does (services/core/compiled_requests.py, which says how, and
when fastavro decodes instead).
"""

from __future__ import annotations

import struct
from typing import Any

from services.core.avro_walk import branch, varint
from services.core.compiled import compiled
from services.core.compiled_requests import string_span, walk_request

# The layout walked here (comparison_columns.signature of schemas/score.avsc).
SCORE_LAYOUT: Any = (
    ("request_id", "string"), ("model", "string"), ("version", "string"), ("instance", "string"),
    ("score", ("null", "double")), ("label", ("null", "string")), ("error", ("null", "string")),
    ("deadline", "long"), ("received_at", "long"), ("scored_at", "long"), ("compute_ms", "double"),
)  # fmt: skip
_DOUBLE = struct.Struct("<d")


@compiled()
def _optional_string(buf: Any, pos: int, end: int) -> tuple[int, int, int]:
    """(present 1/0, start, position after it) of a [null, string] union; position -1 if invalid."""
    present, pos = branch(buf, pos, end, 2)
    if pos < 0:
        return 0, 0, -1
    if present == 0:
        return 0, pos, pos
    start, pos = string_span(buf, pos, end, True)
    return 1, start, pos


@compiled(nogil=False)
def walk_score(buf: Any, skip: int) -> tuple[int, ...]:
    """(valid 1/0, then start and end of request_id, model and version, has a score 1/0, its
    offset, has a label 1/0, its start and end, has an error 1/0, its start and end, compute_ms's
    offset) of the Score body at `skip`."""
    end = len(buf)
    rid, pos = string_span(buf, skip, end, True)
    rid_end = pos
    model, pos = string_span(buf, pos, end, True) if pos >= 0 else (0, pos)
    model_end = pos
    version, pos = string_span(buf, pos, end, True) if pos >= 0 else (0, pos)
    version_end = pos
    _instance, pos = string_span(buf, pos, end, True) if pos >= 0 else (0, pos)  # not kept
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


def double_at(value: bytes, offset: int) -> float:
    return float(_DOUBLE.unpack_from(value, offset)[0])


def warm_up() -> None:
    """Compile (or load from the cache) the walks now, so that no record waits for them."""
    walk_request(b"", 0)
    walk_score(b"", 0)
