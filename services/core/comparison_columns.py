"""The columns a batch of Comparison records is decoded into, and the layout that decoding knows.

`compiled_decode.py` turns the bytes of a batch straight into a `DecodedBatch` (one array per
field, names as `Strings` of the batch); the comparison service's fold (services/comparison/
fold.py) and the report's columns (services/compare_report/columns.py) read them. The decoder
knows one layout, `LAYOUT`: the current `schemas/comparison.avsc`, checked against the codec's
schema at start-up (`layout_matches`); with any other schema, fastavro decodes record by record.
`signature` is the form schemas are compared in (the rendezvous' record walks use it too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The Comparison schema as the decoder walks it (name, type).
LAYOUT: tuple[tuple[str, Any], ...] = (
    ("request_id", "string"), ("created_at", "long"), ("deadline", "long"),
    ("answered_at", ("null", "long")),
    ("status", ("enum", ("OK", "FALLBACK", "TIMEOUT", "ERROR"))),
    ("chosen_model", ("null", "string")), ("reason", "string"), ("schedule", "string"),
    ("schedule_version", "long"),
    ("outputs", ("array", (
        ("model", "string"), ("version", "string"), ("score", ("null", "double")),
        ("label", ("null", "string")), ("error", ("null", "string")), ("latency_ms", "double"),
        ("compute_ms", "double"), ("late", "boolean"),
    ))),
)  # fmt: skip
MAX_ITEMS = 10_000  # outputs per array block: more is not a Comparison record


def repeating_a_model(row: np.ndarray, model: np.ndarray, records: int) -> np.ndarray:
    """Per record: one of its outputs is of a model an earlier one of the same record is of.

    The rendezvous writes one output per model per record; a record written by anyone else with a
    model listed 200 times would count 200 pairs, 200 deadlines met, in every figure and gate. Both
    the live service (it dead-letters such a record) and `rendezvous compare` (it leaves it out)
    ask this, so the same log gives the same figures."""
    repeated = np.zeros(len(row), dtype=bool)
    if len(row) > 1:
        most = int(np.bincount(row).max())  # outputs of the longest record
        if most <= 16 and bool((row[1:] >= row[:-1]).all()):  # in record order: compare each with those before it
            for lag in range(1, most):
                repeated[lag:] |= (row[lag:] == row[:-lag]) & (model[lag:] == model[:-lag])
        else:
            key = row.astype(np.int64) * (int(model.max()) + 2) + (model.astype(np.int64) + 1)
            _values, first = np.unique(key, return_index=True)
            repeated[:] = True
            repeated[first] = False
    return np.bincount(row[repeated], minlength=records) > 0


class Rejected(Exception):
    """The batch is not (entirely) the layout this decoder knows; decode it with fastavro."""


def signature(node: Any) -> Any:
    """A schema (dict/list/str) as the nested tuples of LAYOUT, to compare with it."""
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return tuple(signature(branch) for branch in node)
    kind = node["type"]
    if kind == "record":
        return tuple((f["name"], signature(f["type"])) for f in node["fields"])
    if kind == "enum":
        return ("enum", tuple(node["symbols"]))
    if kind == "array":
        return ("array", signature(node["items"]))
    if kind == "map":
        return ("map", signature(node["values"]))
    return signature(kind)


def layout_matches(schema: Mapping[str, Any]) -> bool:
    """True when `schema` is the Comparison layout this decoder walks."""
    return bool(signature(dict(schema)) == LAYOUT)


def split_current(values: Sequence[bytes | None], header: bytes) -> tuple[list[bytes], list[bytes | None]]:
    """The values written with the current schema (they start with its single-object `header`),
    and the others (an older writer schema, which needs fastavro's resolution, or no value)."""
    current: list[bytes] = []
    others: list[bytes | None] = []
    for value in values:
        if value is not None and value.startswith(header):
            current.append(value)
        else:
            others.append(value)
    return current, others


@dataclass(frozen=True)
class Strings:
    """Distinct strings of one field kind in a batch and, per occurrence, its index among them."""

    values: list[str]
    ids: np.ndarray


@dataclass(frozen=True)
class DecodedBatch:
    """Columns of one batch (rows are batch-local); names are `Strings` of the batch."""

    created_at: np.ndarray
    deadline: np.ndarray
    answered_at: np.ndarray  # -1 = null
    status: np.ndarray
    chosen: Strings  # ids -1 = null; values shared with `model`
    row: np.ndarray
    model: Strings
    version: Strings
    score: np.ndarray  # NaN = null
    scored: np.ndarray  # False = null (NaN in `score`, where a written NaN is True here)
    label: Strings  # ids -1 = null
    error: np.ndarray
    latency_ms: np.ndarray
    late: np.ndarray

    @property
    def records(self) -> int:
        return len(self.created_at)
