"""The gateway's pure logic: OIP tensors to rows, REST bodies, the status table, API keys and rate
limits, the catalog (schedule or model, versions, features), model-direct answers, the page's figures.

Nothing here imports the generated gRPC stubs: their `inference.*` messages would clash with the
ones tritonclient registers in the same process (tests/integration/test_gateway.py uses both).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import ClientDisconnect

from services.client.client import InvalidRequest
from services.control.schedule import Schedule
from services.control.topic import ScheduleBook
from services.core.errors import BrokerUnavailable, ConfigError
from services.gateway import rest as rest_module
from services.gateway.auth import ANONYMOUS, ApiKeys, RateLimit, parse_entries
from services.gateway.catalog import MODEL, SCHEDULE, Catalog
from services.gateway.engine import Gateway, _kafka_id, _model_row, _raise_failures, _request_ids, call_budget
from services.gateway.errors import (
    AnswerFailed,
    AnswerTimedOut,
    BodyTooLarge,
    CallError,
    InvalidInput,
    NotFound,
    RateLimited,
    TurnedAway,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
    status_of,
)
from services.gateway.http_guard import CLOSED_BY
from services.gateway.oip import (
    MAX_ID_CHARS,
    InferResult,
    RowAnswer,
    Tensor,
    check_input_count,
    check_values,
    from_list,
    from_raw,
    max_json_structures,
    raw_bytes,
    requested_outputs,
    rows_of,
    timeout_ms,
)
from services.gateway.rest import _body, _header_ms, check_encoding, check_media_type, check_origin, parse_call
from services.gateway.settings import GatewaySettings
from services.gateway.signatures import Contract, FeatureSpec, FixedSignatures
from services.gateway.ui import snapshot_from

# -- tensors -> rows -------------------------------------------------------------------------------


def column(name: str, values: list[float], datatype: str = "FP64") -> Tensor:
    return Tensor(name, datatype, (len(values),), values)


def test_one_tensor_per_feature_gives_one_row_per_element() -> None:
    rows = rows_of([column("a", [1.0, 2.0]), column("b", [3.0, 4.0])], None, 10)
    assert rows == [{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 4.0}]


def test_a_matrix_is_named_by_feature_names_or_by_the_models_order() -> None:
    named = Tensor("x", "FP32", (2, 2), [1.0, 2.0, 3.0, 4.0], {"feature_names": "b, a"})
    assert rows_of([named], None, 10) == [{"b": 1.0, "a": 2.0}, {"b": 3.0, "a": 4.0}]
    unnamed = Tensor("x", "FP64", (1, 2), [5.0, 6.0])
    assert rows_of([unnamed], ("p", "q"), 10) == [{"p": 5.0, "q": 6.0}]
    with pytest.raises(InvalidInput, match="name its columns with the parameter feature_names"):
        rows_of([unnamed], ("p", "q", "r"), 10)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ([], "no inputs"),
        ([column("a", [1.0]), column("b", [1.0, 2.0])], "input 'b' has 2 rows, the others 1"),
        ([column("a", [1.0]), column("a", [2.0])], "'a' given more than once"),
        ([column("a", [float("nan")])], "input 'a' row 0 is nan: features must be finite"),
        ([Tensor("a", "FP64", (1, 1, 1), [1.0])], r"a feature tensor is \[n\] or \[n, 1\]"),
        ([Tensor("x", "FP64", (1, 2), [1.0, 2.0], {"feature_names": "a"})], "1 names for 2 columns"),
        ([Tensor("x", "FP64", (1, 2), [1.0, float("inf")], {"feature_names": "a,b"})], "column 'b' is inf"),
        ([column("a", [])], "no rows"),
    ],
)
def test_malformed_inputs_are_refused_naming_the_problem(tensors: list[Tensor], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        rows_of(tensors, None, 10)


def test_more_rows_than_allowed_are_refused() -> None:
    with pytest.raises(InvalidInput, match="3 rows in one call; at most 2"):
        rows_of([column("a", [1.0, 2.0, 3.0])], None, 2)


def test_raw_little_endian_data_of_any_number_type() -> None:
    assert from_raw("a", "FP32", (2,), np.array([1.5, -2.0], "<f4").tobytes()) == [1.5, -2.0]
    assert from_raw("a", "INT64", (1,), np.array([7], "<i8").tobytes()) == [7.0]
    with pytest.raises(InvalidInput, match="12 bytes of data for shape"):
        from_raw("a", "FP64", (2,), b"\0" * 12)


@pytest.mark.parametrize("datatype", ["FP32", "FP16"])
def test_a_json_value_of_a_narrow_float_type_is_the_value_that_type_holds_as_in_raw_bytes(datatype: str) -> None:
    """REST JSON kept 0.1 as the double 0.1 where raw bytes and gRPC gave float32's 0.100000001...:
    the same call, two feature values and two Kafka ids (a review)."""
    sent = [0.1, 1e-3]
    raw = np.array(sent, "<f4" if datatype == "FP32" else "<f2").tobytes()
    assert from_list("a", datatype, (2,), sent) == from_raw("a", datatype, (2,), raw) != sent


def test_feature_names_on_one_of_several_inputs_is_refused_not_ignored() -> None:
    """Sent with another input, `feature_names` was dropped and the column taken as the tensor's
    name: a confident answer on a feature the caller did not mean (a review)."""
    named = Tensor("x", "FP64", (1, 1), [1.0], {"feature_names": "b"})
    with pytest.raises(InvalidInput, match="input 'x' has feature_names, which names the columns of a lone"):
        rows_of([named, column("a", [2.0])], None, 10)


def test_timeout_parameter_is_microseconds_rounded_up_to_ms() -> None:
    assert timeout_ms({}) is None
    assert timeout_ms({"timeout": 250_000}) == 250
    assert timeout_ms({"timeout": 1}) == 1
    assert timeout_ms({"timeout": 0}) is None, "no timeout, as Triton reads it: the schedule's default applies"
    for bad in (-5, "100", True, 1.5):
        with pytest.raises(InvalidInput, match="timeout"):
            timeout_ms({"timeout": bad})


def test_outputs_asked_for_must_exist() -> None:
    assert requested_outputs(["label", "score"]) == ("label", "score")
    with pytest.raises(InvalidInput, match=r"unknown output.*'proba'"):
        requested_outputs(["proba"])


def test_outputs_are_asked_for_once_each_and_read_no_further() -> None:
    """~930,000 copies of one output name were accepted (1.1 s of CPU), and 4 million unknown ones
    listed in an error text for 1.9 s."""
    with pytest.raises(InvalidInput, match="output 'score' is asked for twice"):
        requested_outputs(["score", "label", "score"])
    read = []

    def names() -> Iterator[str]:
        for name in ("nope-1", "nope-2", "nope-3"):
            read.append(name)
            yield name

    with pytest.raises(InvalidInput, match=r"^unknown output 'nope-1'; outputs are score, label"):
        requested_outputs(names())
    assert read == ["nope-1"]
    many = orjson.dumps({"inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": [1]}],
                         "outputs": [{"name": "score"}] * 7})
    with pytest.raises(InvalidInput, match="7 outputs asked for; there are 6"):
        parse_call(many, None, 1000, 1024)


def test_response_parameters_summarise_the_rows() -> None:
    ok = RowAnswer("OK", "champion", "v1", 0.9, "benign", "preferred model answered", 3)
    fallback = RowAnswer("FALLBACK", "challenger", "v2", 0.2, "malignant", "champion late", 3)
    one = InferResult("default", "3", "id", (ok,), ())
    assert one.parameters() == {"status": "OK", "schedule_version": 3, "model": "champion", "version": "v1",
                                "reason": "preferred model answered"}
    both = InferResult("default", "3", "id", (ok, fallback), ("score", "model"))
    assert both.parameters() == {"status": "FALLBACK", "schedule_version": 3}
    assert both.columns() == [("score", "FP64", [0.9, 0.2]), ("model", "BYTES", ["champion", "challenger"])]


# -- REST bodies ------------------------------------------------------------------------------------


def test_rest_json_body() -> None:
    body = orjson.dumps({"id": "r1", "parameters": {"timeout": 5000}, "outputs": [{"name": "score"}],
                         "inputs": [{"name": "a", "datatype": "FP64", "shape": [2, 1], "data": [[1], [2.5]]}]})
    call = parse_call(body, None, 1000, 1024)
    assert (call.id, call.outputs, call.parameters) == ("r1", ("score",), {"timeout": 5000})
    assert call.tensors[0].values == [1.0, 2.5]


def _plain_or(plain: Any, *others: Any) -> st.SearchStrategy[Any]:
    """The plain form's value half the time: inputs one field away from plain come often."""
    return st.one_of(st.just(plain), st.sampled_from(others))


_NEAR_PLAIN_INPUT = st.fixed_dictionaries(
    {"name": _plain_or("a", "", "é" * 128, "é" * 129, "x" * 300, 7, None),
     "datatype": _plain_or("FP64", "FP32", "INT64", "fp64", 1),
     "shape": _plain_or([1], [True], [1, 1], [2], [0], [-1], [1.0], "1", []),
     "data": _plain_or([1.5], [1], [True], [math.nan], [math.inf], [1.5, 2.5], [[1.5]], ["1"], [], "x")},
    optional={"parameters": st.sampled_from([{}, {"binary_data_size": 8}, {"note": "x"}]), "extra": st.just(1)})


@settings(max_examples=400, deadline=None)
@given(items=st.lists(_NEAR_PLAIN_INPUT, min_size=1, max_size=3), max_rows=st.integers(1, 3),
       max_features=st.integers(1, 4))
def test_a_plain_input_read_in_one_step_is_what_the_checks_field_by_field_make_of_it(
    items: list[Any], max_rows: int, max_features: int
) -> None:
    """The REST parse reads the common input (one FP64 value of a feature, nothing else) in one
    step: it must read each such input as the field-by-field checks do, and leave every other
    form to them (their message, their refusal). Compared by repr: 1 == 1.0 == True."""
    for item in items:
        plain = rest_module._plain_tensor(item)
        try:
            [checked] = rest_module._tensors([item], memoryview(b""), max_rows, max_features)
        except InvalidInput:
            assert plain is None
            continue
        assert plain is None or repr(plain) == repr(checked)
    body = orjson.dumps({"inputs": items})
    try:  # as JSON reads them back (a NaN is written null)
        check_input_count(len(items), max_features)
        expected = repr(rest_module._tensors(orjson.loads(body)["inputs"], memoryview(b""), max_rows, max_features))
    except InvalidInput as exc:
        expected = str(exc)
    try:
        got = repr(list(parse_call(body, None, max_rows, max_features).tensors))
    except InvalidInput as exc:
        got = str(exc)
    assert got == expected


def test_parameters_are_the_protocols_scalars_and_only_those_read_are_kept() -> None:
    """A valid row with 8 MiB of nested parameters got 200 and held ~180 MB until its answer came."""
    one = [{"name": "a", "datatype": "FP64", "shape": [1], "data": [1], "parameters": {"note": "x", "n": 2}}]
    call = parse_call(orjson.dumps({"inputs": one, "parameters": {"timeout": 5000, "priority": 1, "tag": "t",
                                                                  "flag": True, "w": 0.5}}), None, 1000, 1024)
    assert call.parameters == {"timeout": 5000} and call.tensors[0].parameters == {}
    nested = orjson.dumps({"inputs": one, "parameters": {"x": [[], []]}})
    with pytest.raises(InvalidInput, match=r"the call: parameter 'x' must be a boolean, a number or a string"):
        parse_call(nested, None, 1000, 1024)
    nested_input = [{**one[0], "parameters": {"x": {"y": 1}}}]
    with pytest.raises(InvalidInput, match=r"input 'a': parameter 'x' must be a boolean, a number or a string"):
        parse_call(orjson.dumps({"inputs": nested_input}), None, 1000, 1024)
    crowded = orjson.dumps({"inputs": one, "parameters": {f"p{i}": i for i in range(33)}})
    with pytest.raises(InvalidInput, match="the call: 33 parameters; at most 32"):
        parse_call(crowded, None, 1000, 1024)


def test_a_body_of_more_arrays_than_a_call_can_hold_is_refused_before_it_is_parsed() -> None:
    """orjson holds the GIL for the whole parse, off the event loop or not: 8 MiB of `[[]],`
    froze the gateway's loop 0.5-0.8 s per body, though refused as invalid afterwards."""
    one = {"name": "a", "datatype": "FP64", "shape": [2, 1], "data": [[1], [2]]}
    most = max_json_structures(2, 2)
    fits = orjson.dumps({"inputs": [one], "id": "[" * 200})
    assert parse_call(fits, None, 2, 2).tensors[0].values == [1.0, 2.0]
    flood = orjson.dumps({"inputs": [one], "junk": [[]] * most})
    held = flood.count(b"[") + flood.count(b"{") + flood.count(b":")
    with pytest.raises(InvalidInput, match=rf"holds {held:,} JSON arrays, objects and members, more .* \({most:,}\)"):
        parse_call(flood, None, 2, 2)
    # One object's members: 8 MiB of them held the event loop 0.3 s, then the call was answered (a review).
    members = orjson.dumps({"inputs": [one], "junk": {f"k{i}": 0 for i in range(most)}})
    with pytest.raises(InvalidInput, match=r"JSON arrays, objects and members, more than"):
        parse_call(members, None, 2, 2)


def test_a_key_given_twice_in_one_object_is_refused_not_read_as_its_last_value() -> None:
    """orjson keeps a repeated key's last value, other readers its first: `"data": [1.0], "data":
    [999.0]` was answered 200 on 999.0 (a review)."""
    twice = b'{"inputs":[{"name":"a","datatype":"FP64","shape":[1],"data":[1.0],"data":[999.0]}]}'
    with pytest.raises(InvalidInput, match=r"^the body gives the key 'data' twice in one object: send each once$"):
        parse_call(twice, None, 1000, 1024)
    one = b'{"name":"a","datatype":"FP64","shape":[1],"data":[1.0]}'
    with pytest.raises(InvalidInput, match="the key 'inputs' twice"):
        parse_call(b'{"inputs":[' + one + b'],"inputs":[' + one + b"]}", None, 1000, 1024)
    # Colons in strings are no keys: read as before.
    named = b'{"id":"a:b:c","inputs":[{"name":"x:y","datatype":"FP64","shape":[1],"data":[2.0]}]}'
    call = parse_call(named, None, 1000, 1024)
    assert (call.id, call.tensors[0].name, call.tensors[0].values) == ("a:b:c", "x:y", [2.0])
    # Pretty-printed, or a space before each colon: a key given twice is told all the same.
    pretty = b'{\n  "inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": [1.0], "data": [9.0]}]\n}'
    spaced_twice = b'{"inputs" : [{"name" : "a:b", "datatype" : "FP64", "shape" : [1], "data" : [1], "data" : [9]}]}'
    # One space before one colon hid one repeated key from a count of `":` as written (a later review).
    one_spaced = b'{"id" : "a", "inputs":[{"name":"a","datatype":"FP64","shape":[1],"data":[1.0],"data":[9.0]}]}'
    for body in (pretty, spaced_twice, one_spaced):
        with pytest.raises(InvalidInput, match="the key 'data' twice"):
            parse_call(body, None, 1000, 1024)
    spaced = b'{"id" : "u:1", "inputs" : [{"name" : "a:b", "datatype" : "FP64", "shape" : [1], "data" : [3.0]}]}'
    assert parse_call(spaced, None, 1000, 1024).tensors[0].values == [3.0]


def test_a_body_nested_deeper_than_the_second_parse_reads_is_refused_not_a_500() -> None:
    """orjson reads 1,024 levels, Python's json fewer: the duplicate-key parse of such a body raised
    RecursionError, a 500 and a logged traceback for each call (a review)."""
    deep = b'{"inputs":[{"name":"x","datatype":"FP64","shape":[1],"data":' + b"[" * 1000 + b'"a:b"' + b"]" * 1000
    with pytest.raises(InvalidInput, match=r"^the body nests its arrays and objects too deep$"):
        parse_call(deep + b',"data":[1]}]}', None, 1000, 1024)


def test_more_parameters_on_an_output_than_on_a_call_are_refused() -> None:
    one = {"name": "a", "datatype": "FP64", "shape": [1], "data": [1.0]}
    output = {"name": "score", "parameters": {f"p{i}": i for i in range(33)}}
    crowded = orjson.dumps({"inputs": [one], "outputs": [output]})
    with pytest.raises(InvalidInput, match=r"^output 'score': 33 parameters; at most 32$"):
        parse_call(crowded, None, 1000, 1024)


@pytest.mark.parametrize(("parameters", "reason"), [
    ([1, 2], "output 'score': 'parameters' must be an object"),
    ({"x": {"a": [1]}}, "output 'score': parameter 'x' must be a boolean, a number or a string"),
    ({"x": None}, "output 'score': parameter 'x' must be a boolean, a number or a string"),
])
def test_an_output_s_parameters_are_held_to_the_protocol_s_types_as_a_call_s_are(parameters: Any, reason: str) -> None:
    """A list, or a nested object, passed as an output's parameters without a word, where a call's
    or an input's were refused (the docs said every one is; a review). gRPC's: test_gateway_grpc.py."""
    one = {"name": "a", "datatype": "FP64", "shape": [1], "data": [1.0]}
    body = orjson.dumps({"inputs": [one], "outputs": [{"name": "score", "parameters": parameters}]})
    with pytest.raises(InvalidInput, match=f"^{re.escape(reason)}"):
        parse_call(body, None, 1000, 1024)


def test_rest_binary_tensor_extension() -> None:
    header = orjson.dumps({"inputs": [
        {"name": "a", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 16}},
        {"name": "b", "datatype": "FP32", "shape": [2], "data": [3, 4]},
        {"name": "c", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": 8}},
    ]})
    body = header + np.array([1.0, 2.0], "<f8").tobytes() + np.array([5, 6], "<i4").tobytes()
    call = parse_call(body, str(len(header)), 1000, 1024)
    assert [t.values for t in call.tensors] == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    with pytest.raises(InvalidInput, match="4 bytes of binary data belong to no input"):
        parse_call(body + b"\0" * 4, str(len(header)), 1000, 1024)
    both = orjson.dumps({"inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": [9.0],
                                     "parameters": {"binary_data_size": 8}}]})
    with pytest.raises(InvalidInput, match=r"^input 'a': both binary_data_size and 'data'; send one$"):
        parse_call(both + np.array([1.0], "<f8").tobytes(), str(len(both)), 1000, 1024)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_narrow_float_that_is_no_finite_number_is_said_as_such_not_out_of_range(value: float) -> None:
    for datatype in ("FP32", "FP16"):
        with pytest.raises(InvalidInput, match=rf"^input 'a' holds {value}: features must be finite numbers$"):
            check_values("a", datatype, [1.0, value])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"inputs": []}', "'inputs' must be a non-empty list"),
        (b'{"inputs": [{"name": "a", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}',
         "datatype BYTES is not a number type"),
        (b'{"inputs": [{"name": "a", "datatype": "FP64", "shape": [2], "data": [1]}]}', "1 values for shape"),
        (b'{"inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": ["1"]}]}', "'1' is not a number"),
        (b'{"inputs": [{"name": "a", "datatype": "FP64", "shape": [1]}]}', "input 'a' has no 'data'"),
        (b'{"inputs": [{"name": "a", "datatype": "FP64", "shape": [-1], "data": [1]}]}', "'shape' must be"),
        (b'{"id": 5, "inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": [1]}]}',
         "'id' must be a string"),
        (b'{"parameters": [], "inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": [1]}]}',
         "'parameters' must be an object"),
        (b'{"inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": [1], "parameters": 0}]}',
         "input 'a': 'parameters' must be an object"),
        (b'{"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [1000.5]}]}',
         r"1000.5 is not a INT8 value \(whole numbers -128..127\)"),
        (b'{"inputs": [{"name": "a", "datatype": "UINT8", "shape": [2], "data": [1, -3]}]}', "-3 is not a UINT8"),
        (b'{"inputs": [{"name": "a", "datatype": "INT64", "shape": [1], "data": [1e19]}]}', "is not a INT64 value"),
        (b'{"inputs": [{"name": "a", "datatype": "FP16", "shape": [1], "data": [1e300]}]}', "out of FP16's range"),
        (b'{"inputs": [{"name": "a", "datatype": "FP64", "shape": [2, 2], "data": [[1, 2, 3], [4]]}]}',
         "nested data must be one list of values per row"),
    ],
)
def test_malformed_rest_bodies(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_call(body, None, 1000, 1024)


def _one_input(shape: list[int], data: Any = (), call_id: Any = "") -> bytes:
    return orjson.dumps({"id": call_id, "inputs": [{"name": "a", "datatype": "FP64", "shape": shape,
                                                    "data": list(data)}]})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # Refused from the shape alone, before any element count is computed or data read: 40,000
        # dimensions of 2^63 once took seconds of the event loop, then a 500.
        (_one_input([2**63 - 1] * 40_000), r"'shape' must be \[n\], \[n, 1\] or \[n, k\].*\.\.\.$"),
        (_one_input([2, 1, 1], [1, 2]), r"'shape' must be \[n\], \[n, 1\] or \[n, k\]"),
        (_one_input([4_000_000], [0.5] * 10), "4000000 rows in one call; at most 1000"),
        (_one_input([1], [1], call_id="x" * (MAX_ID_CHARS + 1)), f"'id' of {MAX_ID_CHARS + 1} characters"),
        # Many features: 8 MB of INT8 as 1,000 rows of 8,000 features was half a GB of Python floats.
        (_one_input([1000, 8000], [0.5] * 10), "input 'a': 8000 features in one call; at most 1024"),
        (orjson.dumps({"inputs": [{"name": f"f{i}", "datatype": "FP64", "shape": [1], "data": [1]}
                                  for i in range(1025)]}), "1025 inputs in one call; at most 1024"),
        # Several inputs of the largest shape each: together over rows x features.
        (orjson.dumps({"inputs": [{"name": f"m{i}", "datatype": "INT8", "shape": [1000, 1024], "data": [1]}
                                  for i in range(2)]}),
         "input 'm1': the inputs hold more than 1,024,000 values in one call"),
    ],
)
def test_bodies_that_would_be_costly_to_read_are_refused_from_their_headers(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_call(body, None, 1000, 1024)


def test_the_extremes_of_the_integer_types_are_their_values() -> None:
    body = orjson.dumps({"inputs": [
        {"name": "a", "datatype": "INT64", "shape": [2], "data": [2**63 - 1, -(2**63)]},
        {"name": "b", "datatype": "UINT64", "shape": [2], "data": [2**64 - 1, 0]},
        {"name": "c", "datatype": "INT8", "shape": [2], "data": [127, -128]},
    ]})
    assert [len(t.values) for t in parse_call(body, None, 1000, 1024).tensors] == [2, 2, 2]


@pytest.mark.parametrize(("datatype", "value"), [
    ("INT64", 2**63), ("INT64", 2**63 + 1000), ("INT64", 2.0**63),
    ("UINT64", 2**64), ("UINT64", 2.0**64), ("UINT64", -1), ("INT8", 128), ("INT32", 1.5),
])
def test_a_number_beyond_its_integer_type_is_refused_even_where_a_double_cannot_tell(
    datatype: str, value: float
) -> None:
    """Compared as doubles, 2^63 equalled INT64's largest value (2^63 - 1 rounds to it): answered 200.
    (orjson reads a number beyond 64 bits as a double: 2^64 arrives as 2.0^64.)"""
    body = json.dumps({"inputs": [{"name": "a", "datatype": datatype, "shape": [1], "data": [value]}]}).encode()
    with pytest.raises(InvalidInput, match=f"is not a {datatype} value"):
        parse_call(body, None, 1000, 1024)


def test_the_largest_doubles_below_an_integer_types_end_are_its_values() -> None:
    below = float(np.nextafter(2.0**63, 0))
    lowest = float(np.nextafter(-(2.0**63), 0))
    body = orjson.dumps({"inputs": [{"name": "a", "datatype": "INT64", "shape": [2], "data": [below, lowest]}]})
    assert parse_call(body, None, 1000, 1024).tensors[0].values == [below, lowest]
    # -2^63 as a double is what orjson makes of any integer below INT64's range: refused as one.
    with pytest.raises(InvalidInput, match="is not a INT64 value"):
        parse_call(orjson.dumps({"inputs": [{"name": "a", "datatype": "INT64", "shape": [1], "data": [-(2.0**63)]}]}),
                   None, 1000, 1024)


@pytest.mark.parametrize(("shape", "data"), [
    ([2], [1.0, [[2.0]]]), ([2], [[1.0], [2.0]]), ([1, 2], [[[1.0], [2.0]]]), ([2, 1], [[1.0], [[2.0]]]),
    ([1, 2], [1.0, [2.0]]),
])
def test_data_nested_otherwise_than_its_shape_is_refused(shape: list[int], data: list[object]) -> None:
    """Flattened whatever its nesting, such data was answered as if it had the shape."""
    body = orjson.dumps({"inputs": [{"name": "a", "datatype": "FP64", "shape": shape, "data": data}]})
    with pytest.raises(InvalidInput, match=r"^input 'a': (nested data must be one list of values per row|data "
                                           r"nested deeper than its shape says)"):
        parse_call(body, None, 1000, 1024)


def test_data_flat_or_one_list_per_row_is_read_row_major() -> None:
    for data in ([1, 2.5, 3, 4], [[1, 2.5], [3, 4]]):
        body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 2], "data": data}]})
        assert parse_call(body, None, 1000, 1024).tensors[0].values == [1.0, 2.5, 3.0, 4.0]


def test_names_given_twice_are_named_once_each() -> None:
    inputs = [{"name": n, "datatype": "FP64", "shape": [1], "data": [1]} for n in ["a", "b"] * 10_000 + ["c"]]
    call = parse_call(orjson.dumps({"inputs": inputs}), None, 1000, 100_000)
    with pytest.raises(InvalidInput, match=r"^input names: 'a', 'b' given more than once$"):
        rows_of(call.tensors, None, 1000)


@pytest.mark.parametrize("value", ["\u00b2", "-5", "0", "1.5", "", " "])
def test_a_deadline_header_that_is_no_positive_whole_number_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="X-Timeout-Ms must be a positive whole number"):
        _header_ms(value)


def test_a_deadline_header_of_more_digits_than_read_is_served_within_the_limit_as_a_long_timeout_is() -> None:
    """16 digits or more were refused as 'no whole number', where `timeout=2^63-1` (us) is served
    within --max-budget-ms (a review)."""
    for digits in (16, 5000):
        assert call_budget([_header_ms("9" * digits)], 200, 60_000) == 60_000


@pytest.mark.parametrize("value", ["\u00b9", "9" * 5000, "-1", "x"])
def test_a_binary_header_length_that_is_no_whole_number_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match=r"Inference-Header-Content-Length .* does not fit the body"):
        parse_call(_one_input([1], [1]), value, 1000, 1024)


def test_a_calls_budget_is_its_shortest_deadline_within_the_gateways_limit() -> None:
    assert call_budget([None, None], 200, 60_000) == 200  # the schedule's default
    assert call_budget([500, None, 250], 200, 60_000) == 250
    assert call_budget([120_000], 200, 60_000) == 60_000  # a generous gRPC deadline: served within the limit
    assert call_budget([0], 200, 60_000) == 1
    assert call_budget([None], 300_000, 60_000) == 60_000  # a long schedule default too (a review)


def test_the_kafka_id_tells_rows_apart_whatever_their_names_hold() -> None:
    """Names joined by NUL, then the values' bytes: a name holding a NUL and 8 bytes of another row's
    value made the same id, and the second call was refused as a reuse (503) while the first waited."""
    two = {"a": 2261634.5098039214, "b": 2.0}
    one = {"a\0bAAAAAAAA": 2.0}
    assert _kafka_id("x", "anonymous", [two]) != _kafka_id("x", "anonymous", [one])
    assert _kafka_id("x", "anonymous", [{"a": 1.0}, {"b": 2.0}]) != _kafka_id("x", "anonymous", [{"a": 1.0, "b": 2.0}])


def test_the_kafka_id_of_a_named_call_is_the_same_for_a_retry_and_differs_for_other_callers_or_rows() -> None:
    rows = [{"a": 1.0, "b": 2.5}]
    first = _kafka_id("42", "team-a", rows)
    assert first.startswith("42.") and first == _kafka_id("42", "team-a", [{"a": 1.0, "b": 2.5}])
    assert len({first, _kafka_id("42", "team-b", rows), _kafka_id("42", "team-a", [{"a": 1.0, "b": 2.6}]),
                _kafka_id("43", "team-a", rows)}) == 4


@pytest.mark.parametrize("content_type", ["text/plain", "TEXT/PLAIN; charset=utf-8",
                                          "application/x-www-form-urlencoded", " multipart/form-data; boundary=b"])
def test_a_type_any_web_page_may_send_cross_site_is_refused(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType, match="send the body as application/json"):
        check_media_type(content_type)


@pytest.mark.parametrize("content_type", [None, "", "application/json", "application/json; charset=utf-8",
                                          "application/octet-stream"])
def test_json_binary_and_unlabelled_bodies_are_read(content_type: str | None) -> None:
    check_media_type(content_type)


# -- one status table -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "http", "code"),
    [
        (InvalidInput("x"), 400, grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidRequest("x"), 400, grpc.StatusCode.INVALID_ARGUMENT),  # the client's; a 503 to retry (a review)
        (NotFound("x"), 404, grpc.StatusCode.NOT_FOUND),
        (Unauthenticated("x"), 401, grpc.StatusCode.UNAUTHENTICATED),
        (RateLimited("x"), 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (BodyTooLarge("x"), 413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (UnsupportedMediaType("x"), 415, grpc.StatusCode.INVALID_ARGUMENT),
        (AnswerTimedOut("x"), 504, grpc.StatusCode.DEADLINE_EXCEEDED),
        (AnswerFailed("x"), 502, grpc.StatusCode.UNAVAILABLE),
        (Unavailable("x"), 503, grpc.StatusCode.UNAVAILABLE),
        (BrokerUnavailable("x"), 503, grpc.StatusCode.UNAVAILABLE),
        (ValueError("secret detail"), 500, grpc.StatusCode.INTERNAL),
    ],
)
def test_every_failure_has_one_http_and_one_grpc_status(error: Exception, http: int, code: grpc.StatusCode) -> None:
    status = status_of(error)
    assert (status.http, status.grpc) == (http, code)
    assert "secret detail" not in status.message or http != 500


# -- API keys and rate limits -----------------------------------------------------------------------


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_api_keys_are_checked_against_their_hashes() -> None:
    keys = ApiKeys(parse_entries([f"alice:{sha('k-alice')}", "# comment", "", sha("k-anon")], "test"))
    assert keys.identify("Bearer k-alice") == "alice"
    assert keys.identify("bearer  k-anon ") == "key2"
    for header, message in ((None, "an API key is required"), ("Basic abc", "must be: Bearer"),
                            ("Bearer k-mallory", "not valid"), ("Bearer ", "must be: Bearer")):
        with pytest.raises(Unauthenticated, match=message):
            keys.identify(header)
    assert ApiKeys([]).identify(None) == ANONYMOUS


def test_a_changed_keys_file_adds_and_revokes_keys_and_a_broken_one_leaves_the_keys_in_force(
    tmp_path: Path,
) -> None:
    """Read at start only, a leaked key stayed valid until every gateway was restarted."""
    file = tmp_path / "keys"
    file.write_text(f"alice:{sha('k-alice')}\nbob:{sha('k-bob')}\n")
    keys = ApiKeys.load(str(file), ())
    assert keys.reload_if_changed() is None  # unchanged
    file.write_text(f"alice:{sha('k-alice')}\ncarol:{sha('k-carol')}\n")
    assert keys.reload_if_changed() == (True, "2 keys in force; added carol; revoked bob")
    assert keys.identify("Bearer k-carol") == "carol"
    with pytest.raises(Unauthenticated, match="not valid"):
        keys.identify("Bearer k-bob")
    for broken in ("", "alice:not-a-digest\n", "\udcff"):  # emptied, a pasted key, not UTF-8
        file.write_bytes(broken.encode("utf-8", "surrogateescape"))
        applied, why = keys.reload_if_changed() or (None, "")
        assert applied is False and str(file) in why and "k-alice" not in why
        assert keys.reload_if_changed() is None  # said once
        assert keys.identify("Bearer k-alice") == "alice" and len(keys) == 2
    file.unlink()
    assert (keys.reload_if_changed() or (None,))[0] is False and keys.identify("Bearer k-carol") == "carol"
    os.mkfifo(file)  # read, it would hold the reading thread until a writer came
    assert keys.reload_if_changed() == (False, f"--api-keys-file {file} is not a regular file")
    file.unlink()
    file.write_text(f"# rotated\nalice:{sha('k-alice2')}\ncarol:{sha('k-carol')}\n")
    assert keys.reload_if_changed() == (True, "2 keys in force; replaced alice")
    file.write_text(f"alice:{sha('k-alice2')}\ncarol:{sha('k-carol')}\n")
    assert keys.reload_if_changed() == (True, "2 keys in force; the keys unchanged (comments or spacing)")
    assert ApiKeys.load("", (f"x:{sha('k')}",)).reload_if_changed() is None  # no file: nothing to follow


def test_two_different_keys_never_share_a_name(tmp_path: Path) -> None:
    """An unnamed key of the file and one given inline were both key1: one rate limit, and each
    could be answered the other's request ids."""
    file = tmp_path / "keys"
    file.write_text(sha("k-file") + "\n")
    keys = ApiKeys.load(str(file), [sha("k-inline")])
    assert (keys.identify("Bearer k-inline"), keys.identify("Bearer k-file")) == ("key1", "key2")
    file.write_text(f"ops:{sha('k-file')}\nops:{sha('k-file')}\n")  # the same key twice: one key
    assert len(ApiKeys.load(str(file), [])) == 1
    with pytest.raises(ConfigError, match="two different API keys are both named 'ops'"):
        ApiKeys.load(str(file), [f"ops:{sha('k-other')}"])


def test_a_bad_key_file_line_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as err:
        parse_entries(["bob:not-a-hash-but-maybe-a-key"], "keys.txt")
    assert "keys.txt entry 1" in str(err.value)
    assert "not-a-hash" not in str(err.value)


def test_rate_limit_allows_the_burst_then_refuses_per_key() -> None:
    limit = RateLimit(rate=0.001, burst=2)
    limit.take("a")
    limit.take("a")
    with pytest.raises(RateLimited, match="over the rate limit"):
        limit.take("a")
    limit.take("b")  # another key has its own bucket
    RateLimit(rate=0.0, burst=1).take("a")  # 0 = unlimited


def test_settings_refuse_half_a_tls_pair_and_nothing_to_serve(tmp_path: Any) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        GatewaySettings(tls_cert=str(cert)).validate()
    with pytest.raises(ConfigError, match="nothing to serve"):
        GatewaySettings(http_port=0, grpc_port=0).validate()
    GatewaySettings().validate()


@pytest.mark.parametrize(("url", "said"), [
    ("http://admin:hunter2pw@comp:9104/metrics", "must not carry user:password@"),
    ("comparison:9104/metrics", "must be an http(s):// URL"),
    ("ftp://comp:9104/metrics", "must be an http(s):// URL"),
    ("http://comp:99999/metrics", "needs a host and a port from 1 to 65535"),
    ("http://comp:0/metrics", "a port from 1 to"),
    # Taken, and shown on the public /ui page and in the start-up line, token and all (a probe).
    ("http://comp:9104/metrics?token=hunter2pw", "takes no query or fragment (the URL is shown)"),
    ("http://comp:9104/metrics#hunter2pw", "takes no query or fragment"),
    ("ftp://comp:9104/metrics?token=hunter2pw", "must be an http(s):// URL"),  # quoted whole before
    ("ftp://admin:hunter2pw@comp:9104/metrics", "must be an http(s):// URL, got 'ftp://***@comp"),
])
def test_a_comparison_url_is_an_http_address_without_credentials(url: str, said: str) -> None:
    """The public /ui page shows its source: a password in it was shown to anyone, and logged; a
    URL without its scheme failed only on the page (a review)."""
    with pytest.raises(ConfigError, match=re.escape(said)) as refused:
        GatewaySettings(comparison_url=url).validate()
    assert "hunter2pw" not in str(refused.value)
    GatewaySettings(comparison_url="http://comparison:9104/metrics").validate()
    GatewaySettings(comparison_url="HTTP://comparison:9104/metrics").validate()  # as urllib reads it


# -- the catalog --------------------------------------------------------------------------------------


class Versions:
    """Schedule versions given directly (production reads them from the control topic)."""

    def __init__(self, *schedules: Schedule):
        self.book = ScheduleBook("default")
        self.stopped: str | None = None
        for schedule in schedules:
            self.book.add(schedule)

    def in_force(self) -> Schedule | None:
        return self.book.latest


class Published:
    def __init__(self, specs: dict[str, tuple[str, list[FeatureSpec]]], ignoring_extra: tuple[str, ...] = ()):
        self.specs = specs
        self.ignoring_extra = ignoring_extra
        self.wanted = 0

    def features(self, model: str) -> list[FeatureSpec] | None:
        entry = self.specs.get(model)
        return None if entry is None else entry[1]

    def models(self) -> dict[str, str]:
        return {name: version for name, (version, _) in self.specs.items()}

    def want(self) -> None:
        self.wanted += 1

    def contract(self, model: str) -> Contract | None:
        entry = self.specs.get(model)
        return None if entry is None else Contract(tuple(entry[1]), model in self.ignoring_extra)


def test_a_target_built_without_a_models_contract_asks_for_it_to_be_read_soon() -> None:
    """Contracts published after the gateway's first read were unknown up to 5 s: calls missing a
    feature went to every model, 502 'every model failed', instead of 400 (a review)."""
    published = Published({"champion": ("1", [FeatureSpec("a", True)])})
    catalog = Catalog(Versions(V1), published, enforce=True)
    assert catalog.resolve("default").accepts == {"a"} and published.wanted == 1  # the challenger's is unknown
    assert catalog.resolve("champion").features is not None and published.wanted == 1
    published.specs["challenger"] = ("1", [FeatureSpec("a")])
    catalog.resolve("challenger")
    assert published.wanted == 1


V1 = Schedule(models=("champion", "challenger"), version=1)
V2 = Schedule(models=("champion", "challenger"), version=2, default_deadline_ms=300)


def test_the_schedule_name_is_a_model_whose_version_is_the_one_in_force() -> None:
    catalog = Catalog(Versions(V1, V2), FixedSignatures(["a", "b"]), enforce=False)
    target = catalog.resolve("default")
    # Only the version in force may be asked for, so only it is listed (OIP's `versions`).
    assert (target.kind, target.version, target.versions) == (SCHEDULE, "2", ("2",))
    assert catalog.resolve("default", "2").schedule.default_deadline_ms == 300
    with pytest.raises(NotFound, match="version '1' is not in force"):
        catalog.resolve("default", "1")
    meta = catalog.metadata(target)
    assert [i["name"] for i in meta["inputs"]] == ["a", "b"]
    assert [o["name"] for o in meta["outputs"]] == ["score", "label", "status", "model", "version", "reason"]


def test_models_of_the_schedule_and_published_ones_may_be_asked_directly() -> None:
    published = Published({"champion": ("logreg-1", [FeatureSpec("a", True), FeatureSpec("b")]),
                           "shadow": ("s-1", [FeatureSpec("c")])})
    catalog = Catalog(Versions(V1), published, enforce=True)
    assert catalog.resolve("challenger").kind == MODEL
    shadow = catalog.resolve("shadow", "s-1")
    assert (shadow.version, shadow.feature_names) == ("s-1", ("c",))
    with pytest.raises(NotFound, match="unknown model 'nope'; this gateway serves: default, challenger"):
        catalog.resolve("nope")
    with pytest.raises(NotFound, match="serves version 's-1', not 's-0'"):
        catalog.resolve("shadow", "s-0")
    # The schedule names challenger, but it published no version: one asked for cannot be checked.
    assert catalog.resolve("challenger").version == ""
    with pytest.raises(NotFound, match="'challenger' has published no version"):
        catalog.resolve("challenger", "no-such-version")
    champion = catalog.resolve("champion")
    catalog.check_features(champion, ["a", "b"])
    with pytest.raises(InvalidInput, match=r"unknown feature.*'z'"):
        catalog.check_features(champion, ["a", "z"])
    with pytest.raises(InvalidInput, match=r"missing required feature.*'a'"):
        catalog.check_features(champion, ["b"])


def test_a_404_names_a_few_of_the_models_not_every_contract() -> None:
    """Every published name was joined into each 404 (20 MB, 32 ms of the event loop at 20,000
    forged contracts; a review)."""
    from services.gateway.catalog import NAMES_IN_A_404

    published = Published({f"m{i:04}": ("1", [FeatureSpec("a")]) for i in range(1_000)})
    with pytest.raises(NotFound, match=r"serves: default, challenger, champion, m0000, .* and \d+ more$") as refused:
        Catalog(Versions(V1), published, enforce=True).resolve("nope")
    assert str(refused.value).count(", ") == NAMES_IN_A_404 - 1


def test_a_schedule_requires_every_feature_its_preferred_model_requires() -> None:
    """Only the preferred model's first feature was required: a call without another went to the
    models, which failed on it, and was answered by a fallback, 200."""
    published = Published({"champion": ("1", [FeatureSpec("a", True), FeatureSpec("b", True), FeatureSpec("c")]),
                           "challenger": ("2", [FeatureSpec("b", True), FeatureSpec("d", True)])})
    catalog = Catalog(Versions(V1), published, enforce=True)
    target = catalog.resolve("default")
    assert [f.name for f in target.features or ()] == ["a", "b", "c"]  # what it may send: the champion's
    assert [(f.name, f.required) for f in target.held_to.features] == [("a", True), ("b", True), ("c", False)]
    catalog.check_features(target, ["a", "b"])
    with pytest.raises(InvalidInput, match=r"missing required feature\(s\) 'b' for 'default'"):
        catalog.check_features(target, ["a", "c"])


def test_a_schedule_refuses_a_feature_its_preferred_model_refuses() -> None:
    """The champion refuses a row with a feature it does not read (extra="reject", the default),
    and the challenger that reads it answered, FALLBACK 200, for every such call (a review): the
    400 says so, as for a required feature; calling the challenger by name has it scored."""
    published = Published({"champion": ("1", [FeatureSpec("a", True)]),
                           "challenger": ("2", [FeatureSpec("a", True), FeatureSpec("d")])})
    catalog = Catalog(Versions(V1), published, enforce=True)
    with pytest.raises(InvalidInput, match=re.escape(
            "unknown feature(s) 'd' for 'default' (its preferred model 'champion' refuses a feature it does not "
            "read); it reads: a")):
        catalog.check_features(catalog.resolve("default"), ["a", "d"])
    catalog.check_features(catalog.resolve("challenger"), ["a", "d"])
    # Its metadata lists what a call may send: the champion's (all of them listed, a call built
    # from them was refused; a review), every model's where the champion ignores others.
    assert [i["name"] for i in catalog.metadata(catalog.resolve("default"))["inputs"]] == ["a"]
    ignoring = Catalog(Versions(V1), Published(published.specs, ignoring_extra=("champion",)), enforce=True)
    assert [i["name"] for i in ignoring.metadata(ignoring.resolve("default"))["inputs"]] == ["a", "d"]


def test_a_value_outside_a_declared_range_is_a_400_for_the_model_and_for_a_schedule_it_leads() -> None:
    """The worker would refuse the row and the call come back 502 for the client's input (or a
    fallback answer it 200); a schedule holds rows to its preferred model's ranges only."""
    published = Published({"champion": ("1", [FeatureSpec("a", True, maximum=10.0), FeatureSpec("b", True)]),
                           "challenger": ("2", [FeatureSpec("a", True), FeatureSpec("b", True, minimum=0.0)])})
    catalog = Catalog(Versions(V1), published, enforce=True)
    champion, schedule = catalog.resolve("champion"), catalog.resolve("default")
    catalog.check_ranges(champion, [{"a": 10.0, "b": -5.0}, {"a": -1e9, "b": 1.0}])  # both ends inclusive
    said = "input 'a' row 1: 11.5 is above its maximum 10.0 for 'champion' (outside the range its contract declares)"
    with pytest.raises(InvalidInput, match=re.escape(said)):
        catalog.check_ranges(champion, [{"a": 1.0, "b": 1.0}, {"a": 11.5, "b": 1.0}])
    with pytest.raises(InvalidInput, match=re.escape(
            "'a' row 2: 1000000.0 is above its maximum 10.0 for 'default' (its preferred model 'champion' declares")):
        catalog.check_ranges(schedule, [{"a": 1.0, "b": 1.0}, {"b": 1.0}, {"a": 1e6, "b": 1.0}])
    catalog.check_ranges(schedule, [{"a": 1.0, "b": -5.0}])  # the challenger's minimum: not the schedule's
    with pytest.raises(InvalidInput, match=re.escape("'b' row 0: -5.0 is below its minimum 0.0 for 'challenger'")):
        catalog.check_ranges(catalog.resolve("challenger"), [{"a": 1.0, "b": -5.0}])
    Catalog(Versions(V1), published, enforce=False).check_ranges(champion, [{"a": 1e6, "b": 1.0}])


def test_a_schedule_holds_rows_to_its_preferred_models_contract_while_another_models_is_unpublished() -> None:
    """One model of the schedule without a published contract (not deployed yet) made the
    schedule's target unchecked: a row outside the preferred model's range, or without a feature
    it requires, went to the models, the preferred one refused it and a fallback answered 200 (a
    review). Only the unknown-feature check needs every model's contract."""
    published = Published({"champion": ("1", [FeatureSpec("a", True, maximum=10.0), FeatureSpec("b")])})
    catalog = Catalog(Versions(V1), published, enforce=True)  # the challenger's contract: unpublished
    schedule = catalog.resolve("default")
    assert [f.name for f in schedule.features or ()] == ["a", "b"]  # listed: what the champion reads
    with pytest.raises(InvalidInput, match=re.escape("'a' row 0: 1000000.0 is above its maximum 10.0 for 'default'")):
        catalog.check_ranges(schedule, [{"a": 1e6}])
    with pytest.raises(InvalidInput, match=r"missing required feature\(s\) 'a' for 'default'"):
        catalog.check_features(schedule, ["b"])
    with pytest.raises(InvalidInput, match=r"unknown feature\(s\) 'z' for 'default' \(its preferred model"):
        catalog.check_features(schedule, ["a", "z"])  # the champion's own contract refuses it


def test_a_schedule_led_by_a_model_ignoring_extra_features_while_another_is_unpublished() -> None:
    """Which features another model reads is not known: none is refused as unknown; the preferred
    model's required features still are, and a row with none of its features (it refuses it)."""
    published = Published({"champion": ("1", [FeatureSpec("a"), FeatureSpec("b")])}, ignoring_extra=("champion",))
    catalog = Catalog(Versions(V1), published, enforce=True)
    schedule = catalog.resolve("default")
    assert schedule.accepts is None
    catalog.check_features(schedule, ["a", "z"])
    with pytest.raises(InvalidInput, match=re.escape(
            "none of the features given is one 'champion' reads (it reads: a, b); 'champion' would refuse the row")):
        catalog.check_features(schedule, ["z"])


def test_a_model_whose_contract_ignores_extra_features_is_sent_them() -> None:
    """Its worker scores a row with features outside its list (--ignore-extra-features: requests
    carrying several models' features); the gateway refused them, 400 (a review). A schedule
    follows its preferred model's policy."""
    specs = {"champion": ("1", [FeatureSpec("a", True)]),
             "challenger": ("2", [FeatureSpec("a", True), FeatureSpec("other_models_feature")])}
    ignoring = Catalog(Versions(V1), Published(specs, ignoring_extra=("champion",)), enforce=True)
    ignoring.check_features(ignoring.resolve("champion"), ["a", "other_models_feature"])
    ignoring.check_features(ignoring.resolve("default"), ["a", "other_models_feature"])
    with pytest.raises(InvalidInput, match=r"missing required feature\(s\) 'a' for 'champion'"):
        ignoring.check_features(ignoring.resolve("champion"), ["other_models_feature"])
    # A name no model of the schedule reads is still refused, by name or through the schedule: a typo of
    # an optional feature was scored with that feature's default, 200 (a review).
    for target in ("champion", "default"):
        with pytest.raises(InvalidInput, match=rf"unknown feature\(s\) 'mean_radus' for '{target}'; it reads: a, o"):
            ignoring.check_features(ignoring.resolve(target), ["a", "mean_radus"])
    rejecting = Catalog(Versions(V1), Published(specs), enforce=True)
    with pytest.raises(InvalidInput, match=r"unknown feature\(s\) 'other_models_feature' for 'champion'"):
        rejecting.check_features(rejecting.resolve("champion"), ["a", "other_models_feature"])


def test_a_published_contract_carries_its_extra_features_policy_to_the_gateway() -> None:
    from services.core.model_info import ModelInfo
    from services.core.signatures import Signature
    from services.gateway.signatures import _specs

    specs = _specs({"loose": ModelInfo("loose", "1", Signature.all_required(["a"], extra="ignore")),
                    "strict": ModelInfo("strict", "1", Signature.all_required(["a"]))})
    assert (specs["loose"][1].ignores_extra, specs["strict"][1].ignores_extra) == (True, False)


def test_a_fallback_feature_list_describes_but_refuses_nothing() -> None:
    catalog = Catalog(Versions(V1), FixedSignatures(["a"]), enforce=False)
    catalog.check_features(catalog.resolve("default"), ["anything"])


def test_no_schedule_yet_is_a_503_saying_why() -> None:
    """A 404 / NOT_FOUND reads 'for good' to a caller, and tritonclient's is_model_ready raised on
    it instead of saying False (a review): a gateway whose schedule has no version yet is one to
    retry (503 / UNAVAILABLE)."""
    with pytest.raises(TurnedAway, match="no version on the control topic yet") as refused:
        Catalog(Versions(), FixedSignatures([]), enforce=False).resolve("default")
    assert status_of(refused.value).http == 503 and status_of(refused.value).grpc == grpc.StatusCode.UNAVAILABLE


def test_the_schedule_without_a_version_yet_is_a_model_not_ready_not_an_error() -> None:
    catalog = Catalog(Versions(), FixedSignatures([]), enforce=False)
    gateway = SimpleNamespace(catalog=catalog, readiness=lambda: (True, "ready"))  # the rest of it: ready
    assert Gateway.model_ready(cast(Gateway, gateway), "default", "") is False
    with pytest.raises(NotFound, match="unknown model 'nonesuch'"):
        Gateway.model_ready(cast(Gateway, gateway), "nonesuch", "")


# -- answers ------------------------------------------------------------------------------------------


def comparison(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"request_id": "r", "created_at": 1000, "deadline": 1200, "status": "OK", "chosen_model": "champion",
            "schedule_version": 4, "outputs": outputs}


def output(model: str, latency: float, error: str | None = None) -> dict[str, Any]:
    return {"model": model, "version": "v", "score": 0.25, "label": "malignant", "error": error,
            "latency_ms": latency, "compute_ms": 1.0, "late": False}


def test_a_call_to_one_model_gets_that_models_own_output_judged_by_the_deadline() -> None:
    target = Catalog(Versions(V1), FixedSignatures([]), enforce=False).resolve("challenger")
    ok = _model_row(target, comparison([output("champion", 10), output("challenger", 150)]))
    assert (ok.status, ok.score, ok.label, ok.schedule_version) == ("OK", 0.25, "malignant", 4)
    late = _model_row(target, comparison([output("challenger", 250)]))
    assert late.status == "TIMEOUT" and "after the 200 ms deadline" in late.reason
    failed = _model_row(target, comparison([output("challenger", 5, error="ValueError: boom")]))
    assert failed.status == "ERROR" and "boom" in failed.reason
    assert _model_row(target, comparison([output("champion", 5)])).status == "TIMEOUT"
    # A label and no score is no answer (the rendezvous does not use it either): it was OK, score null.
    unscored = _model_row(target, comparison([{**output("challenger", 5), "score": None}]))
    assert (unscored.status, unscored.score) == ("ERROR", None) and "gave no score" in unscored.reason


def test_a_call_fails_as_its_worst_row_naming_the_rows() -> None:
    ok = RowAnswer("OK", "m", "v", 0.1, "x", "fine", 1)
    timeout = RowAnswer("TIMEOUT", "", "", None, "", "no usable score by the deadline", 1)
    error = RowAnswer("ERROR", "", "", None, "", "every model failed", 1)
    _raise_failures(["a"], [ok])
    with pytest.raises(AnswerTimedOut, match=r"^TIMEOUT: no usable score"):
        _raise_failures(["a"], [timeout])
    with pytest.raises(AnswerTimedOut, match="TIMEOUT for 1 of 3 rows: c: no usable"):
        _raise_failures(["a", "b", "c"], [ok, error, timeout])
    with pytest.raises(AnswerFailed, match="ERROR for 1 of 2 rows: b: every model failed"):
        _raise_failures(["a", "b"], [ok, error])


def test_request_ids_are_the_oip_id_and_a_call_to_one_model_gets_fresh_ones() -> None:
    assert _request_ids("abc", 1, SCHEDULE) == ["abc"]
    assert _request_ids("abc", 2, SCHEDULE) == ["abc/0", "abc/1"]
    direct = _request_ids("abc", 2, MODEL)
    assert direct[0].startswith("abc.") and direct[0].endswith("/0") and direct != _request_ids("abc", 2, MODEL)


# -- the page's figures -------------------------------------------------------------------------------

EXPOSITION = """\
# TYPE rdv_cmp_answers_total counter
rdv_cmp_answers_total{status="OK"} 90.0
rdv_cmp_answers_total{status="FALLBACK"} 7.0
rdv_cmp_answers_total{status="TIMEOUT"} 3.0
rdv_cmp_answers_total{status="ERROR"} 0.0
# TYPE rdv_cmp_deadline_total counter
rdv_cmp_deadline_total{model="champion",outcome="met"} 97.0
rdv_cmp_deadline_total{model="champion",outcome="missed"} 3.0
rdv_cmp_deadline_total{model="challenger",outcome="met"} 80.0
rdv_cmp_deadline_total{model="challenger",outcome="missed"} 20.0
# TYPE rdv_cmp_latency_seconds gauge
rdv_cmp_latency_seconds{model="champion",quantile="0.5"} 0.012
rdv_cmp_latency_seconds{model="champion",quantile="0.99"} 0.05
rdv_cmp_latency_seconds{model="challenger",quantile="0.5"} 0.03
# TYPE rdv_cmp_agreement_ratio gauge
rdv_cmp_agreement_ratio{champion="champion",model="challenger"} 0.7
# TYPE rdv_cmp_score_ks gauge
rdv_cmp_score_ks{model="challenger",reference="champion"} 0.21
rdv_cmp_score_ks{model="challenger",reference="self"} 0.05
# TYPE rdv_cmp_champion_info gauge
rdv_cmp_champion_info{model="champion"} 1.0
# TYPE rdv_cmp_window_records gauge
rdv_cmp_window_records 100.0
"""


def test_page_figures_are_the_comparison_services_metrics() -> None:
    snap = snapshot_from(EXPOSITION)
    assert snap["champion"] == "champion"
    assert snap["answers"] == {"OK": 90.0, "FALLBACK": 7.0, "TIMEOUT": 3.0, "ERROR": 0.0}
    assert snap["answers_total"] == 100.0
    champion, challenger = snap["models"]
    assert champion["model"] == "champion" and champion["latency_s"] == {"0.5": 0.012, "0.99": 0.05}
    assert champion["deadline"]["ratio"] == 0.97
    assert (challenger["agreement"], challenger["ks"]) == (0.7, 0.21)  # against the champion, not self
    assert challenger["deadline"]["ratio"] == 0.8


def test_bytes_outputs_are_length_prefixed_in_raw_form() -> None:
    # The raw layout of BYTES elements OIP clients decode (4-byte little-endian length, then bytes).
    assert raw_bytes(["benign", "", "é"]) == b"\x06\x00\x00\x00benign\x00\x00\x00\x00\x02\x00\x00\x00\xc3\xa9"


def test_a_call_to_one_model_whose_request_the_broker_refused_fails_at_once_not_after_the_grace() -> None:
    """Its comparison record can never come: the refusal (503, from the BrokerError) is the answer,
    not 'no comparison record within' the whole budget and grace later."""
    import asyncio
    from concurrent.futures import Future

    from services.core.errors import BrokerError
    from services.gateway.engine import _records_unless_refused
    from services.gateway.errors import Unavailable

    async def refused() -> None:
        record: Future[dict[str, object]] = Future()
        sent: Future[object] = Future()
        waiting = asyncio.ensure_future(_records_unless_refused([record], [sent], 3_600_000))  # type: ignore[list-item]
        await asyncio.sleep(0)
        sent.set_exception(BrokerError("the request was not delivered to rdv.requests: Message size too large"))
        with pytest.raises(BrokerError, match="not delivered"):
            await asyncio.wait_for(waiting, 30)  # a guard against hanging: the grace is an hour
        assert record.cancelled()

    async def answered() -> list[dict[str, object]]:
        record: Future[dict[str, object]] = Future()
        sent: Future[object] = Future()
        sent.set_result("the schedule's answer")  # comes first, and is not what the call waits for
        record.set_result({"request_id": "r"})
        return await _records_unless_refused([record], [sent], 3_600_000)  # type: ignore[list-item]

    async def silent() -> None:
        with pytest.raises(Unavailable, match="no comparison record within 1 ms"):
            await _records_unless_refused([Future()], [Future()], 1)

    asyncio.run(refused())
    assert asyncio.run(answered()) == [{"request_id": "r"}]
    asyncio.run(silent())


def test_a_reader_that_stops_for_good_makes_the_gateway_not_live_and_fails_calls_at_once() -> None:
    """A consumer error the readers cannot get past (an authorization, a topic deleted) ended
    their threads silently: the gateway stayed ready, and every call waited out its deadline for
    a 503 blaming the rendezvous. Now the reason is its readiness and liveness answer, and every
    call's, at once; and the comparison reader fails the calls that were waiting on it."""
    import asyncio
    from types import SimpleNamespace

    from services.core.errors import BrokerError, RendezvousError
    from services.core.health import BrokerHealth
    from services.gateway.auth import ApiKeys
    from services.gateway.comparisons import ComparisonTap
    from services.gateway.engine import Gateway
    from services.gateway.errors import Unavailable
    from services.gateway.settings import GatewaySettings

    class Refused:
        def consume(self, _n: int, _timeout: float) -> list[object]:
            raise RendezvousError("not authorized to read topic rdv.log")

    tap = ComparisonTap({"bootstrap.servers": "127.0.0.1:1"}, "rdv.log")
    waiting = tap.expect("r1")
    tap._read(Refused())  # type: ignore[arg-type]
    with pytest.raises(BrokerError, match=r"not authorized to read topic rdv\.log"):
        waiting.result(0)
    with pytest.raises(BrokerError, match="stopped reading comparison records"):
        tap.expect("r2")

    client = SimpleNamespace(stopped=None, owned_partitions=(0,), topics=SimpleNamespace(replies="rdv.replies"),
                             undecodable_answers=0, foreign_answers=0)
    catalog = SimpleNamespace(schedules=Versions(Schedule(models=("champion",))), schedule_name="default",
                              check_ranges=lambda *_args: None)
    fresh = ComparisonTap({"bootstrap.servers": "127.0.0.1:1"}, "rdv.log")
    gateway = Gateway(GatewaySettings(), client, catalog, fresh, ApiKeys([]), BrokerHealth())  # type: ignore[arg-type]
    assert gateway.readiness()[0] and gateway.broken() is None
    client.stopped = "stopped reading answers: Broker: Topic authorization failed"
    assert gateway.readiness() == (False, client.stopped) and gateway.broken() == client.stopped
    with pytest.raises(Unavailable, match="stopped reading answers"):
        asyncio.run(gateway.infer("champion", "", None, "anonymous"))  # type: ignore[arg-type]
    gateway.tap = tap
    client.stopped = None
    assert gateway.broken() == tap.stopped


def _admit(gateway: Any) -> str:
    """A call's admission as REST and gRPC make it: the caller's name, one token of its rate limit."""
    name: str = gateway.authenticate(None)
    gateway.limit.take(name)
    return name


def _gateway_without_kafka(settings: Any) -> Any:
    """A Gateway whose client, catalog and tap are stand-ins: for what it decides before Kafka."""
    from types import SimpleNamespace

    from services.core.health import BrokerHealth
    from services.gateway.auth import ApiKeys
    from services.gateway.comparisons import ComparisonTap
    from services.gateway.engine import Gateway

    client = SimpleNamespace(stopped=None, owned_partitions=(0,), topics=SimpleNamespace(replies="rdv.replies"),
                             undecodable_answers=0, foreign_answers=0)
    catalog = SimpleNamespace(schedules=Versions(Schedule(models=("champion",))), schedule_name="default",
                              check_ranges=lambda *_args: None)
    tap = ComparisonTap({"bootstrap.servers": "127.0.0.1:1"}, "rdv.log")
    return Gateway(settings, client, catalog, tap, ApiKeys([]), BrokerHealth())  # type: ignore[arg-type]


def test_the_clients_undecodable_answers_are_exported_as_a_counter_read_at_each_scrape() -> None:
    """The client counts the records on its reply partitions it cannot read (services/client,
    `undecodable_answers`), which the gateway's /metrics did not show: another writer on the
    replies topic, or a writer schema the gateway does not know, was seen only in its log."""
    from prometheus_client import REGISTRY, generate_latest

    gateway = _gateway_without_kafka(GatewaySettings())
    assert REGISTRY.get_sample_value("rdv_gateway_undecodable_answers_total") == 0
    gateway.client.undecodable_answers = 3  # as the client's reading thread counts them
    assert REGISTRY.get_sample_value("rdv_gateway_undecodable_answers_total") == 3
    scraped = generate_latest().decode()
    assert "# TYPE rdv_gateway_undecodable_answers_total counter" in scraped
    assert "\nrdv_gateway_undecodable_answers_total 3.0\n" in scraped
    gateway.client.foreign_answers = 2  # answers under its ids to other clients' inputs (client.py `_foreign`)
    assert REGISTRY.get_sample_value("rdv_gateway_foreign_answers_total") == 2


def test_a_call_to_a_full_gateway_is_refused_before_its_body_is_read() -> None:
    """The overload check came after the body was read and parsed: a large call took its memory
    (~60 MB for 2 MB of JSON) only to be refused (a review)."""
    from services.gateway.errors import Unavailable
    from services.gateway.rest import RestApi
    from services.gateway.settings import GatewaySettings

    class Unread:
        headers = {"content-type": "application/json", "content-length": "2000000"}
        path_params = {"name": "default"}
        scope: dict[str, Any] = {"raw_path": b"/v2/models/default/infer"}
        read = False

        async def stream(self) -> AsyncIterator[bytes]:
            Unread.read = True
            yield b"{}"

    gateway = _gateway_without_kafka(GatewaySettings(max_in_flight=4))
    gateway.rows_in_flight = 4
    with pytest.raises(Unavailable, match=r"overloaded: 4 rows waiting for answers \(at most 4\)"):
        asyncio.run(RestApi(gateway, "test").infer(Unread()))  # type: ignore[arg-type]
    assert not Unread.read


def test_a_call_refused_for_its_origin_or_its_type_spends_no_rate_limit() -> None:
    """Without API keys every caller shares one bucket: a page's cross-origin POSTs, refused,
    took a token each first and kept every other caller at 429 (a review)."""
    from types import SimpleNamespace

    from services.gateway.errors import CrossOrigin
    from services.gateway.rest import RestApi
    from services.gateway.settings import GatewaySettings

    page = SimpleNamespace(scope={}, headers={"origin": "https://evil.example", "host": "10.0.0.5:8080",
                                    "content-type": "text/plain"}, path_params={"name": "default"})
    gateway = _gateway_without_kafka(GatewaySettings(rate_limit=0.001, rate_burst=2))
    for _ in range(5):
        with pytest.raises(CrossOrigin):
            asyncio.run(RestApi(gateway, "test").infer(page))  # type: ignore[arg-type]
    assert [_admit(gateway) for _ in range(2)] == ["anonymous", "anonymous"]  # the whole burst left


def test_a_call_refused_while_draining_spends_no_rate_limit() -> None:
    """Callers retry a 503: each retry spent a token, and once the burst was gone they got 429
    "over the rate limit" for what was the gateway's state (a review)."""
    from types import SimpleNamespace

    from services.gateway.errors import Unavailable
    from services.gateway.rest import RestApi
    from services.gateway.settings import GatewaySettings

    call = SimpleNamespace(scope={}, headers={"content-type": "application/json"}, path_params={"name": "default"})
    gateway = _gateway_without_kafka(GatewaySettings(rate_limit=0.001, rate_burst=2))
    gateway.draining = True
    for _ in range(5):
        with pytest.raises(Unavailable, match="shutting down"):
            asyncio.run(RestApi(gateway, "test").infer(call))  # type: ignore[arg-type]
    assert [_admit(gateway) for _ in range(2)] == ["anonymous", "anonymous"]  # the whole burst left


def test_a_503_after_the_rows_went_out_keeps_its_token() -> None:
    """Given back for any 503, a key whose flood made the rendezvous answer late (or whose
    records failed delivery) called on for free: 50 of 50 calls of 100 rows past a burst of 2."""
    from services.gateway.errors import RateLimited, TurnedAway, Unavailable
    from services.gateway.settings import GatewaySettings

    gateway = _gateway_without_kafka(GatewaySettings(rate_limit=0.001, rate_burst=2))
    with pytest.raises(TurnedAway), gateway.spending("anonymous"):
        raise TurnedAway("overloaded")  # before anything was sent: given back
    with pytest.raises(Unavailable), gateway.spending("anonymous"):
        raise Unavailable("no answer from the rendezvous within 1200 ms")  # after: kept
    _admit(gateway)  # the burst's second token
    with pytest.raises(RateLimited):
        _admit(gateway)


def test_a_call_whose_first_row_the_kafka_client_refuses_keeps_its_reason_and_gets_its_token_back() -> None:
    """The client's local queue full, or no reply partition: nothing of the call was sent, a 503 that
    callers retry; the token was kept, and their retries earned 429s."""
    from concurrent.futures import Future

    from services.core.errors import KafkaOperationError
    from services.gateway.errors import RateLimited, status_of
    from services.gateway.settings import GatewaySettings

    gateway = _gateway_without_kafka(GatewaySettings(rate_limit=0.001, rate_burst=1))
    submitted: list[str] = []
    refuse_from = [0]  # the row of a call from which the client refuses

    def submit(_row: dict[str, float], **kwargs: Any) -> Future[Any]:
        if len(submitted) >= refuse_from[0]:
            raise KafkaOperationError("produce to rdv.requests refused: the client's local queue is full")
        submitted.append(kwargs["request_id"])
        return Future()

    gateway.client.submit, gateway.client.abandon = submit, lambda *_args: None
    for _ in range(3):  # the first row refused each time: the burst of one comes back each time
        with pytest.raises(KafkaOperationError) as refused, gateway.spending("anonymous"):
            gateway._send(["r1"], [{"a": 1.0}], gateway._submitting(100, {}))
        assert status_of(refused.value).reason == "broker"
    refuse_from[0] = 1  # a row goes out, the next is refused: the token is kept
    with pytest.raises(KafkaOperationError), gateway.spending("anonymous"):
        gateway._send(["r1", "r2"], [{"a": 1.0}, {"a": 2.0}], gateway._submitting(100, {}))
    assert submitted == ["r1"]
    with pytest.raises(RateLimited):
        _admit(gateway)


def test_a_call_the_kafka_client_refuses_whole_gives_its_rows_tokens_back_too() -> None:
    """The call's token came back, its rows' did not: two calls of 400 rows refused for the client's
    full queue, a burst of 1,000 rows, and the third call got 429 'retry in 200 s' (a review)."""
    from services.control.schedule import Schedule
    from services.core.errors import KafkaOperationError
    from services.gateway.catalog import SCHEDULE, Target
    from services.gateway.oip import InferCall
    from services.gateway.settings import GatewaySettings

    gateway = _gateway_without_kafka(GatewaySettings(rate_limit=1.0, rate_burst=50, rate_limit_rows=0.001,
                                                     rate_burst_rows=1000))
    target = Target("default", SCHEDULE, "1", ("1",), None, Schedule(models=("champion",)))
    gateway.catalog.resolve, gateway.catalog.check_features = (lambda *_args: target), (lambda *_args: None)

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise KafkaOperationError("produce to rdv.requests refused: the client's local queue is full")

    gateway.client.submit, gateway.client.abandon = refuse, lambda *_args: None
    call = InferCall("", (Tensor("x", "FP64", (400,), [1.0] * 400),), (), {})

    async def one() -> None:
        with gateway.spending("anonymous"):
            await gateway.infer("default", "", call, "anonymous")

    for _ in range(4):
        with pytest.raises(KafkaOperationError, match="local queue is full"):
            asyncio.run(one())
    assert gateway.row_limit._buckets["anonymous"][0] == pytest.approx(1000, abs=1)


class EndsMidBody:
    """A request whose body stops after 12 bytes; `closed_by`: what the REST guard marked in its scope."""

    def __init__(self, closed_by: str | None = None, content_length: str = "100"):
        self.headers = {"content-length": content_length}
        self.scope = {} if closed_by is None else {CLOSED_BY: closed_by}

    async def stream(self) -> AsyncIterator[bytes]:
        yield b'{"inputs": ['
        raise ClientDisconnect()


@pytest.mark.parametrize(("closed_by", "http", "reason", "message"), [
    (None, 499, "client_closed", "the caller closed the connection after 12 bytes"),
    ("body_too_slow", 408, "body_too_slow", r"did not arrive in time \(12 bytes came\)"),
    ("bad_request", 400, "bad_request", "framing could not be read after 12 bytes"),
])
def test_a_body_that_ends_early_is_counted_for_why_it_ended(
    closed_by: str | None, http: int, reason: str, message: str
) -> None:
    """A caller hanging up is client_closed, not an internal error; the guard closing the connection
    (a body too slow, framing the parser could not read) was counted as the caller hanging up too."""
    with pytest.raises(CallError, match=message) as ended:
        asyncio.run(_body(EndsMidBody(closed_by), 1000))  # type: ignore[arg-type]
    assert (status_of(ended.value).http, status_of(ended.value).reason) == (http, reason)


@pytest.mark.parametrize("length", ["1001", "999999999999999", "9999999999999999", "9" * 40])
def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(length: str) -> None:
    """16 digits or more were taken for no length: the body was waited for (30 s, then 408)."""
    with pytest.raises(BodyTooLarge, match="over the limit of 1000"):
        asyncio.run(_body(EndsMidBody(content_length=length), 1000))  # type: ignore[arg-type]


def test_an_unreadable_comparison_record_fails_its_waiting_calls_at_once() -> None:
    """They were dropped from the table and left to wait out the grace for a 503 blaming the
    rendezvous."""
    from types import SimpleNamespace

    from services.gateway.comparisons import ComparisonTap
    from services.gateway.errors import AnswerFailed, status_of

    tap = ComparisonTap({"bootstrap.servers": "127.0.0.1:1"}, "rdv.log")
    waiting = tap.expect("r1")

    class OneDamaged:
        def consume(self, _n: int, _timeout: float) -> list[object]:
            tap._stop.set()  # one batch, then the loop ends
            return [SimpleNamespace(key=lambda: b"r1", value=lambda: b"\x00\x01damaged")]

    tap._read(OneDamaged())  # type: ignore[arg-type]
    with pytest.raises(AnswerFailed, match="comparison record of this request cannot be read") as failed:
        waiting.result(0)
    assert status_of(failed.value).http == 502


def test_the_ids_of_calls_without_one_cannot_be_guessed_from_earlier_ones() -> None:
    """A process prefix and a counter: a client reading the replies topic saw one id, sent the
    next ones first with rows of its own, and the rendezvous gave their answers to the gateway's
    callers (a security review)."""
    from services.gateway.engine import Gateway

    ids = [Gateway._new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len({i[:8] for i in ids}) > 990  # no shared prefix to count on


@pytest.mark.parametrize(("origin", "host"), [("https://evil.example", "localhost:8080"), ("null", "localhost:8080"),
                                             ("http://localhost:8081", "localhost:8080")])
def test_a_call_from_a_page_of_another_origin_is_refused(origin: str, host: str) -> None:
    from services.gateway.errors import CrossOrigin

    with pytest.raises(CrossOrigin, match="web page of another origin"):
        check_origin(origin, host)


@pytest.mark.parametrize("origin", ["http://[", "http://[::1", "http://[not-an-address]"])
def test_an_origin_header_that_is_no_origin_is_refused_not_an_internal_error(origin: str) -> None:
    """urlsplit raised ValueError: a 500 with a traceback logged on every such call."""
    from services.gateway.errors import CrossOrigin

    with pytest.raises(CrossOrigin, match="not an origin"):
        check_origin(origin, "localhost:8080")


def test_calls_without_an_origin_or_from_the_gateways_own_pages_are_read() -> None:
    check_origin(None, "localhost:8080")  # curl, tritonclient, any server
    check_origin(None, "rebind.evil.test:8080")  # not a browser: no page to rebind
    check_origin("http://LocalHost:8080", "localhost:8080")
    check_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    check_origin("http://[::1]:8080", "[::1]:8080")
    check_origin("http://app.localhost:8080", "app.localhost:8080")
    check_origin("https://Gateway.Example:443", "gateway.example:443", ("gateway.EXAMPLE",))


def test_a_page_under_a_name_the_gateway_does_not_know_is_refused_even_as_its_own_origin() -> None:
    """DNS rebinding: the attacker's name now resolves to this machine, so to the browser the page
    and the gateway are one origin (Origin == Host)."""
    from services.gateway.errors import CrossOrigin

    with pytest.raises(CrossOrigin, match=r"under the name 'rebind\.evil\.test' is refused"):
        check_origin("http://rebind.evil.test:8080", "rebind.evil.test:8080")
    with pytest.raises(CrossOrigin, match="--allowed-hosts"):
        check_origin("http://rebind.evil.test:8080", "rebind.evil.test:8080", ("gateway.example",))


def test_grpc_contents_are_checked_as_sent_so_every_int64_is_a_value() -> None:
    """As doubles, INT64's largest value (2^63 - 1) reads as 2^63, which the exact check refuses.
    (grpc_api's contents go through from_numbers; that module is not imported here: its generated
    messages clash with tritonclient's in one process.)"""
    from services.gateway.oip import from_numbers

    assert from_numbers("a", "INT64", (2,), [2**63 - 1, -(2**63)], "in int64_contents ") == [2.0**63, -(2.0**63)]
    assert from_numbers("b", "UINT64", (1,), [2**64 - 1]) == [2.0**64]
    with pytest.raises(InvalidInput, match=r"^input 'a': 1 values in int64_contents for shape \[2\] \(2 expected\)$"):
        from_numbers("a", "INT64", (2,), [1], "in int64_contents ")


def test_unknown_paths_and_methods_are_counted_under_the_route_none() -> None:
    from types import SimpleNamespace

    from starlette.exceptions import HTTPException

    from services.core.metrics import child
    from services.gateway import metrics as m
    from services.gateway.rest import _no_route

    calls, refused = child(m.CALLS, "rest", "none", "405"), child(m.REJECTED, "rest", "no_route")
    before = calls._value.get(), refused._value.get()
    request = SimpleNamespace(method="PUT", url=SimpleNamespace(path="/v2/models/x/infer"))
    response = asyncio.run(_no_route(request, HTTPException(405, headers={"Allow": "POST"})))  # type: ignore[arg-type]
    assert (response.status_code, response.headers["allow"]) == (405, "POST")
    assert orjson.loads(response.body) == {"error": "method PUT not allowed here: /v2/models/x/infer"}
    assert (calls._value.get(), refused._value.get()) == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", " GZIP ", "br, gzip"])
def test_a_compressed_body_is_refused_naming_its_encoding(encoding: str) -> None:
    """Read as it came, a gzip body failed as "not valid UTF-8"; an uncompressed one labelled gzip got 200."""
    with pytest.raises(UnsupportedMediaType, match=f"Content-Encoding '{encoding.strip()}' is not accepted"):
        check_encoding(encoding)
    for plain in (None, "", "identity"):
        check_encoding(plain)


def test_an_empty_column_name_is_named_as_such() -> None:
    """It said "feature_names has 2 names for 2 columns", which read as no problem at all."""
    with pytest.raises(InvalidInput, match=r"feature_names has an empty name \(column 1;"):
        rows_of([Tensor("x", "FP64", (1, 2), [1.0, 2.0], {"feature_names": "a, "})], None, 10)


def test_too_many_column_names_are_refused_before_they_are_split() -> None:
    """8 MB of "ab," made 2.7 million strings on the event loop (0.4 s, 200 MB) before the count was
    compared, for a call refused all the same (a review)."""
    import tracemalloc

    tensor = Tensor("x", "FP64", (1, 2), [1.0, 2.0], {"feature_names": "ab," * 1_000_000})
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match=r"feature_names has 1000001 names for 2 columns"):
            rows_of([tensor], None, 10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak:,} bytes allocated to refuse it"


def _stream_events(page: Any, disconnect_after_snapshot: bool) -> tuple[Any, list[bytes]]:
    """Serve one /ui/events response over ASGI; the viewer leaves after its first snapshot, or never."""
    import asyncio

    async def run() -> tuple[Any, list[bytes]]:
        response = await page.events(None)
        bodies: list[bytes] = []
        left = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await left.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            bodies.append(message.get("body", b""))
            if disconnect_after_snapshot and b"event: snapshot" in bodies[-1]:
                left.set()

        if response.status_code == 200:
            await asyncio.wait_for(response({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send), 30)
        return response, bodies

    return asyncio.run(run())


def test_ui_event_streams_are_capped_and_a_viewer_counts_until_its_stream_ends() -> None:
    """Idle viewers must not hold every --max-connections slot: past --ui-max-viewers a stream is
    refused (503), and a stream stops counting when its viewer leaves or its time is up."""
    import asyncio

    from services.gateway import metrics as gm
    from services.gateway.ui import ComparisonFeed, ComparisonPage

    page = ComparisonPage(ComparisonFeed(""), lambda: False, max_viewers=1, stream_s=3600)
    held = asyncio.run(page.events(None))  # type: ignore[arg-type]
    assert (held.status_code, page.viewers) == (200, 1)
    counted = gm.REJECTED.labels("rest", "ui_viewers")
    before = counted._value.get()
    refused, _ = _stream_events(page, disconnect_after_snapshot=True)
    assert refused.status_code == 503 and b"--ui-max-viewers" in refused.body
    assert refused.headers["retry-after"] == "10" and counted._value.get() == before + 1

    page.viewers = 0  # the held response is never served; a served one counts itself down:
    served, bodies = _stream_events(page, disconnect_after_snapshot=True)
    assert served.status_code == 200 and page.viewers == 0
    assert bodies[1] == b"retry: 1000\n\n"  # bodies[0]: the response's start
    assert any(b"event: snapshot" in body for body in bodies)

    timed = ComparisonPage(ComparisonFeed(""), lambda: False, max_viewers=1, stream_s=0)
    ended, bodies = _stream_events(timed, disconnect_after_snapshot=False)  # the viewer never leaves
    assert ended.status_code == 200 and timed.viewers == 0
    assert sum(b"event: snapshot" in body for body in bodies) == 1


def test_snapshots_asked_before_the_first_reading_share_one_read_of_the_comparison_service() -> None:
    """Each /ui/snapshot before the first reading started its own blocking read (up to 2 s) of
    the comparison service's /metrics: 20 at once, 20 reads piled up in the thread pool."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from services.gateway.ui import ComparisonFeed, ComparisonPage

    served = []

    class SlowMetrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            served.append(self.path)
            body = b"rdv_cmp_records_total 5\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowMetrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = ComparisonPage(ComparisonFeed(f"http://127.0.0.1:{server.server_port}/metrics"), lambda: False,
                              max_viewers=1, stream_s=0)

        async def twenty() -> list[Any]:
            return await asyncio.gather(*(page.snapshot(None) for _ in range(20)))  # type: ignore[arg-type]

        responses = asyncio.run(twenty())
        assert len(served) == 1 and page.feed.version == 1
        assert all(r.status_code == 200 and b'"error":null' in r.body for r in responses)
    finally:
        server.shutdown()
        server.server_close()


def test_settings_refuse_more_ui_viewers_than_connections() -> None:
    with pytest.raises(ConfigError, match=r"--ui-max-viewers \(32\) must be below --max-connections \(10\)"):
        GatewaySettings(max_connections=10).validate()
    GatewaySettings(max_connections=10, ui=False).validate()
    GatewaySettings(max_connections=10, ui_max_viewers=9).validate()


def test_a_large_call_is_parsed_off_the_event_loop_and_a_small_one_on_it() -> None:
    """A 2 MB JSON call (1,000 x 1,024 values) took 0.5 s to parse and make rows, all on the loop
    that serves every other call (a review)."""
    import asyncio
    import threading

    from services.gateway.engine import LARGE_BODY, off_the_loop

    large = orjson.dumps({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1000, 1024],
                                      "data": [1] * 1_024_000}]})
    small = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 2], "data": [1.0, 2.0]}]})
    threads: list[str] = []

    def parse(body: bytes) -> Any:
        threads.append(threading.current_thread().name)
        return parse_call(body, None, 1000, 1024)

    async def both() -> list[Any]:
        return [await off_the_loop(len(body) >= LARGE_BODY, parse, body) for body in (large, small)]

    parsed_large, parsed_small = asyncio.run(both())
    assert len(large) >= LARGE_BODY > len(small)
    assert threads[0] != threading.main_thread().name and threads[1] == threading.main_thread().name
    assert parsed_large.tensors[0].shape == (1000, 1024) and len(parsed_large.tensors[0].values) == 1_024_000
    assert parsed_small == parse_call(small, None, 1000, 1024)


def _gateway_answering_ok(settings: GatewaySettings, schedule: Schedule, sent: list[tuple[int, str]]) -> Any:
    """A gateway without Kafka serving `schedule` as the default one, its client answering every
    request OK from the champion at once; each request's (budget_ms, request_id) goes into `sent`."""
    from concurrent.futures import Future

    from services.client.client import Answer
    from services.gateway.catalog import Target

    def submit(_row: object, budget_ms: int, request_id: str, **_: object) -> Future[Answer]:
        sent.append((budget_ms, request_id))
        answered: Future[Answer] = Future()
        answered.set_result(Answer(request_id, "OK", "champion", "1", 0.5, None, "", 0, 0, 0, "default", 1, 0))
        return answered

    gateway = _gateway_without_kafka(settings)
    gateway.client.submit, gateway.client.abandon = submit, lambda *_: None
    target = Target("default", SCHEDULE, "1", ("1",), None, schedule)
    gateway.catalog.resolve, gateway.catalog.check_features = (lambda *_: target), (lambda *_: None)
    return gateway


def test_a_large_call_s_rows_are_sent_off_the_event_loop_and_a_small_call_s_on_it() -> None:
    """Parsed off the loop, a 1,000 x 1,024 call was still digested (its `id`) and sent row by row
    on it: every other call, and the health and metrics pages, waited 0.35 s (a review)."""
    import threading

    from services.gateway.engine import LARGE_VALUES
    from services.gateway.oip import InferCall, Tensor

    sent: list[tuple[int, str]] = []
    settings = GatewaySettings(max_rows=LARGE_VALUES, max_in_flight=LARGE_VALUES)
    gateway = _gateway_answering_ok(settings, Schedule(models=("champion",)), sent)
    answering = gateway.client.submit
    threads: list[str] = []

    def submit(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return answering(*args, **kwargs)

    gateway.client.submit = submit
    for rows, named in ((LARGE_VALUES, "call-1"), (1, "")):
        threads.clear()
        call = InferCall(named, (Tensor("x", "FP64", (rows,), [1.0] * rows),), (), {})
        result = asyncio.run(gateway.infer("default", "", call, "anonymous"))
        assert [row.status for row in result.rows] == ["OK"] * rows
        on_loop = {name == threading.main_thread().name for name in threads}
        assert on_loop == {rows == 1}, (rows, set(threads))


def test_a_large_call_cancelled_while_its_rows_are_sent_waits_for_them_and_abandons_them() -> None:
    """Sent in a worker thread, which cannot be stopped: a call cancelled meanwhile (its gRPC
    deadline past, the server stopping) stopped counting its rows in flight while the thread still
    produced them, and left their waiters in the client for good (a review)."""
    import threading

    from services.gateway.engine import LARGE_VALUES
    from services.gateway.oip import InferCall, Tensor

    settings = GatewaySettings(max_rows=LARGE_VALUES, max_in_flight=LARGE_VALUES)
    gateway = _gateway_answering_ok(settings, Schedule(models=("champion",)), [])
    answering, sending, go_on = gateway.client.submit, threading.Event(), threading.Event()
    sent: list[str] = []
    abandoned: list[str] = []
    in_flight_when_done: list[int] = []

    def submit(*args: Any, **kwargs: Any) -> Any:
        sending.set()
        go_on.wait(10)
        sent.append(kwargs["request_id"])
        if len(sent) == LARGE_VALUES:
            in_flight_when_done.append(gateway.rows_in_flight)
        return answering(*args, **kwargs)

    gateway.client.submit = submit
    gateway.client.abandon = lambda rid, _future: abandoned.append(rid)
    call = InferCall("", (Tensor("x", "FP64", (LARGE_VALUES,), [1.0] * LARGE_VALUES),), (), {})

    async def cancelled_mid_send() -> None:
        infer = asyncio.ensure_future(gateway.infer("default", "", call, "anonymous"))
        await asyncio.to_thread(sending.wait, 10)
        infer.cancel()
        await asyncio.sleep(0)  # the cancellation is delivered into the wait for the thread
        infer.cancel()  # and a second one (a deadline, then the server's stop)
        await asyncio.sleep(0)
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await infer

    asyncio.run(cancelled_mid_send())
    assert len(sent) == LARGE_VALUES and in_flight_when_done == [LARGE_VALUES], "counted until the last row went"
    assert sorted(abandoned) == sorted(sent), "every row sent is abandoned: no waiter is left in the client"
    assert gateway.rows_in_flight == 0


def test_an_overloaded_gateway_refuses_a_named_call_before_it_digests_its_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest of a named call's values (0.1 s for 1,000 x 1,024) was paid by every call an
    overloaded gateway then refused (a review)."""
    from services.gateway import engine
    from services.gateway.errors import TurnedAway
    from services.gateway.oip import InferCall, Tensor

    digested: list[str] = []
    real = engine._request_ids_of
    monkeypatch.setattr(engine, "_request_ids_of", lambda *args: digested.append(args[0]) or real(*args))
    gateway = _gateway_answering_ok(GatewaySettings(max_in_flight=10), Schedule(models=("champion",)), [])
    call = InferCall("named", (Tensor("x", "FP64", (5,), [1.0] * 5),), (), {})
    gateway.rows_in_flight = 6
    with pytest.raises(TurnedAway, match="overloaded: 6 rows waiting"):
        asyncio.run(gateway.infer("default", "", call, "anonymous"))
    assert digested == []
    gateway.rows_in_flight = 5
    asyncio.run(gateway.infer("default", "", call, "anonymous"))
    assert digested == ["named"]


def test_a_row_whose_reply_partition_moved_is_sent_again_under_its_id() -> None:
    """A gateway joining the reply group took partitions from this one, and its calls waiting on
    them failed with 503 (12 of 24 in a review's run). The row is sent again, same id and
    created_at, naming a partition still owned: the rendezvous answers the repeat."""
    from concurrent.futures import Future

    from services.client.client import Answer, ReplyPartitionLost
    from services.gateway.oip import InferCall, Tensor

    sent: list[tuple[str, int]] = []

    def submit(_row: object, budget_ms: int, request_id: str, created_at: int, **_: object) -> Future[Answer]:
        sent.append((request_id, created_at))
        future: Future[Answer] = Future()
        if len(sent) == 1:
            future.set_exception(ReplyPartitionLost("reply partition(s) [0] of rdv.replies moved to another reader"))
        else:
            future.set_result(Answer(request_id, "OK", "champion", "1", 0.5, None, "", 0, 0, 0, "default", 1, 0))
        return future

    gateway = _gateway_answering_ok(GatewaySettings(), Schedule(models=("champion",)), [])
    gateway.client.submit = submit
    call = InferCall("", (Tensor("x", "FP64", (1,), [1.0]),), (), {})
    result = asyncio.run(gateway.infer("default", "", call, "anonymous"))
    assert [row.status for row in result.rows] == ["OK"]
    assert len(sent) == 2 and sent[0] == sent[1]


def test_a_call_checked_while_the_gateway_began_draining_sends_nothing_and_is_a_503() -> None:
    """A large call's rows are parsed and checked off the event loop: SIGTERM meanwhile found no
    row in flight, the drain failed nothing, and the rows went to Kafka after it (a review)."""
    from services.gateway.errors import Unavailable
    from services.gateway.oip import InferCall, Tensor

    sent: list[tuple[int, str]] = []
    gateway = _gateway_answering_ok(GatewaySettings(), Schedule(models=("champion",)), sent)

    def sigterm_meanwhile(*_args: object) -> None:
        gateway.draining = True

    gateway.catalog.check_ranges = sigterm_meanwhile
    call = InferCall("", (Tensor("x", "FP64", (1,), [1.0]),), (), {})
    with pytest.raises(Unavailable, match="shutting down"):
        asyncio.run(gateway.infer("default", "", call, "anonymous"))
    assert sent == [] and gateway.rows_in_flight == 0


def test_a_row_whose_reply_partition_moved_while_the_gateway_drains_is_not_sent_again() -> None:
    """Sent again after the drain had failed what waited, its new waiter was failed by nothing (a review)."""
    from concurrent.futures import Future

    from services.client.client import Answer, ReplyPartitionLost
    from services.gateway.errors import Unavailable
    from services.gateway.oip import InferCall, Tensor

    sent: list[str] = []
    gateway = _gateway_answering_ok(GatewaySettings(), Schedule(models=("champion",)), [])

    def submit(_row: object, request_id: str, **_: object) -> Future[Answer]:
        sent.append(request_id)
        gateway.draining = True  # SIGTERM while the row waits
        moved: Future[Answer] = Future()
        moved.set_exception(ReplyPartitionLost("reply partition(s) [0] of rdv.replies moved to another reader"))
        return moved

    gateway.client.submit = submit
    call = InferCall("", (Tensor("x", "FP64", (1,), [1.0]),), (), {})
    with pytest.raises(Unavailable, match="shutting down"):
        asyncio.run(gateway.infer("default", "", call, "anonymous"))
    assert len(sent) == 1


def test_a_call_to_one_model_whose_log_reader_cannot_start_gets_its_token_back() -> None:
    """Nothing of it was sent (the comparison log's offsets unread): the call's token was kept,
    and a key retrying earned 429s (a review)."""
    from services.core.errors import BrokerError
    from services.gateway.catalog import MODEL, Target
    from services.gateway.oip import InferCall, Tensor

    gateway = _gateway_answering_ok(GatewaySettings(rate_limit=0.001, rate_burst=1), Schedule(models=("champion",)), [])
    target = Target("champion", MODEL, "1", ("1",), None, Schedule(models=("champion",)))
    gateway.catalog.resolve = lambda *_: target

    def unreadable() -> None:
        raise BrokerError("the offsets of rdv.log could not be read")

    gateway.tap.start = unreadable
    call = InferCall("", (Tensor("x", "FP64", (1,), [1.0]),), (), {})
    for _ in range(3):  # a burst of one, given back each time
        with pytest.raises(BrokerError, match="could not be read"), gateway.spending("anonymous"):
            asyncio.run(gateway.infer("champion", "", call, "anonymous"))


def test_a_row_still_waiting_when_its_call_failed_is_not_sent_again() -> None:
    """gather left the other rows' waits running once one row failed the call: a reply partition
    moving after the call's end sent a row again that no one waited for, its waiter never
    abandoned (a review). They are cancelled with the call."""
    from concurrent.futures import Future

    from services.client.client import Answer, ReplyPartitionLost
    from services.core.errors import BrokerError
    from services.gateway.oip import InferCall, Tensor

    submitted: list[Future[Answer]] = []

    def submit(_row: object, **_: object) -> Future[Answer]:
        submitted.append(Future())
        return submitted[-1]

    gateway = _gateway_answering_ok(GatewaySettings(), Schedule(models=("champion",)), [])
    gateway.client.submit = submit
    call = InferCall("", (Tensor("x", "FP64", (2, 1), [1.0, 2.0]),), (), {})

    async def run() -> None:
        infer = asyncio.ensure_future(gateway.infer("default", "", call, "anonymous"))
        while len(submitted) < 2:
            await asyncio.sleep(0.001)
        submitted[0].set_exception(BrokerError("the request was not delivered"))
        with pytest.raises(BrokerError):
            await infer
        if not submitted[1].done():  # the client fails it when its reply partition moves
            submitted[1].set_exception(ReplyPartitionLost("reply partition(s) [0] moved to another reader"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(submitted) == 2 and submitted[1].cancelled()

    asyncio.run(run())


def test_a_call_to_one_model_is_not_failed_by_its_reply_partition_moving() -> None:
    """Its answer comes through the comparison log, whoever reads the reply."""
    from concurrent.futures import Future

    from services.client.client import ReplyPartitionLost
    from services.gateway.engine import _records_unless_refused

    async def run() -> list[dict[str, Any]]:
        record: Future[dict[str, Any]] = Future()
        moved: Future[Any] = Future()
        moved.set_exception(ReplyPartitionLost("moved"))
        asyncio.get_running_loop().call_later(0.05, record.set_result, {"request_id": "r"})
        return await _records_unless_refused([record], [moved], 5_000)

    assert asyncio.run(run()) == [{"request_id": "r"}]


def _budgets_given(deadline_ms: int | None, called_ms_ago: float, timeout_parameter: int | None = None) -> list[int]:
    """The budgets a call's Kafka requests carry, its deadline counted from `called_ms_ago` ago."""
    import time

    from services.gateway.oip import InferCall, Tensor

    sent: list[tuple[int, str]] = []
    gateway = _gateway_answering_ok(GatewaySettings(), Schedule(models=("champion",), default_deadline_ms=300), sent)
    parameters = {} if timeout_parameter is None else {"timeout": timeout_parameter}
    call = InferCall("", (Tensor("x", "FP64", (1,), [1.0]),), (), parameters)
    called_at = time.monotonic() - called_ms_ago / 1000
    asyncio.run(gateway.infer("default", "", call, "anonymous", (deadline_ms,), called_at))
    return [budget for budget, _request_id in sent]


def test_a_callers_deadline_counts_from_when_its_call_came_not_from_when_its_rows_are_sent() -> None:
    """The budget was the deadline read before the body was turned into rows, and the request's
    created_at stamped after: the rendezvous' deadline ended 8-100 ms after a gRPC caller's own
    for a large call (a review). The time since the call came is taken off now."""
    [budget] = _budgets_given(200, called_ms_ago=80)
    assert 1 <= budget <= 120
    [budget] = _budgets_given(None, called_ms_ago=80, timeout_parameter=150)
    assert budget <= 70  # the `timeout` parameter counts from the call too
    [budget] = _budgets_given(None, called_ms_ago=80)
    assert budget == 300  # the schedule's default counts from the send: the caller named no deadline
    [budget] = _budgets_given(50, called_ms_ago=80)
    assert budget == 1  # already past: the rendezvous answers TIMEOUT at once, the caller hears why


def test_a_grpc_deadline_keeps_time_for_the_answers_way_back() -> None:
    """The caller's library rounds its deadline up when it sends it (10 ms from 1 s, 100 from 10 s
    through grpcio), and the answer still has its way back to go: the rendezvous is given less than
    the header says, the margin and the rounding both. At 0.5% a 1 s call's FALLBACK was decided
    0.5 ms before the caller's deadline and reached it as DEADLINE_EXCEEDED (a review)."""
    from services.gateway.oip import grpc_deadline_ms

    assert grpc_deadline_ms(None, 20) is None
    assert grpc_deadline_ms(0.2, 20) == 178  # 200 ms sent exactly: 1% and the margin off
    for sent_ms, header_ms in ((1_000, 1_010), (9_000, 9_010), (10_000, 10_100), (30_000, 30_100)):
        assert grpc_deadline_ms(header_ms / 1000, 20) <= sent_ms - 20, sent_ms  # type: ignore[operator]
    assert grpc_deadline_ms(1.010, 0) == 999
    assert grpc_deadline_ms(0.001, 20) == 1
    # A short deadline keeps at most a fifth for the way back: 20 ms of 25 left the rendezvous 4 (a review).
    assert grpc_deadline_ms(0.025, 20) == 19 and grpc_deadline_ms(0.05, 20) == 39


# --- from a review of the protocol's edges -----------------------------------------------------------


def test_a_call_pinned_to_a_version_never_gets_another_versions_answer() -> None:
    """/versions/7/infer was checked against the version published when the call came: a row
    scored by version 6 (a roll-out under way) came back 200, its model_version "6"."""
    from services.gateway.engine import _as_pinned

    by_six = RowAnswer("OK", "challenger", "6", 0.9, "b", "model itself", 3)
    refused = _as_pinned(by_six, MODEL, "7")
    assert (refused.status, refused.score, refused.label) == ("ERROR", None, "")
    assert "asked for model version '7', and '6' answered it" in refused.reason
    assert _as_pinned(by_six, MODEL, "6") is by_six
    decided_by_v2 = RowAnswer("OK", "champion", "1", 0.9, "b", "preferred", 2)
    assert _as_pinned(decided_by_v2, SCHEDULE, "3").status == "ERROR"
    assert _as_pinned(decided_by_v2, SCHEDULE, "2") is decided_by_v2
    timed_out = RowAnswer("TIMEOUT", "champion", "", None, "", "no score by the deadline", 2)
    assert _as_pinned(timed_out, SCHEDULE, "3") is timed_out  # its own failure says more


def test_a_refusal_echoing_the_callers_text_is_no_oracle_for_a_secret() -> None:
    """Every message went through the secrets' mask: an input named like a Kafka password came
    back as ***, which confirmed the guess."""
    from services.core import redaction
    from services.core.errors import KafkaOperationError

    redaction.never_print("Tr0ub4dor&3")
    try:
        guessed = status_of(InvalidInput("input 'Tr0ub4dor&3': datatype BOOL is not a number type"))
        assert "Tr0ub4dor&3" in guessed.message
        kafka = status_of(KafkaOperationError("SASL authentication failed for password Tr0ub4dor&3"))
        assert "Tr0ub4dor&3" not in kafka.message and "***" in kafka.message
    finally:
        redaction.forget_all()


def test_float_types_take_their_largest_value_as_encoders_print_it_and_int64_its_range_exactly() -> None:
    """3.4028235e+38 (numpy's, Go's and serde's FP32 max) is above max as a double but rounds to
    it: it was refused over REST and taken over gRPC. orjson reads an integer below INT64's range
    as the double -2^63, which passed."""
    check_values("a", "FP32", [3.4028235e38, -3.4028235e38])
    check_values("a", "FP16", [65519.0])
    for datatype, value in (("FP32", 3.4028236e38), ("FP16", 65520.0)):  # these round to inf
        with pytest.raises(InvalidInput, match=f"out of {datatype}'s range"):
            check_values("a", datatype, [value])
    check_values("a", "INT64", [-(2**63)])  # the exact integer
    with pytest.raises(InvalidInput, match="is not a INT64 value"):
        check_values("a", "INT64", [orjson.loads(b"-9223372036854775809")])


def test_retry_after_says_when_the_key_may_call_again_and_v2_health_answers_false_with_400() -> None:
    from services.gateway.rest import RestApi, error_response
    from services.gateway.settings import GatewaySettings

    assert error_response(RateLimited("over the rate limit", retry_after_s=99.2)).headers["Retry-After"] == "100"
    assert error_response(Unavailable("draining")).headers["Retry-After"] == "1"
    gateway = _gateway_without_kafka(GatewaySettings())
    gateway.draining = True
    api = RestApi(gateway, "test")
    not_ready = asyncio.run(api.ready(None))  # type: ignore[arg-type]
    assert not_ready.status_code == 400 and orjson.loads(not_ready.body)["ready"] is False
    assert asyncio.run(api.readyz(None)).status_code == 503  # type: ignore[arg-type]


# --- from a review of caller-given strings, retries, gRPC's own refusals and the rate limit ------------


class Posted:
    """A POST to /v2/models/{name}/infer of `body`, as RestApi.infer reads it."""

    def __init__(self, body: bytes, name: str = "default"):
        self.body = body
        self.headers = {"content-type": "application/json", "content-length": str(len(body))}
        self.path_params = {"name": name}
        self.scope: dict[str, object] = {}

    async def stream(self) -> AsyncIterator[bytes]:
        yield self.body


def test_names_of_more_bytes_than_a_request_record_holds_for_them_are_refused() -> None:
    """1,024 names of 256 four-byte characters made a record over Kafka's 1 MB: a 413 naming the
    producer's limit, not the names."""
    from services.gateway.oip import check_name_length

    check_name_length("é" * 256, "inputs[0]: 'name'")  # 512 bytes: at the limit
    with pytest.raises(InvalidInput, match=r"^inputs\[0\]: 'name' of 1024 bytes in UTF-8 is over the limit of 512$"):
        check_name_length("\U0001F600" * 256, "inputs[0]: 'name'")


def test_names_longer_than_a_feature_or_model_may_have_are_refused_naming_the_field_and_counted() -> None:
    """An input named with 2 MB of text was taken: every row's Kafka request carried it, and the
    producer refused the record (413, too_large) where the caller's mistake is a 400 naming it."""
    from services.core.metrics import child
    from services.gateway import metrics as m
    from services.gateway.rest import RestApi, measured

    limit = 256  # MAX_NAME_CHARS, as the call's id

    def one_input(name: str, parameters: dict[str, str] | None = None, shape: list[int] | None = None) -> bytes:
        shape = shape or [1]
        tensor: dict[str, Any] = {"name": name, "datatype": "FP64", "shape": shape, "data": [1.0] * math.prod(shape)}
        if parameters:
            tensor["parameters"] = parameters
        return orjson.dumps({"inputs": [tensor]})

    refused = child(m.REJECTED, "rest", "invalid")
    before = refused._value.get()
    infer = measured("infer", RestApi(_gateway_without_kafka(GatewaySettings()), "test").infer)
    response = asyncio.run(infer(Posted(one_input("a" * 2_000_000))))  # type: ignore[arg-type]
    assert response.status_code == 400 and refused._value.get() == before + 1
    assert orjson.loads(response.body) == {
        "error": f"inputs[0]: 'name' of 2000000 characters is over the limit of {limit}"}

    assert parse_call(one_input("a" * limit), None, 10, 10).tensors[0].name == "a" * limit
    matrix = parse_call(one_input("x", {"feature_names": "b," + "c" * (limit + 1)}, [1, 2]), None, 10, 10)
    with pytest.raises(InvalidInput, match=f"input 'x': feature_names' name 1 of {limit + 1} characters"):
        rows_of(matrix.tensors, None, 10)

    # A model name or version longer than any model's (score_limits) is malformed, not an unknown model.
    catalog = Catalog(Versions(V1), Published({"m" * 1024: ("v" * 1024, [FeatureSpec("a")])}), enforce=False)
    assert catalog.resolve("m" * 1024, "v" * 1024).name == "m" * 1024
    for name, version, field in (("m" * 1025, "", "model name"), ("m" * 1024, "v" * 1025, "model version")):
        with pytest.raises(InvalidInput, match=f"^{field} of 1025 characters is over the limit of 1024$") as long:
            catalog.resolve(name, version)
        assert status_of(long.value).grpc == grpc.StatusCode.INVALID_ARGUMENT


def _one_row_calls(submit: Any, deadline_ms: int) -> Any:
    """A call of one FP64 row under a given id, to a gateway without Kafka whose client answers
    through `submit` (the default schedule, its champion)."""
    from services.gateway.catalog import Target
    from services.gateway.oip import InferCall, Tensor

    gateway = _gateway_without_kafka(GatewaySettings())
    gateway.client.submit, gateway.client.abandon = submit, lambda *_: None
    target = Target("default", SCHEDULE, "1", ("1",), None, Schedule(models=("champion",)))
    gateway.catalog.resolve, gateway.catalog.check_features = (lambda *_: target), (lambda *_: None)

    def call(call_id: str) -> InferResult:
        named = InferCall(call_id, (Tensor("x", "FP64", (1,), [1.0]),), (), {})
        return asyncio.run(gateway.infer("default", "", named, "anonymous", (deadline_ms,)))  # type: ignore[no-any-return]

    return call


def test_a_504_of_a_call_under_its_own_id_says_a_retry_needs_a_new_id() -> None:
    """A retry under the same id and rows has the same Kafka request id, which the rendezvous
    answers with its first answer (join.py, remembered ids): the retry of a 504 got the cached
    TIMEOUT, again and again, while the 504 said nothing of it. The stand-in client answers as the
    rendezvous does: the first answer of a request id, whatever comes after."""
    from concurrent.futures import Future

    from services.client.client import Answer

    first_answers: dict[str, Answer] = {}
    statuses = iter(["TIMEOUT", "OK", "OK"])  # the rendezvous' verdict on each new request id

    def submit(_row: object, budget_ms: int, request_id: str, **_: object) -> Future[Answer]:
        status = next(statuses) if request_id not in first_answers else ""
        timed_out = status == "TIMEOUT"
        first_answers.setdefault(request_id, Answer(
            request_id, status, model="champion", version="1", score=None if timed_out else 0.5, label=None,
            reason="no usable score by the deadline" if timed_out else "preferred model answered", created_at=0,
            deadline=100, answered_at=100, schedule="default", schedule_version=1, received_at=100))
        answered: Future[Answer] = Future()
        answered.set_result(first_answers[request_id])
        return answered

    call = _one_row_calls(submit, deadline_ms=100)

    for _attempt in range(2):  # the first call, then its retry under the same id: the same answer
        with pytest.raises(AnswerTimedOut, match=r"^TIMEOUT: no usable score by the deadline; a retry under the "
                                                 r"same id gets this answer again .*: retry under a new id$"):
            call("req-1")
    assert call("req-1b").rows[0].status == "OK"  # under a new id: a request of its own
    with pytest.raises(AnswerTimedOut) as unnamed:  # the gateway names a call without an id anew each time
        statuses = iter(["TIMEOUT"])
        call("")
    assert "new id" not in str(unnamed.value)


def test_a_failure_says_a_retry_under_its_id_gets_it_again_only_where_the_rendezvous_gives_it_again() -> None:
    """The hint went on every 504 and 502 of a call under its own id, but the rendezvous does not
    remember one of its answers: its refusal of a retry beyond the return addresses an open request
    keeps (MAX_WAITING_REPLIES). The retry after the answer gets the answer, not the refusal again,
    while a refusal of other inputs under a known id is given again. The stand-in client's requests
    are decided by a real Join, as the rendezvous decides them."""
    from concurrent.futures import Future

    from services.client.client import Answer
    from services.core.request_inputs import digest_of
    from services.rendezvous.join import MAX_WAITING_REPLIES, Join, JoinLimits
    from services.rendezvous.records import RequestIn, ScoreIn

    at = 1_000_000
    replies: dict[str, dict[str, Any]] = {}

    class Outputs:  # where the join's answers go: the return address of each request
        def answer(self, mailbox: Any, record: dict[str, Any]) -> None:
            for reply in mailbox.replies:
                replies[reply[0]] = record

        def log(self, _mailbox: Any, _record: dict[str, Any]) -> None:
            pass

        def repeat(self, reply: tuple[str, int | None], record: dict[str, Any], _receipt: Any, _inputs: Any) -> None:
            replies[reply[0]] = record

    join = Join(JoinLimits(), ScheduleBook.holding(Schedule(models=("champion",))), Outputs(), wall_ms=lambda: at)
    sent = iter(range(1_000_000))
    row = {"x": 1.0}

    def inputs_of(features: dict[str, float]) -> bytes:
        return digest_of({"features": features, "payload": None})

    def send(rid: str, inputs: bytes) -> str:
        n = next(sent)
        join.on_request(RequestIn(rid, 0, n, at, at, at + 200, f"address-{n}", None, None, inputs))
        return f"address-{n}"

    def submit(features: dict[str, float], budget_ms: int, request_id: str, **_: object) -> Future[Answer]:
        answered: Future[Answer] = Future()
        answered.set_result(Answer.from_record(replies[send(request_id, inputs_of(features))], at))
        return answered  # every request here is answered at once (as refused, or from memory)

    call = _one_row_calls(submit, deadline_ms=200)

    # Open, with as many callers waiting as the rendezvous keeps: the call is refused, not remembered.
    kafka_id = _kafka_id("req-1", "anonymous", [row])
    for _ in range(MAX_WAITING_REPLIES):
        send(kafka_id, inputs_of(row))
    with pytest.raises(AnswerFailed, match=r"this retry is not kept \(retry after the answer, which is then sent "
                                           r"again\)$") as refused:
        call("req-1")
    assert "new id" not in str(refused.value)
    join.on_score(ScoreIn(kafka_id, 0, 0, at + 5, "champion", "v1", 0.9, "benign", None))
    assert call("req-1").rows[0].status == "OK"  # the retry under the same id got the answer: the hint was wrong

    # Another's inputs under the call's id: refused, and so is every retry while the id is known.
    send(_kafka_id("req-2", "anonymous", [row]), b"someone else's inputs")
    messages = []
    for _attempt in range(2):
        with pytest.raises(AnswerFailed, match=r"already used by a request with other features.*retry under a "
                                               r"new id$") as conflicting:
            call("req-2")
        messages.append(str(conflicting.value))
    assert messages[0] == messages[1]


def test_a_rows_rate_limit_charges_a_call_its_rows_besides_the_calls_limit() -> None:
    """--rate-limit counts calls: one call of 1,000 rows (1,000 Kafka requests, 1,000 scores per
    model) cost a key what one row did. --rate-limit-rows charges each call its rows."""

    from services.gateway.oip import InferCall, Tensor
    from services.gateway.rest import error_response

    rows = RateLimit(rate=0.001, burst=10, unit="rows")
    rows.take("a", 6)
    with pytest.raises(RateLimited, match=r"^8 rows are over the rate limit of 0.001 rows/s for this key") as over:
        rows.take("a", 8)
    assert error_response(over.value).status_code == 429 and over.value.retry_after_s > 1000
    rows.take("a", 4)  # what is left of the burst
    rows.take("b", 10)  # each key its own bucket

    settings = GatewaySettings(max_rows=8, rate_limit_rows=0.001, rate_burst_rows=10)
    settings.validate()
    with pytest.raises(ConfigError, match=r"--rate-burst-rows \(7\) must be at least --max-rows \(8\)"):
        GatewaySettings(max_rows=8, rate_limit_rows=1.0, rate_burst_rows=7).validate()
    GatewaySettings(max_rows=8, rate_burst_rows=7).validate()  # no rows limit: the burst is unused

    sent: list[tuple[int, str]] = []
    gateway = _gateway_answering_ok(settings, Schedule(models=("champion",)), sent)
    call = InferCall("", (Tensor("x", "FP64", (6,), [1.0] * 6),), (), {})
    gateway.rows_in_flight = settings.max_in_flight - 1  # no room for 6 rows: refused with 503, spending none
    with pytest.raises(Unavailable, match="overloaded"):
        asyncio.run(gateway.infer("default", "", call, "alice"))
    gateway.rows_in_flight = 0
    assert len(asyncio.run(gateway.infer("default", "", call, "alice")).rows) == 6
    with pytest.raises(RateLimited, match="6 rows are over the rate limit"):
        asyncio.run(gateway.infer("default", "", call, "alice"))
    assert len(sent) == 6  # the refused call sent nothing
    _admit(gateway)  # the calls limit (unlimited here) is its own


def test_calls_grpc_refuses_before_the_handler_are_counted_as_they_begin() -> None:
    """A message over the receive limit got RESOURCE_EXHAUSTED from grpc core and an unknown method
    UNIMPLEMENTED, neither counted anywhere (docs said grpc.aio had no hook: its server interceptor
    runs for both). A live grpc.aio server on loopback, with a raw-bytes method as a stand-in."""
    from services.core.metrics import child
    from services.gateway import metrics as m
    from services.gateway.grpc_guard import STARTED, CountingInterceptor

    reached: list[bytes] = []

    async def echo(request: bytes, _context: object) -> bytes:
        reached.append(request)
        return request

    async def calls() -> tuple[grpc.StatusCode, grpc.StatusCode, bytes]:
        server = grpc.aio.server(interceptors=[CountingInterceptor()],
                                 options=[("grpc.max_receive_message_length", 1000)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(echo)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
                codes = []
                for method, message in ((infer, b"x" * 5000), (channel.unary_unary("/inference.Nope/Nope"), b"x")):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await method(message)
                    codes.append(refused.value.code())
                return codes[0], codes[1], await infer(b"ok")
        finally:
            await server.stop(None)

    started, no_route = STARTED._value.get(), child(m.REJECTED, "grpc", "no_route")._value.get()
    too_large, unimplemented, answered = asyncio.run(calls())
    assert (too_large, unimplemented, answered) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                    grpc.StatusCode.UNIMPLEMENTED, b"ok")
    assert reached == [b"ok"]  # the large message never reached the handler, which counts the calls
    assert STARTED._value.get() == started + 3
    assert child(m.REJECTED, "grpc", "no_route")._value.get() == no_route + 1


def test_max_in_flight_below_max_rows_is_refused_at_start() -> None:
    """A call of more rows than --max-in-flight was 'overloaded' forever, retried for free."""
    from services.core.errors import ConfigError
    from services.gateway.settings import GatewaySettings

    with pytest.raises(ConfigError, match=r"--max-in-flight \(4\) must be at least --max-rows \(1000\)"):
        GatewaySettings(max_in_flight=4).validate()


def test_a_value_nested_deep_is_refused_with_its_reason_not_a_500() -> None:
    """A shape nested 1,000 deep (a 2 KB body), or a data element so nested behind an 'outputs'
    string padding the member count, raised RecursionError where the message showed it: 500,
    and 27 log lines a call (a review). Shown bounded, they are 400s."""
    shape = b"[" * 1000 + b"1" + b"]" * 1000
    body = b'{"inputs":[{"name":"a","datatype":"FP64","shape":' + shape + b',"data":[1.0]}]}'
    with pytest.raises(InvalidInput, match=r"'shape' must be .*, got \[\[\[\[\.\.\.\]\]\]\]$"):
        parse_call(body, None, 1000, 1024)
    deep = b'{"k":' * 1000 + b"1" + b"}" * 1000
    padded = (b'{"inputs":[{"name":"a","datatype":"FP64","shape":[1],"data":[' + deep + b']}],'
              b'"outputs":["' + b"x" * 1000 + b'"]}')
    with pytest.raises(InvalidInput, match=r"input 'a': \{'k': \{'k': .*\} is not a number"):
        parse_call(padded, None, 1000, 1024)
