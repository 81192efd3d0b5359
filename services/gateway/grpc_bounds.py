"""A ModelInferRequest's repeated fields counted on the wire, before protobuf parses it.

protobuf parses a message in one C call holding the GIL: a 7.9 MiB ModelInferRequest of 560,000
`parameters` entries held the gateway's event loop 0.45 s (four at once 2.1 s, a liveness check
waiting behind them; a review), though refused afterwards for its 33rd parameter. The fields
that can repeat without limit are counted here first, from the wire format's tags, stopping at
the first one over its bound: a message within the bounds costs a scan of its tags (a message
of 1,024 one-value inputs ~3 ms on two cores), and a flood of entries is refused after reading a
few of them.

Only what the protocol repeats is bounded: the call's parameters, inputs, outputs and raw
contents, each input's or output's parameters, and the values of the inputs' `contents` (at most
rows x features in all, as their shapes are: 4.2 million values in an 8 MiB message held the
loop 77-132 ms before being refused; a review). Values sent unpacked (which no protobuf encoder
does by default) are read one tag at a time, so only a few of them are taken; BOOL and BYTES
contents are never taken. Anything the scan cannot read (a malformed tag, a group) is left to
protobuf's parser, which refuses it with its own reason.
"""

from __future__ import annotations

from collections.abc import Iterator

from services.gateway import oip
from services.gateway.errors import InvalidInput

# Field numbers of the protocol's .proto (grpc_service.proto, package inference).
_CALL_PARAMETERS, _INPUTS, _OUTPUTS, _RAW = 4, 5, 6, 7
_INPUT_PARAMETERS, _INPUT_CONTENTS, _OUTPUT_PARAMETERS = 4, 5, 2
# InferTensorContents: the types the gateway never takes, and the width of each packed number
# (None: varints, one per byte below 0x80).
_NOT_NUMBERS = {1: "BOOL", 8: "BYTES"}
_WIDTHS = {2: None, 3: None, 4: None, 5: None, 6: 4, 7: 8}
_CONTINUED = bytes(range(0x80, 0x100))  # a varint's bytes but its last: deleted, one byte a value is left
# Every other field of one message together (a name, an id, a shape's dimensions sent unpacked,
# fields of a later version of the protocol) this many at most: counted by number, 1.7 million
# distinct unknown fields took the scan 5 s, where protobuf parses them in 38 ms (a review).
MOST_OTHER_FIELDS = 64


# Fields of one input's contents the scan reads (an encoder writes one per type), and of the
# call's contents together those it reads one value or one unknown field at a time: per input
# alone, 1,024 inputs just under each bound held the event loop 98 ms (a review).
PIECES_PER_INPUT = 8


class _Unreadable(Exception):
    """The scan cannot read on: protobuf's parser decides."""


class _ContentsRead:
    """What the scan read one tag at a time in the contents of a call's inputs, all together."""

    def __init__(self) -> None:
        self.unpacked = 0
        self.unknown = 0


def check_infer_request(data: bytes, max_features: int, max_values: int = 1 << 62) -> None:
    """InvalidInput for a ModelInferRequest whose repeated fields are over the call's bounds
    (`max_values`: its inputs' contents together, rows x features)."""
    counts = dict.fromkeys((_CALL_PARAMETERS, _INPUTS, _OUTPUTS, _RAW), 0)
    others = values = 0
    read = _ContentsRead()
    try:
        for number, start, end, _kind in _fields(data, 0, len(data)):
            if number not in counts:
                others += 1
                _at_most(others, MOST_OTHER_FIELDS, "the call: more than {} fields besides its parameters, inputs "
                         "and outputs")
                continue
            count = counts[number] = counts[number] + 1
            if number == _CALL_PARAMETERS:
                _at_most(count, oip.MAX_PARAMETERS, "the call: more than {} parameters")
            elif number in (_INPUTS, _RAW):
                _at_most(count, max_features, "more than {} inputs in one call (one per feature)")
                if number == _INPUTS:
                    values += _check_input(data, start, end, f"inputs[{count - 1}]", read)
                    _at_most(values, max_values, "the inputs' contents hold more than {:,} values in one call "
                             "(rows x features)")
            else:
                _at_most(count, len(oip.OUTPUTS), "more than {} outputs asked for")
                _check_nested(data, start, end, _OUTPUT_PARAMETERS, f"outputs[{count - 1}]")
    except _Unreadable:
        return


def _check_input(data: bytes, start: int, end: int, where: str, read: _ContentsRead) -> int:
    """An input's parameters and other fields bounded, its contents' values counted: how many."""
    values = 0
    for contents_start, contents_end in _check_nested(data, start, end, _INPUT_PARAMETERS, where, _INPUT_CONTENTS):
        values += _contents_values(data, contents_start, contents_end, where, read)
    return values


def _check_nested(data: bytes, start: int, end: int, parameters: int, where: str,
                  kept: int | None = None) -> list[tuple[int, int]]:
    """A tensor's parameters and other fields bounded; the bounds of each field `kept`."""
    count = others = 0
    found: list[tuple[int, int]] = []
    for number, field_start, field_end, _kind in _fields(data, start, end):
        if number == parameters:
            count += 1
            _at_most(count, oip.MAX_PARAMETERS, where + ": more than {} parameters")
        else:
            others += 1
            _at_most(others, MOST_OTHER_FIELDS, where + ": more than {} fields besides its parameters")
            if number == kept:
                found.append((field_start, field_end))
    return found


def _contents_values(data: bytes, start: int, end: int, where: str, read: _ContentsRead) -> int:
    """The values an InferTensorContents holds; InvalidInput for those the gateway never takes,
    and past a few fields read one tag at a time (`read`: the call's so far)."""
    values = pieces = 0
    for number, field_start, field_end, kind in _fields(data, start, end):
        if number in _NOT_NUMBERS:
            raise InvalidInput(f"{where}: {_NOT_NUMBERS[number]} contents are no numbers; send features as FP64 "
                               "or FP32")
        # Each field a tag to read: packed pieces (protobuf joins any number of them), a later
        # version's fields and values sent unpacked, a few only. Uncounted, 4 million empty
        # pieces took the scan 1.9 s (a review).
        if number not in _WIDTHS:
            read.unknown += 1
            _at_most(read.unknown, MOST_OTHER_FIELDS, where + ": more than {} unknown fields in the call's contents")
            continue
        if kind == 2:
            pieces += 1
            _at_most(pieces, PIECES_PER_INPUT, where + ": more than {} fields in its contents: send each type's "
                     "values packed, in one field")
        else:
            read.unpacked += 1
            _at_most(read.unpacked, MOST_OTHER_FIELDS, where + ": more than {} values sent unpacked in the call's "
                     "contents: send them packed, as protobuf's encoders do")
            values += 1
            continue
        width = _WIDTHS[number]
        size = field_end - field_start
        values += size // width if width else len(data[field_start:field_end].translate(None, _CONTINUED))
    return values


def _at_most(count: int, most: int, what: str) -> None:
    if count > most:
        raise InvalidInput(what.format(most))


def _fields(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, start, end, wire type) of each field in data[pos:end]; for a length-delimited
    one (wire type 2), the bounds of its bytes (else of nothing)."""
    while pos < end:
        # A tag or a length of one byte (nearly all of them: field numbers below 16, sizes below
        # 128) is read here, not by a call: a third of the scan of 1,024 inputs went to `_varint`.
        tag = data[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(data, pos, end)
        number, kind = tag >> 3, tag & 7
        if kind == 2:
            if pos < end and data[pos] < 0x80:
                size, pos = data[pos], pos + 1
            else:
                size, pos = _varint(data, pos, end)
            if pos + size > end:
                raise _Unreadable
            yield number, pos, pos + size, kind
            pos += size
        elif kind == 0:
            _, pos = _varint(data, pos, end)
            yield number, pos, pos, kind
        elif kind in (1, 5):
            pos += 8 if kind == 1 else 4
            if pos > end:
                raise _Unreadable
            yield number, pos, pos, kind
        else:  # groups (3, 4), or no wire type at all
            raise _Unreadable


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _Unreadable
