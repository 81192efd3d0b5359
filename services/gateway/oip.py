"""The Open Inference Protocol's inference call, without a transport: tensors in, rows out, and back.

A call carries either one tensor per feature (each of shape [n] or [n, 1], named by the feature)
or one [n, k] tensor whose columns are named by its parameter `feature_names` (comma-separated;
without it, the model's own feature order when k matches it). Either way `n` rows become `n`
Kafka requests and one response. Numbers only (FP64, FP32, FP16 and the integer types), finite.

Outputs of a response: `score` (FP64 [n]), `label`, `status`, `model`, `version`, `reason`
(BYTES [n]); parameters `status`, `model`, `version`, `reason`, `schedule_version` (for n > 1:
the worst status, and model/version/reason only when every row agrees).

Call parameters read here: `timeout` (an integer number of microseconds, as Triton's clients send
it). REST and gRPC turn their own encodings into `Tensor`s (rest.py, grpc_api.py); everything
after that is shared.
"""

from __future__ import annotations

import functools
import itertools
import math
import reprlib
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.gateway.errors import InvalidInput

# Element types a feature may be sent as, and their little-endian numpy types (raw / binary data).
NUMERIC: dict[str, str] = {
    "FP64": "<f8", "FP32": "<f4", "FP16": "<f2",
    "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
}  # fmt: skip
OUTPUTS = ("score", "label", "status", "model", "version", "reason")
FEATURE_NAMES = "feature_names"
TENSOR_PARAMETERS = frozenset({FEATURE_NAMES, "binary_data_size"})
# A call's `id`, at most: it becomes part of a Kafka request id, and of every record about it.
MAX_ID_CHARS = 256
# A feature's name (an input's, or one of `feature_names`), at most: every row's Kafka request
# carries it, so a name of 2 MB made each row's record too large (413 from the producer). At this
# bound, --max-features names still fit a record well under Kafka's 1 MB.
MAX_NAME_CHARS = 256
# ... and in bytes (UTF-8): 1,024 names of 256 four-byte characters made a 1,046,917-byte record,
# refused by the producer (413) for a cause its message did not name (a review).
MAX_NAME_BYTES = 512
# Parameters of a call or of one input, at most. The protocol's values are booleans, numbers and
# strings; a call is held whole until its answers come, and one valid row with 8 MiB of nested
# "parameters" (or ~600,000 gRPC map entries) held 150-180 MB that long (a review).
MAX_PARAMETERS = 32
# The parameters the gateway reads: only these are kept with a call while it waits.
CALL_PARAMETERS = frozenset({"timeout"})


@dataclass(slots=True)
class Tensor:
    """One input tensor: its elements as floats, flattened row-major (not frozen: a call makes one
    per feature, and a frozen dataclass is several times slower to build)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: list[float]
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferCall:
    """What a caller asked, whatever the transport."""

    id: str
    tensors: tuple[Tensor, ...]
    outputs: tuple[str, ...]  # empty: all of them
    parameters: Mapping[str, Any]


# -- checks shared by both encodings ------------------------------------------------------------


def check_id(call_id: Any) -> str:
    if not isinstance(call_id, str):
        raise InvalidInput("'id' must be a string")
    if len(call_id) > MAX_ID_CHARS:
        raise InvalidInput(f"'id' of {len(call_id)} characters is over the limit of {MAX_ID_CHARS}")
    return call_id


def short_name(name: str) -> bool:
    """Whether a name is within both limits whatever its characters (at most 4 bytes each in
    UTF-8): the common case, told without encoding it."""
    return len(name) * 4 <= MAX_NAME_BYTES and len(name) <= MAX_NAME_CHARS


def check_name_length(name: str, what: str, *args: Any) -> None:
    """A feature's name within MAX_NAME_CHARS and MAX_NAME_BYTES (`what`, formatted with `args`,
    names the field; the name itself is not echoed). The label is made only when the name may be
    over: this runs for every input and every column name of every call."""
    if short_name(name):
        return
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"{what.format(*args)} of {len(name)} characters is over the limit of {MAX_NAME_CHARS}")
    if len(size := name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidInput(f"{what.format(*args)} of {len(size)} bytes in UTF-8 is over the limit of {MAX_NAME_BYTES}")


def check_header(
    name: Any, datatype: Any, shape: Any, index: int, max_rows: int, max_features: int
) -> tuple[str, str, tuple[int, ...]]:
    """The name, datatype and shape of an input tensor, checked before any of its data is read:
    at most 2 dimensions, `max_rows` rows and `max_features` columns, so no shape costs more than
    its data to refuse, and no call's data more than rows x features values (8 MB of INT8 was 8
    million Python floats, then 1,000 rows of 8,000 features: half a GB, to refuse the names)."""
    # `type(x) is` rather than isinstance: this runs once per input tensor of every call, and
    # bool (a subclass of int) must not pass as a size.
    if type(name) is not str or not name:
        raise InvalidInput(f"inputs[{index}]: 'name' must be a non-empty string")
    check_name_length(name, "inputs[{}]: 'name'", index)
    if type(datatype) is not str or datatype not in NUMERIC:
        shown = datatype if isinstance(datatype, str) else type(datatype).__name__
        raise InvalidInput(
            f"input '{name}': datatype {shown} is not a number type; send features as FP64 or FP32"
        )
    kind = type(shape)
    if (kind is not list and kind is not tuple) or not shape or len(shape) > 2:
        raise InvalidInput(f"input '{name}': 'shape' must be [n], [n, 1] or [n, k] with sizes >= 0, "
                           f"got {_short(shape, 60)}")
    for d in shape:
        if type(d) is not int or d < 0:
            raise InvalidInput(f"input '{name}': 'shape' must be [n], [n, 1] or [n, k] with sizes >= 0, "
                               f"got {_short(shape, 60)}")
    if shape[0] > max_rows:
        raise InvalidInput(f"{shape[0]} rows in one call; at most {max_rows}")
    if len(shape) == 2 and shape[1] > max_features:
        raise InvalidInput(f"input '{name}': {shape[1]} features in one call; at most {max_features}")
    return name, datatype, tuple(shape)


def kept_parameters(params: Mapping[str, Any], where: str, read: frozenset[str]) -> dict[str, Any]:
    """The parameters in `read` of a call's or an input's (`where`); `InvalidInput` for more than
    MAX_PARAMETERS, or a value that is no boolean, number or string (`feature_names` excepted: a
    list of names, checked where it is read)."""
    check_parameter_count(len(params), where)
    for key, value in params.items():
        if key != FEATURE_NAMES and not isinstance(value, bool | int | float | str):
            raise InvalidInput(f"{where}: parameter {str(key)[:100]!r} must be a boolean, a number or a string "
                               f"(the protocol's parameter types), not {type(value).__name__}")
    return {key: value for key, value in params.items() if key in read}


def check_parameter_count(count: int, where: str) -> None:
    """At most MAX_PARAMETERS on a call or an input (REST and gRPC)."""
    if count > MAX_PARAMETERS:
        raise InvalidInput(f"{where}: {count} parameters; at most {MAX_PARAMETERS}")


@functools.cache
def max_json_structures(max_rows: int, max_features: int) -> int:
    """Most arrays, objects and members (`[`, `{` and `:`, counted in strings too) a REST call
    within the limits can hold: each value in an array of its own, and per input its object, its
    members, shape, data, parameters and a name or `feature_names` entry of brackets or colons.
    orjson parses in one C call holding the GIL, off the event loop or not: 8 MiB of `[[]],` froze
    the loop 0.5-0.8 s, a health check with it, and 8 MiB of one object's members 0.3 s."""
    per_input = 16 + MAX_NAME_CHARS + 2 * MAX_PARAMETERS
    return max_rows * max_features + max_features * per_input + 32 * MAX_PARAMETERS + MAX_ID_CHARS + 64


def check_input_count(count: int, max_features: int) -> None:
    """One input tensor per feature at most (each of its rows is one more value to read)."""
    if count > max_features:
        raise InvalidInput(f"{count} inputs in one call; at most {max_features} (one per feature)")


def checked_headers(
    headers: Iterable[tuple[Any, Any, Any]], max_rows: int, max_features: int
) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every input's (name, datatype, shape), checked before any data is read (REST and gRPC,
    after `check_input_count`): each within `check_header`'s bounds, and all of them together
    within rows x features values (several inputs of the largest shape each would pass one by one)."""
    budget = ValueBudget(max_rows, max_features)
    checked = []
    for index, (name, datatype, shape) in enumerate(headers):
        header = check_header(name, datatype, shape, index, max_rows, max_features)
        budget.take(header[0], header[2])
        checked.append(header)
    return checked


class ValueBudget:
    """The values a call's inputs may hold together, counted from their shapes before any data is
    read: at most rows x features (several inputs of the largest shape each would pass one by one)."""

    def __init__(self, max_rows: int, max_features: int) -> None:
        self.left = max_rows * max_features
        self.limit = self.left

    def take(self, name: str, shape: tuple[int, ...]) -> None:
        self.left -= elements(shape)
        if self.left < 0:
            raise InvalidInput(f"input '{name}': the inputs hold more than {self.limit:,} values in one call "
                               "(rows x features)")


def elements(shape: Sequence[int]) -> int:
    return math.prod(shape)


def from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview) -> list[float]:
    """Elements of raw little-endian bytes (gRPC raw_input_contents, REST binary data)."""
    width = np.dtype(NUMERIC[datatype]).itemsize
    if len(raw) != elements(shape) * width:
        raise InvalidInput(
            f"input '{name}': {len(raw)} bytes of data for shape {list(shape)} of {datatype} "
            f"(expected {elements(shape) * width})"
        )
    values: list[float] = np.frombuffer(raw, dtype=NUMERIC[datatype]).astype(np.float64).tolist()
    return values


def from_list(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> list[float]:
    """Elements of JSON data (flat, or nested one list per row as a 2-D shape says), each a value
    of `datatype`."""
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': 'data' must be a list of numbers")
    if datatype == "FP64" and len(data) == elements(shape) and all(type(v) is float for v in data):
        return data  # the common case, as `from_numbers` would give it: JSON's doubles, as many as the shape says
    if data and type(data[0]) is list:
        if len(shape) != 2 or len(data) != shape[0] or any(type(row) is not list or len(row) != shape[1]
                                                           for row in data):
            raise InvalidInput(f"input '{name}': nested data must be one list of values per row, "
                               f"as the shape {list(shape)} says")
        numbers = _numbers((value for row in data for value in row), name)
    else:
        numbers = _numbers(data, name)
    return from_numbers(name, datatype, shape, numbers)


def from_numbers(name: str, datatype: str, shape: tuple[int, ...], numbers: list[int | float], where: str = "") -> (
        list[float]):
    """Numbers as sent (JSON's, gRPC contents') as a tensor's elements: as many as the shape says,
    each checked as sent (an INT64's int exactly: as a double, 2^63 - 1 reads as 2^63)."""
    if len(numbers) != elements(shape):
        raise InvalidInput(f"input '{name}': {len(numbers)} values {where}for shape {list(shape)} "
                           f"({elements(shape)} expected)")
    check_values(name, datatype, numbers)
    if datatype in ("FP32", "FP16"):
        # As the type holds them, as the raw bytes and gRPC's contents do: the same call sent as
        # JSON gave the models other features, and another Kafka id (not an idempotent retry).
        rounded: list[float] = np.asarray(numbers, dtype=NUMERIC[datatype]).astype(np.float64).tolist()
        return rounded
    return [float(v) for v in numbers]


def _numbers(items: Iterable[Any], name: str) -> list[int | float]:
    """The items, each a JSON number; a list among them is nested deeper than the shape says
    (it was flattened, and the call answered as if the data had the shape)."""
    out: list[int | float] = []
    for item in items:
        kind = type(item)
        if kind is float or kind is int:
            out.append(item)
        elif kind is list:
            raise InvalidInput(f"input '{name}': data nested deeper than its shape says (a list where a "
                               "number belongs)")
        else:
            raise InvalidInput(f"input '{name}': {_short(item)} is not a number")
    return out


# A caller's value shown in a message: bounded in depth and length before it is written. A shape
# nested 1,000 deep raised RecursionError in repr(): a 500 and a traceback a call (a review), and a
# shape of a million entries was written whole before it was cut.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict = 3, 6, 6, 4
_SHOWN.maxstring = _SHOWN.maxlong = _SHOWN.maxother = 40


def _short(value: Any, limit: int = 40) -> str:
    text = _SHOWN.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# The values each element type holds (FP64 holds every finite number JSON can carry).
_INTEGERS = {t: (int(np.iinfo(d).min), int(np.iinfo(d).max)) for t, d in NUMERIC.items() if t[0] in "IU"}
# A float is in range below max + 1 (a power of two, exact as a double): INT64's max, 2^63 - 1, is
# no double, and `<= float(max)` let 2^63 itself through.
_FLOAT_END = {t: float(high + 1) for t, (_low, high) in _INTEGERS.items()}
# A JSON integer below INT64's range reaches us as the double -2^63 (orjson): as a float, that
# bound is excluded (it let -2^63 - 1 through as a value "checked exactly").
_FLOAT_LOW_EXCLUDED = {"INT64"}
# Values that round to a finite number of the type: below its max plus half a unit in the last
# place. `<= max` refused 3.4028235e+38, the way numpy, Go and serde print FP32's max.
def _rounding_limit(dtype: type[np.floating[Any]]) -> float:
    top = np.finfo(dtype).max
    ulp = float(top) - float(np.nextafter(top, dtype(0)))  # the spacing just below max (past it: inf)
    return float(top) + ulp / 2


_FLOAT_LIMIT = {"FP32": _rounding_limit(np.float32), "FP16": _rounding_limit(np.float16)}


def check_values(name: str, datatype: str, values: Sequence[int | float]) -> None:
    """Values sent as numbers (JSON, gRPC contents), as sent (an int is compared exactly), must be
    values of their declared type: a whole number in range for the integer types, in range for
    FP32 and FP16."""
    if datatype in _INTEGERS:
        low, high = _INTEGERS[datatype]
        end = _FLOAT_END[datatype]
        low_excluded = datatype in _FLOAT_LOW_EXCLUDED
        bad = next((v for v in values if not (low <= v <= high if type(v) is int else
                                             (low < v if low_excluded else low <= v) and v < end
                                             and float(v).is_integer())), None)
        if bad is not None:
            raise InvalidInput(f"input '{name}': {bad} is not a {datatype} value (whole numbers {low}..{high})")
    elif datatype in _FLOAT_LIMIT:
        limit = _FLOAT_LIMIT[datatype]
        bad = next((v for v in values if not -limit < v < limit), None)
        if bad is not None and not math.isfinite(bad):  # said as for every other form of data
            raise InvalidInput(f"input '{name}' holds {bad}: features must be finite numbers")
        if bad is not None:
            raise InvalidInput(f"input '{name}': {bad} is out of {datatype}'s range")


# What a caller's library may have added to its gRPC deadline: it travels as a `grpc-timeout`
# header whose encoding "may round up" (grpc core). Measured through grpcio (the deadline a
# grpc.aio server sees): exact below 1 s; from 1 s one unit of the next digit over, 10 ms from 1 s
# and 100 ms from 10 s: at most 1/101 of it. 0.5% left a 1 s call's FALLBACK, decided 0.5 ms before
# the caller's own deadline, to reach it as a bare DEADLINE_EXCEEDED (59 of 60 calls; a review).
ROUNDED_UP_SHARE = 0.01
# The most of a deadline kept for the answer's way back: a whole 20 ms of a 25 ms deadline left
# the rendezvous 4 ms, where the 3-hop floor's p50 is ~6 ms (a review).
REPLY_MARGIN_MOST_SHARE = 0.2


def grpc_deadline_ms(remaining_s: float | None, reply_margin_ms: int) -> int | None:
    """The rendezvous' share of a gRPC deadline (`remaining_s` from now, as the header said): the
    answer must still travel back (reply topic, this gateway, the response: `reply_margin_ms`,
    --grpc-reply-margin-ms, at most a fifth of the deadline) before the caller gives up, or an
    explicit TIMEOUT or FALLBACK answer would reach it as DEADLINE_EXCEEDED."""
    if remaining_s is None:
        return None
    remaining_ms = remaining_s * 1000
    margin = min(reply_margin_ms, remaining_ms * REPLY_MARGIN_MOST_SHARE)
    return max(1, math.floor(remaining_ms * (1 - ROUNDED_UP_SHARE) - margin))


def timeout_ms(parameters: Mapping[str, Any]) -> int | None:
    """The `timeout` parameter (microseconds, as Triton's clients send it) in whole ms, if given;
    0 is none given, as Triton reads it (a client that always sends the field was refused: a review)."""
    if "timeout" not in parameters:
        return None
    value = parameters["timeout"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"parameter 'timeout' must be a whole number of microseconds, 0 for none, got {value!r}")
    return max(1, math.ceil(value / 1000)) if value else None


def requested_outputs(names: Iterable[str]) -> tuple[str, ...]:
    """The outputs a call asks for: each one of OUTPUTS, once (read no further than that many:
    4 million names took 1.9 s to list in an error text cut to 1,000 characters)."""
    chosen: list[str] = []
    for name in names:
        if name not in OUTPUTS:
            raise InvalidInput(f"unknown output {name[:100]!r}; outputs are {', '.join(OUTPUTS)}")
        if name in chosen:
            raise InvalidInput(f"output {name!r} is asked for twice")
        chosen.append(name)
    return tuple(chosen)


# -- tensors -> rows ----------------------------------------------------------------------------


def rows_of(tensors: Sequence[Tensor], features: Sequence[str] | None, max_rows: int) -> list[dict[str, float]]:
    """The feature rows of a call; `features` is the target's feature order, when known."""
    if not tensors:
        raise InvalidInput("no inputs: send one tensor per feature, or one [n, k] tensor")
    matrix = len(tensors) == 1 and _is_matrix(tensors[0])
    rows = _matrix_rows(tensors[0], features) if matrix else _column_rows(tensors)
    if not rows:
        raise InvalidInput("the inputs hold no rows (n = 0)")
    if len(rows) > max_rows:
        raise InvalidInput(f"{len(rows)} rows in one call; at most {max_rows}")
    return rows


def _is_matrix(tensor: Tensor) -> bool:
    return FEATURE_NAMES in tensor.parameters or (len(tensor.shape) == 2 and tensor.shape[1] > 1)


def _matrix_rows(tensor: Tensor, features: Sequence[str] | None) -> list[dict[str, float]]:
    if len(tensor.shape) != 2:
        raise InvalidInput(f"input '{tensor.name}' has feature_names, so it must be [n, k], got {list(tensor.shape)}")
    n, k = tensor.shape
    names = _column_names(tensor, features, k)
    values = tensor.values
    _check_finite(values, lambda i: f"input '{tensor.name}' row {i // k} column '{names[i % k]}'")
    return [dict(zip(names, values[r * k:(r + 1) * k], strict=True)) for r in range(n)]


def _column_names(tensor: Tensor, features: Sequence[str] | None, k: int) -> list[str]:
    given = tensor.parameters.get(FEATURE_NAMES)
    if given is None:
        if features is not None and len(features) == k:
            return list(features)
        raise InvalidInput(
            f"input '{tensor.name}' is a [n, {k}] matrix: name its columns with the parameter "
            f"feature_names (comma-separated), or send one tensor per feature"
        )
    if not isinstance(given, str):
        raise InvalidInput(f"input '{tensor.name}': parameter feature_names must be a comma-separated string")
    # Counted before it is split: 8 MB of "ab," made 2.7 million strings on the event loop, 0.4 s
    # and 200 MB for a call refused all the same, other callers' p99 0.1 -> 1.6 s (a review).
    count = given.count(",") + 1
    if count != k:
        raise InvalidInput(f"input '{tensor.name}': feature_names has {count} names for {k} columns")
    names = [part.strip() for part in given.split(",")]
    for index, name in enumerate(names):
        check_name_length(name, "input '{}': feature_names' name {}", tensor.name, index)
    if not all(names):
        raise InvalidInput(f"input '{tensor.name}': feature_names has an empty name (column {names.index('')}; "
                           "two commas in a row, or one at an end)")
    _check_unique(names, "feature_names")
    return names


def _column_rows(tensors: Sequence[Tensor]) -> list[dict[str, float]]:
    names = [t.name for t in tensors]
    _check_unique(names, "input names")
    n = tensors[0].shape[0]
    for tensor in tensors:
        if FEATURE_NAMES in tensor.parameters:  # it was dropped: the column named by the tensor's name
            raise InvalidInput(f"input '{tensor.name}' has feature_names, which names the columns of a lone "
                               "[n, k] input: send it alone, or drop the parameter (the tensor's name is the feature)")
        shape = tensor.shape
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise InvalidInput(f"input '{tensor.name}': a feature tensor is [n] or [n, 1], got {list(shape)}")
        if shape[0] != n:
            raise InvalidInput(f"input '{tensor.name}' has {shape[0]} rows, the others {n}")
    columns = [t.values for t in tensors]  # each n values long: its shape's, as it was read
    if not all(map(math.isfinite, itertools.chain.from_iterable(columns))):  # all at once: per tensor cost more
        for tensor in tensors:
            _check_finite(tensor.values, lambda i, t=tensor: f"input '{t.name}' row {i}")
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def _check_unique(names: Sequence[str], what: str) -> None:
    if len(set(names)) != len(names):
        twice = sorted(n for n, count in Counter(names).items() if count > 1)
        shown = ", ".join(repr(n[:40]) for n in twice[:5]) + (f" and {len(twice) - 5} more" if len(twice) > 5 else "")
        raise InvalidInput(f"{what}: {shown} given more than once")


def _check_finite(values: list[float], where: Any) -> None:
    if all(map(math.isfinite, values)):
        return
    i, value = next((i, v) for i, v in enumerate(values) if not math.isfinite(v))
    raise InvalidInput(f"{where(i)} is {value}: features must be finite numbers")


# -- answers -> response ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowAnswer:
    """One row's answer, as a caller sees it."""

    status: str
    model: str
    version: str
    score: float | None
    label: str
    reason: str
    schedule_version: int


@dataclass(frozen=True, slots=True)
class InferResult:
    model_name: str
    model_version: str
    id: str
    rows: tuple[RowAnswer, ...]
    outputs: tuple[str, ...]  # empty: all

    def parameters(self) -> dict[str, Any]:
        rows = self.rows
        worst = "FALLBACK" if any(r.status != "OK" for r in rows) else "OK"
        params: dict[str, Any] = {"status": worst, "schedule_version": max(r.schedule_version for r in rows)}
        for name in ("model", "version", "reason"):
            values = {getattr(r, name) for r in rows}
            if len(values) == 1:
                params[name] = values.pop()
        return params

    def columns(self) -> list[tuple[str, str, list[Any]]]:
        """(name, datatype, values) of each output asked for, in the protocol's order."""
        wanted = self.outputs or OUTPUTS
        out = []
        for name in OUTPUTS:
            if name in wanted:
                if name == "score":
                    out.append((name, "FP64", [math.nan if r.score is None else r.score for r in self.rows]))
                else:
                    out.append((name, "BYTES", [getattr(r, name) for r in self.rows]))
        return out


def raw_bytes(values: Sequence[str]) -> bytes:
    """BYTES elements in raw form: each one's UTF-8 bytes after its 4-byte little-endian length."""
    encoded = [v.encode() for v in values]
    return b"".join(struct.pack("<I", len(e)) + e for e in encoded)


def rest_response(result: InferResult) -> dict[str, Any]:
    n = len(result.rows)
    return {
        "model_name": result.model_name,
        "model_version": result.model_version,
        "id": result.id,
        "parameters": result.parameters(),
        "outputs": [
            {"name": name, "datatype": datatype, "shape": [n], "data": data}
            for name, datatype, data in result.columns()
        ],
    }
