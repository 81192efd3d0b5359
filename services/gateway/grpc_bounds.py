"""A ModelInferRequest's repeated fields counted on the wire, before protobuf parses it.

protobuf parses a message in one C call holding the GIL: a 7.9 MiB ModelInferRequest of 560,000
`parameters` entries held the gateway's event loop 0.45 s (four at once 2.1 s, a liveness check
waiting behind them; a review), though refused afterwards for its 33rd parameter. The fields
that can repeat without limit are counted here first, from the wire format's tags, stopping at
the first one over its bound: a message within the bounds costs a scan of its tags (a message
of 1,024 inputs ~1 ms), and a flood of entries is refused after reading a few of them.

Only what the protocol repeats is bounded: the call's parameters, inputs, outputs and raw
contents, and each input's or output's parameters. Anything the scan cannot read (a malformed
tag, a group) is left to protobuf's parser, which refuses it with its own reason.
"""

from __future__ import annotations

from collections.abc import Iterator

from services.gateway import oip
from services.gateway.errors import InvalidInput

# Field numbers of the protocol's .proto (grpc_service.proto, package inference).
_CALL_PARAMETERS, _INPUTS, _OUTPUTS, _RAW = 4, 5, 6, 7
_INPUT_PARAMETERS, _OUTPUT_PARAMETERS = 4, 2
# Every other field of one message together (a name, an id, a shape's dimensions sent unpacked,
# fields of a later version of the protocol) this many at most: counted by number, 1.7 million
# distinct unknown fields took the scan 5 s, where protobuf parses them in 38 ms (a review).
MOST_OTHER_FIELDS = 64


class _Unreadable(Exception):
    """The scan cannot read on: protobuf's parser decides."""


def check_infer_request(data: bytes, max_features: int) -> None:
    """InvalidInput for a ModelInferRequest whose repeated fields are over the call's bounds."""
    counts = dict.fromkeys((_CALL_PARAMETERS, _INPUTS, _OUTPUTS, _RAW), 0)
    others = 0
    try:
        for number, start, end in _fields(data, 0, len(data)):
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
                    _check_nested(data, start, end, _INPUT_PARAMETERS, f"inputs[{count - 1}]")
            else:
                _at_most(count, len(oip.OUTPUTS), "more than {} outputs asked for")
                _check_nested(data, start, end, _OUTPUT_PARAMETERS, f"outputs[{count - 1}]")
    except _Unreadable:
        return


def _check_nested(data: bytes, start: int, end: int, parameters: int, where: str) -> None:
    count = others = 0
    for number, _start, _end in _fields(data, start, end):
        if number == parameters:
            count += 1
            _at_most(count, oip.MAX_PARAMETERS, where + ": more than {} parameters")
        else:
            others += 1
            _at_most(others, MOST_OTHER_FIELDS, where + ": more than {} fields besides its parameters")


def _at_most(count: int, most: int, what: str) -> None:
    if count > most:
        raise InvalidInput(what.format(most))


def _fields(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each field in data[pos:end]; for a length-delimited one, the
    bounds of its bytes (else of nothing)."""
    while pos < end:
        tag, pos = _varint(data, pos, end)
        number, kind = tag >> 3, tag & 7
        if kind == 0:
            _, pos = _varint(data, pos, end)
            yield number, pos, pos
        elif kind == 2:
            size, pos = _varint(data, pos, end)
            if pos + size > end:
                raise _Unreadable
            yield number, pos, pos + size
            pos += size
        elif kind in (1, 5):
            pos += 8 if kind == 1 else 4
            if pos > end:
                raise _Unreadable
            yield number, pos, pos
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
