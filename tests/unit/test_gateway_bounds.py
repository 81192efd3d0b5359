"""A ModelInferRequest's repeated fields counted on the wire before protobuf parses it (grpc_bounds.py),
and status messages cut to fit gRPC's trailer. The messages are written here byte by byte, from the
wire format: importing the gateway's stubs in this process would clash with tritonclient's
(tests/unit/test_gateway_grpc.py says why); tests/integration/test_gateway.py sends real ones."""

from __future__ import annotations

import re
import urllib.parse

import pytest

from services.gateway.errors import MAX_MESSAGE_ENCODED, InvalidInput, cut_message
from services.gateway.grpc_bounds import MOST_OTHER_FIELDS, PIECES_PER_INPUT, check_infer_request


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def parameters(number: int, count: int) -> bytes:
    """`count` map entries (key, and an InferParameter with int64_param) as field `number`."""
    return b"".join(field(number, field(1, f"p{i}".encode()) + field(2, varint(2 << 3) + varint(i)))
                    for i in range(count))


def tensor(name: str, params: int = 0) -> bytes:
    packed_shape = field(3, varint(1))
    contents = field(5, field(7, b"\x00" * 8))  # fp64_contents, packed
    return field(5, field(1, name.encode()) + field(2, b"FP64") + packed_shape + parameters(4, params) + contents)


def output(name: str, params: int) -> bytes:
    return field(6, field(1, name.encode()) + parameters(2, params))


CALL = field(1, b"default") + tensor("a") + tensor("b")


def test_a_call_within_the_bounds_passes() -> None:
    check_infer_request(CALL + parameters(4, 32) + tensor("c", 32) + output("score", 32), max_features=3)


@pytest.mark.parametrize(("extra", "reason"), [
    (parameters(4, 33), "the call: more than 32 parameters"),
    (parameters(4, 560_000), "the call: more than 32 parameters"),
    (tensor("c", 33), "inputs[2]: more than 32 parameters"),
    (output("score", 33), "outputs[0]: more than 32 parameters"),
    (tensor("c") + tensor("d"), "more than 3 inputs in one call (one per feature)"),
    (b"".join(output("score", 0) for _ in range(7)), "more than 6 outputs asked for"),
    (field(3, b"id") * (MOST_OTHER_FIELDS + 1),
     f"the call: more than {MOST_OTHER_FIELDS} fields besides its parameters, inputs and outputs"),
    # Distinct unknown fields (a later protocol's, or a flood): 1.7 million took the scan 5 s (a review).
    (b"".join(varint((100 + i) << 3) + b"\x01" for i in range(100_000)),
     f"the call: more than {MOST_OTHER_FIELDS} fields besides its parameters, inputs and outputs"),
    (field(5, b"".join(varint((100 + i) << 3) + b"\x01" for i in range(MOST_OTHER_FIELDS + 1))),
     f"inputs[2]: more than {MOST_OTHER_FIELDS} fields besides its parameters"),
], ids=["call", "flood", "input", "output", "inputs", "outputs", "other", "unknown", "unknown-nested"])
def test_a_call_over_a_bound_is_refused_before_it_is_parsed(extra: bytes, reason: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{re.escape(reason)}$"):
        check_infer_request(CALL + extra, max_features=3)


def holding(*contents: bytes) -> bytes:
    """A call of one input for each InferTensorContents of `contents`."""
    return field(1, b"default") + b"".join(
        field(5, field(1, f"f{i}".encode()) + field(2, b"FP64") + field(3, varint(1)) + field(5, one))
        for i, one in enumerate(contents))


@pytest.mark.parametrize(("contents", "reason"), [
    # 4.2 million values in an 8 MiB message held the event loop 77-132 ms before being refused (a review).
    (field(7, b"\x00" * 8 * 101), "the inputs' contents hold more than 100 values in one call (rows x features)"),
    (field(6, b"\x00" * 4 * 101), "the inputs' contents hold more than 100 values in one call (rows x features)"),
    (field(3, b"\x81\x01" * 101), "the inputs' contents hold more than 100 values in one call (rows x features)"),
    ((varint(2 << 3) + b"\x01") * (MOST_OTHER_FIELDS + 1),
     f"inputs[0]: more than {MOST_OTHER_FIELDS} values sent unpacked in the call's contents: send them packed, as "
     "protobuf's encoders do"),
    (field(8, b"") * 3, "inputs[0]: BYTES contents are no numbers; send features as FP64 or FP32"),
    (field(1, b"\x01"), "inputs[0]: BOOL contents are no numbers; send features as FP64 or FP32"),
    # Empty packed pieces, or fields of a later version: 4 million of them took the scan 1.9 s (a review).
    (field(7, b"") * (PIECES_PER_INPUT + 1),
     f"inputs[0]: more than {PIECES_PER_INPUT} fields in its contents: send each type's values packed, in one field"),
    ((varint(9 << 3) + b"\x01") * (MOST_OTHER_FIELDS + 1),
     f"inputs[0]: more than {MOST_OTHER_FIELDS} unknown fields in the call's contents"),
], ids=["fp64", "fp32", "int64", "unpacked", "bytes", "bool", "pieces", "unknown"])
def test_contents_over_rows_times_features_are_refused_before_they_are_parsed(contents: bytes, reason: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{re.escape(reason)}$"):
        check_infer_request(holding(contents), max_features=3, max_values=100)


def test_fields_read_one_tag_at_a_time_are_bounded_for_the_call_not_each_input() -> None:
    """1,024 inputs each just under its own bound held the event loop 98 ms (a review)."""
    unpacked = (varint(2 << 3) + b"\x01") * 40  # 40 values sent unpacked, in each of two inputs
    with pytest.raises(InvalidInput, match=f"inputs\\[1\\]: more than {MOST_OTHER_FIELDS} values sent unpacked"):
        check_infer_request(holding(unpacked, unpacked), max_features=3, max_values=100)
    unknown = (varint(9 << 3) + b"\x01") * 40
    with pytest.raises(InvalidInput, match=f"inputs\\[1\\]: more than {MOST_OTHER_FIELDS} unknown fields"):
        check_infer_request(holding(unknown, unknown), max_features=3, max_values=100)


def test_contents_within_rows_times_features_pass() -> None:
    for contents in (field(7, b"\x00" * 8 * 100), field(3, b"\x81\x01" * 100), (varint(2 << 3) + b"\x01") * 10):
        check_infer_request(holding(contents), max_features=3, max_values=100)
    check_infer_request(holding(field(7, b"\x00" * 8 * 60), field(7, b"\x00" * 8 * 40)), max_features=3,
                        max_values=100)
    with pytest.raises(InvalidInput, match="the inputs' contents hold more than 100 values"):  # the call's, together
        check_infer_request(holding(field(7, b"\x00" * 8 * 60), field(7, b"\x00" * 8 * 41)), max_features=3,
                            max_values=100)


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff not a message", b"\x0b\x0c", CALL + b"\x2a\xff"],
                         ids=["varint", "group", "truncated"])
def test_what_the_scan_cannot_read_is_left_to_the_parser(garbage: bytes) -> None:
    check_infer_request(garbage, max_features=3)  # protobuf refuses it with its own reason


def test_a_reason_is_cut_to_fit_grpcs_trailer_once_percent_encoded() -> None:
    """1,000 emoji within the 1,000 characters made 12 KB encoded, over grpc's 8 KiB (a review)."""
    cut = cut_message("no model named " + "\U0001f600" * 1_000)
    encoded = urllib.parse.quote(cut, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
    assert cut.endswith("...") and cut.startswith("no model named \U0001f600")
    assert MAX_MESSAGE_ENCODED - 12 < len(encoded) <= MAX_MESSAGE_ENCODED
    assert cut_message("é" * 10) == "é" * 10
    ascii_text = "x" * 5_000
    assert cut_message(ascii_text) == "x" * 997 + "..."
