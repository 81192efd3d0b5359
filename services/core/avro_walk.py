"""Compiled steps of walking Avro's binary encoding: a varint, a string's place, a union's branch.

Shared by the compiled walks (services/core/compiled_decode.py, services/rendezvous/
compiled_records.py), inlined into them. A step returns the position after what it read, or minus
the reason it could not (`PAST_END`, `LONG_VARINT`, `NEGATIVE`, `BAD_INDEX`): a walk passes any
failure up with one test, `pos < 0`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.core.compiled import compiled

# Why a step failed (a walk adds reasons of its own after these).
PAST_END, LONG_VARINT, NEGATIVE, BAD_INDEX = 1, 2, 3, 4
STEP_REASONS = {
    PAST_END: "a field runs past the end of its record",
    LONG_VARINT: "a varint longer than 10 bytes",
    NEGATIVE: "a negative length",
    BAD_INDEX: "a union or enum index out of range",
}


@compiled(inline="always")
def varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the zig-zag varint (Avro's int and long) at `pos`."""
    raw = np.uint64(0)
    for k in range(10):
        if pos >= end:
            return 0, -PAST_END
        byte = buf[pos]
        pos += 1
        raw |= np.uint64(byte & 0x7F) << np.uint64(7 * k)
        if byte < 0x80:
            # Zig-zag on the unsigned value (a logical shift), then the bits read as signed.
            return int(np.int64((raw >> np.uint64(1)) ^ (np.uint64(0) - (raw & np.uint64(1))))), pos
    return 0, -LONG_VARINT


@compiled(inline="always")
def string(buf: Any, pos: int, end: int) -> tuple[int, int]:
    """(start, position after it) of the string or bytes at `pos` (its length, then its bytes)."""
    size, pos = varint(buf, pos, end)
    if pos < 0:
        return 0, pos
    if size < 0:
        return 0, -NEGATIVE
    if size > end - pos:  # not pos + size > end: a length near 2**63 would wrap past it
        return 0, -PAST_END
    return pos, pos + size


@compiled(inline="always")
def branch(buf: Any, pos: int, end: int, branches: int) -> tuple[int, int]:
    """(index, position after it) of a union's branch or an enum's symbol, one of `branches`."""
    index, pos = varint(buf, pos, end)
    if pos >= 0 and (index < 0 or index >= branches):
        return 0, -BAD_INDEX
    return index, pos
