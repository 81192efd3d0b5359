"""Comparison records accumulated column by column, so a million of them stay cheap.

A dict per record would cost ~1 kB in Python objects; here each field of each model output
is appended to an `array.array` (8 bytes for a double) and the report works on numpy views of
those arrays. Strings (model names, labels) become small integer codes.

Two tables in one object:
- per record (index `row`): created_at, deadline, answered_at (-1 = not answered), status
  code, chosen model code (-1 = none);
- per model output: the record's row, model code, version code, score (NaN = none), label code
  (-1 = none), error flag, latency (ms), late flag.

`Columns.add` takes Comparison-shaped dicts (as built by a replay, or decoded by fastavro),
`Columns.add_batch` the columns `compiled_decode` made straight from the bytes of `rdv.log`, and
`Columns.merge` joins the columns of two readers (codes are re-mapped).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.core.comparison_columns import DecodedBatch

STATUSES = ("OK", "FALLBACK", "TIMEOUT", "ERROR")
_STATUS_CODE = {name: code for code, name in enumerate(STATUSES)}
NAN = float("nan")


@dataclass(frozen=True)
class Frame:
    """Numpy views of the columns plus the code tables (read-only by convention)."""

    created_at: np.ndarray
    deadline: np.ndarray
    answered_at: np.ndarray
    status: np.ndarray
    chosen: np.ndarray
    row: np.ndarray
    model: np.ndarray
    score: np.ndarray
    label: np.ndarray
    error: np.ndarray
    latency_ms: np.ndarray
    late: np.ndarray
    models: tuple[str, ...]
    labels: tuple[str, ...]
    versions: tuple[tuple[str, ...], ...]  # per model code, in order of first appearance
    # Per output, a code of `version_names`: which versions to name once records are left out
    # (summary.plausible), so a version seen only in those is not named in the table.
    version: np.ndarray
    version_names: tuple[str, ...]

    @property
    def records(self) -> int:
        return len(self.created_at)


class Columns:
    """Appends Comparison records field by field (see the module docstring)."""

    def __init__(self) -> None:
        self.created_at = array("q")
        self.deadline = array("q")
        self.answered_at = array("q")
        self.status = array("b")
        self.chosen = array("i")
        self.row = array("i")
        self.model = array("i")  # "h" overflowed past 32,767 model names (OverflowError, or wrapped codes)
        self.version = array("i")
        self.score = array("d")
        self.label = array("i")
        self.error = array("b")
        self.latency_ms = array("d")
        self.late = array("b")
        self.model_codes: dict[str, int] = {}
        self.label_codes: dict[str, int] = {}
        self.version_codes: dict[str, int] = {}
        self.versions: list[dict[str, None]] = []  # per model code: versions as an ordered set

    def __len__(self) -> int:
        return len(self.created_at)

    def _model_code(self, name: str) -> int:
        code = self.model_codes.get(name)
        if code is None:
            code = self.model_codes[name] = len(self.model_codes)
            self.versions.append({})
        return code

    def _label_code(self, name: str) -> int:
        code = self.label_codes.get(name)
        if code is None:
            code = self.label_codes[name] = len(self.label_codes)
        return code

    def _version_code(self, name: str) -> int:
        code = self.version_codes.get(name)
        if code is None:
            code = self.version_codes[name] = len(self.version_codes)
        return code

    def add(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Append every record; returns how many. The path of dicts (a replay, the fastavro fallback):
        one tight loop over local names."""
        created_at, deadline, answered_at = self.created_at.append, self.deadline.append, self.answered_at.append
        status, chosen = self.status.append, self.chosen.append
        rows, models, scores, labels = self.row.append, self.model.append, self.score.append, self.label.append
        errors, latencies, lates, output_versions = (self.error.append, self.latency_ms.append, self.late.append,
                                                     self.version.append)  # fmt: skip
        model_codes, label_codes, versions = self.model_codes, self.label_codes, self.versions
        version_codes = self.version_codes
        status_code = _STATUS_CODE
        row = start = len(self.created_at)
        for record in records:
            created_at(record["created_at"])
            deadline(record["deadline"])
            answered = record.get("answered_at")
            answered_at(-1 if answered is None else answered)
            status(status_code[record["status"]])
            name = record.get("chosen_model")
            chosen(-1 if name is None else (model_codes[name] if name in model_codes else self._model_code(name)))
            for out in record["outputs"]:
                rows(row)
                name = out["model"]
                code = model_codes[name] if name in model_codes else self._model_code(name)
                models(code)
                version = out["version"]
                versions[code][version] = None
                output_versions(version_codes[version] if version in version_codes else self._version_code(version))
                score = out.get("score")
                scores(NAN if score is None else score)
                label = out.get("label")
                labels(-1 if label is None else (label_codes[label] if label in label_codes
                                                 else self._label_code(label)))
                errors(out.get("error") is not None)
                latencies(out["latency_ms"])
                lates(out["late"])
            row += 1
        return row - start

    def add_batch(self, batch: DecodedBatch) -> int:
        """Append columns decoded by `compiled_decode` (batch-local names become our codes)."""
        offset = len(self.created_at)
        models = [self._model_code(name) for name in batch.model.values]
        labels = [self._label_code(name) for name in batch.label.values]
        versions = [self._version_code(name) for name in batch.version.values]
        pairs, first = np.unique(batch.model.ids * max(1, len(batch.version.values)) + batch.version.ids,
                                 return_index=True)  # fmt: skip
        for pair in pairs[np.argsort(first)].tolist():  # versions in order of first appearance
            model, version = divmod(pair, max(1, len(batch.version.values)))
            self.versions[models[model]][batch.version.values[version]] = None
        for name in ("created_at", "deadline", "answered_at", "status", "score", "error", "latency_ms", "late"):
            _extend(getattr(self, name), getattr(batch, name))
        _extend(self.chosen, _translate(batch.chosen.ids, models))
        _extend(self.model, _translate(batch.model.ids, models))
        _extend(self.label, _translate(batch.label.ids, labels))
        _extend(self.version, _translate(batch.version.ids, versions))
        _extend(self.row, batch.row + offset)
        return batch.records

    def merge(self, other: Columns) -> None:
        """Append another reader's columns (its rows and codes are shifted into ours)."""
        offset = len(self.created_at)
        models = [self._model_code(m) for m in other.model_codes]
        labels = [self._label_code(lb) for lb in other.label_codes]
        versions = [self._version_code(v) for v in other.version_codes]
        for name, code in other.model_codes.items():
            self.versions[self.model_codes[name]].update(other.versions[code])
        for name in ("created_at", "deadline", "answered_at", "status", "score", "error", "latency_ms", "late"):
            getattr(self, name).extend(getattr(other, name))
        _extend(self.chosen, _translate(_numpy(other.chosen), models))
        _extend(self.model, _translate(_numpy(other.model), models))
        _extend(self.label, _translate(_numpy(other.label), labels))
        _extend(self.version, _translate(_numpy(other.version), versions))
        _extend(self.row, _numpy(other.row) + offset)

    def frame(self) -> Frame:
        """Numpy copies of what was accumulated so far (the columns may keep growing)."""
        return Frame(
            created_at=_numpy(self.created_at), deadline=_numpy(self.deadline),
            answered_at=_numpy(self.answered_at), status=_numpy(self.status), chosen=_numpy(self.chosen),
            row=_numpy(self.row), model=_numpy(self.model), score=_numpy(self.score),
            label=_numpy(self.label), error=_numpy(self.error).astype(bool),
            latency_ms=_numpy(self.latency_ms), late=_numpy(self.late).astype(bool),
            models=tuple(self.model_codes), labels=tuple(self.label_codes),
            versions=tuple(tuple(v) for v in self.versions), version=_numpy(self.version),
            version_names=tuple(self.version_codes),
        )  # fmt: skip

    @classmethod
    def of(cls, records: Iterable[Mapping[str, Any]]) -> Columns:
        columns = cls()
        columns.add(records)
        return columns


def _numpy(column: array[Any]) -> np.ndarray:
    """A numpy copy of an array.array, with the matching dtype (typecode q, b, i, h or d)."""
    return np.array(column, dtype=np.dtype(column.typecode))


def _extend(column: array[Any], values: np.ndarray) -> None:
    """Append numpy values to an array.array, converted to its item type."""
    column.frombytes(np.asarray(values).astype(np.dtype(column.typecode), copy=False).tobytes())


def _translate(ids: np.ndarray, mapping: list[int]) -> np.ndarray:
    """Ids (-1 = none) translated through `mapping`; -1 stays -1."""
    if not mapping:
        return np.full(len(ids), -1, dtype=np.int64)
    return np.where(ids < 0, -1, np.asarray(mapping, dtype=np.int64)[np.maximum(ids, 0)])
