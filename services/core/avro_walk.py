"""Compiled steps of walking Avro's binary encoding: a varint, a string's place (and its text
checked to be UTF-8), a union's branch.

Shared by the compiled walks (services/core/compiled_decode.py, services/core/compiled_requests.py,
services/rendezvous/compiled_records.py), inlined into them. A step returns the position after
what it read, or minus the reason it could not (`PAST_END`, `LONG_VARINT`, `NEGATIVE`, `BAD_INDEX`,
`NOT_UTF8`): a walk passes any failure up with one test, `pos < 0`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.core.compiled import compiled

# Why a step failed (a walk adds reasons of its own after these).
PAST_END, LONG_VARINT, NEGATIVE, BAD_INDEX, NOT_UTF8 = 1, 2, 3, 4, 5
STEP_REASONS = {
    PAST_END: "a field runs past the end of its record",
    LONG_VARINT: "a varint longer than 10 bytes",
    NEGATIVE: "a negative length",
    BAD_INDEX: "a union or enum index out of range",
    NOT_UTF8: "a string that is not UTF-8",
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


@compiled()
def utf8(buf: Any, start: int, end: int) -> bool:
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


@compiled(inline="always")
def checked_string(buf: Any, pos: int, end: int) -> tuple[int, int]:
    """(start, position after it) of the string at `pos`, its bytes UTF-8 as `utf8` takes them."""
    start, pos = string(buf, pos, end)
    if pos >= 0 and not utf8(buf, start, pos):
        return 0, -NOT_UTF8
    return start, pos
