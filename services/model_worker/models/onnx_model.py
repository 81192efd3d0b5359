"""Adapter for an ONNX model (`*.onnx`) run by onnxruntime (the optional `onnx` extra).

The model must have one input of shape (n, k), fed as float32 with columns in the order of the
sidecar JSON list `<file>.features.json` (ONNX graphs carry no column names). The sidecar is
also the model's input contract: a name is a required feature, an object
{"name": ..., "default": 0.0} an optional one (see services/core/signatures.py). Loading an ONNX
file runs no Python code from it: onnxruntime executes the graph's operators only.

    an output named like "*prob*"   score = probability of the last class (the positive class of a
                                    binary classifier); accepts an (n, k) tensor or the list of
                                    {class: probability} maps skl2onnx's ZipMap produces
                                    (there the largest class key counts as last)
    an output named like "*label*"  label = str(that value)
    neither                         score = the first output (a regressor), label = None

Every output read must hold one value (or one row of probabilities) per input row, rows first.
At load three rows of zeros run through the graph and the outputs' real shapes are checked (the
declared ones are not trusted: exporters leave a fixed [1, 1] on outputs that follow a dynamic
batch): read as (n, -1), a class-major [2, n] output gave each request another request's score,
and a two-column softmax named "output" gave P(class 0). The same run says at load, not at every
request, when a sidecar lists another number of features than a symbolic input width. A
probability outside [0, 1] (logits under a "prob" name) fails its row. A graph exported with a
batch of exactly one row is run row by row; one with another fixed batch size is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from services.core.errors import ModelSpecError
from services.core.signatures import Signature

from ._files import (
    file_state,
    opened_model_file,
    read_sidecar,
    resolved_model_path,
    sidecar_hint,
    stream_version,
    unchanged,
)
from .base import FLOAT32_MAX, Prediction, check_batch, check_finite, check_probabilities, fits_float32

__all__ = ["ONNX_INSTALL_HINT", "OnnxModel"]

ONNX_INSTALL_HINT = "install the onnx extra: pip install 'rendezvous-serving[onnx]'"
# The input types a model's features are fed as, by the name onnxruntime gives them.
_INPUT_TYPES: dict[str, type[np.floating[Any]]] = {"tensor(float)": np.float32, "tensor(double)": np.float64}
# Rows run at load, twice: an output must follow the row count. One run of 3 told an (n, 2) output
# from a class-major (2, n) one, but took a 3-class (3, n) one for (n, 3): loaded, it scored every
# batch of 3 with other rows' probabilities and failed every other batch (a review).
_PROBE_ROWS = (3, 5)
LOAD_TRIES = 3  # loads of a file that changed while it was loaded, before giving up
# How long a probe's rows of zeros may take: a graph looping 2^62 times held the load for good, the
# CLI that checks it too, SIGTERM unheard inside onnxruntime (a review). A model runs them in ms.
PROBE_TIMEOUT_S = 10.0


class OnnxModel:
    """An onnxruntime InferenceSession behind the Model seam."""

    def __init__(self, path: Path, *, name: str | None = None) -> None:
        self.path = path
        self.name = name if name is not None else path.stem
        self.version = ""
        self.feature_names: tuple[str, ...] = ()
        self.signature: Signature | None = None
        self._session: Any = None
        self._input = ""
        self._input_dtype: type[np.floating[Any]] = np.float32
        self._prob_output: str | None = None
        self._label_output: str | None = None
        self._value_output: str | None = None
        self._one_row = False  # the graph takes exactly one row per run

    def load(self) -> None:
        where = f"model {str(self.path)!r}"
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ModelSpecError(f"{where}: onnxruntime is not installed; {ONNX_INSTALL_HINT}") from err
        session, version, signature = self._loaded_file(ort, where)
        names = signature.names
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelSpecError(
                f"{where}: expected one input tensor of shape (n, {len(names)}), the graph has "
                f"{[i.name for i in inputs]}; export it with a single float input"
            )
        shape = list(inputs[0].shape or [])
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != len(names)):
            raise ModelSpecError(
                f"{where}: input {inputs[0].name!r} has shape {shape}, but the sidecar lists "
                f"{len(names)} features; the input must be (n, {len(names)})"
            )
        # Fed in the input's own type: a graph exported with a double input failed every request
        # when fed float32 ("Unexpected input data type"), after loading without a word (a review).
        dtype = _INPUT_TYPES.get(inputs[0].type)
        if dtype is None:
            raise ModelSpecError(f"{where}: input {inputs[0].name!r} is a {inputs[0].type}; the features are fed "
                                 f"as {' or '.join(_INPUT_TYPES)}")
        rows = shape[0]
        if isinstance(rows, int) and rows != 1:
            raise ModelSpecError(f"{where}: input {inputs[0].name!r} takes exactly {rows} rows (shape {shape}); "
                                 "export it with a dynamic batch axis")
        self._one_row = rows == 1
        outputs = [o.name for o in session.get_outputs()]
        if not outputs:
            raise ModelSpecError(f"{where}: the graph has no outputs")
        self._prob_output = next((o for o in outputs if "prob" in o.lower()), None)
        self._label_output = next((o for o in outputs if "label" in o.lower()), None)
        self._value_output = None
        if self._prob_output is None and self._label_output is None:
            self._value_output = outputs[0]
        self._input, self._input_dtype = inputs[0].name, dtype
        self.feature_names = names
        self.signature = signature
        self.version = version
        self._session = session
        self._probe(where, len(names), dtype)

    def _loaded_file(self, ort: Any, where: str) -> tuple[Any, str, Signature]:
        """The graph's session, the version of the bytes it was made from and the sidecar beside
        them, all of the file the path names as the load begins (through its links: one version's
        sidecar with another's graph, else; a review). onnxruntime opens the path itself (a graph
        with its weights in files beside it needs the path), so the file hashed is checked to be
        the one still there after: hashed apart, a file renamed into its place between the two had
        one model served under the other's version (a review). A file replaced meanwhile, or a link
        moved, is loaded again, from where the path leads then."""
        for _attempt in range(LOAD_TRIES):
            file = resolved_model_path(self.path)
            signature = read_sidecar(file, self.path)
            if signature is None:
                raise ModelSpecError(f"{where}: ONNX models need their feature names; {sidecar_hint(file)}")
            with opened_model_file(file, self.path) as model_file:
                state = file_state(model_file)  # as opened: hashed, then read by onnxruntime
                version = stream_version(self.path, model_file)
                try:
                    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
                except Exception as err:
                    raise ModelSpecError(
                        f"{where}: onnxruntime cannot load it ({type(err).__name__}: {err}); "
                        "is it a valid ONNX file for this onnxruntime version?"
                    ) from err
                if unchanged(state, file) and _still_leads_to(self.path, file):
                    return session, version, signature
        raise ModelSpecError(f"{where}: the file changed while it was loaded, {LOAD_TRIES} times; load it once "
                             "it is written (write a new file and rename it into place)")

    def _probe(self, where: str, features: int, dtype: type[np.floating[Any]]) -> None:
        """Run rows of zeros (each count of _PROBE_ROWS); a one-line error if the graph cannot take
        them or its outputs are not one value (or one row of class probabilities) per row."""
        for rows in _PROBE_ROWS:
            self._probe_rows(where, features, dtype, rows)

    def _probe_rows(self, where: str, features: int, dtype: type[np.floating[Any]], rows: int) -> None:
        import onnxruntime as ort

        options = ort.RunOptions()
        timer = threading.Timer(PROBE_TIMEOUT_S, setattr, (options, "terminate", True))  # onnxruntime stops then
        timer.start()
        try:
            results = self._run(np.zeros((rows, features), dtype=dtype), options)
        except Exception as err:
            self._session = None
            if options.terminate:
                raise ModelSpecError(f"{where}: the graph did not run {rows} rows of zeros within "
                                     f"{PROBE_TIMEOUT_S:g} s (a loop without end?); fix or re-export it") from None
            raise ModelSpecError(f"{where}: rows of {features} features, as the sidecar lists them, do not run "
                                 f"through the graph ({type(err).__name__}: {str(err)[:300]}); does the sidecar "
                                 "list the graph's input columns?") from err
        finally:
            timer.cancel()
        try:
            if self._prob_output is not None:
                _probability_rows(results[self._prob_output], rows, self._prob_output)
            for output in (self._label_output, self._value_output):
                if output is not None:
                    _one_per_row(results[output], rows, output)
        except ValueError as err:
            self._session = None
            raise ModelSpecError(f"{where}: {err}: a score is one value a row (a class-probability output, named "
                                 "with 'prob' in it, may have a column per class: the last is the score)") from None

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        if self._session is None:
            raise RuntimeError(f"model {self.name!r} used before load()")
        x = check_batch(batch, len(self.feature_names), self.name)
        n = len(x)
        if n == 0:
            return []
        if self.signature is not None and not np.isfinite(x).all():
            check_finite(x, self.signature, self.name)
        if self._input_dtype is np.float32 and not fits_float32(x):
            raise ValueError(f"model {self.name!r}: a feature value is beyond float32's range (±{FLOAT32_MAX:.4g}), "
                             "the type this model computes in")
        results = self._run(x.astype(self._input_dtype))

        scores: list[float | None] = [None] * n
        labels: list[str | None] = [None] * n
        if self._prob_output is not None:
            scores = _positive_probability(results[self._prob_output], n, self._prob_output)
        if self._label_output is not None:
            labels = [str(v) for v in _one_per_row(results[self._label_output], n, self._label_output).tolist()]
        if self._value_output is not None:
            values = _one_per_row(np.asarray(results[self._value_output], dtype=np.float64), n, self._value_output)
            scores = [float(v) for v in values.tolist()]
        return [Prediction(s, lab) for s, lab in zip(scores, labels, strict=True)]

    def _run(self, x: np.ndarray, options: Any = None) -> dict[str, Any]:
        """The outputs read, for every row of `x`: in one run, or row by row for a one-row graph."""
        wanted = [o for o in (self._prob_output, self._label_output, self._value_output) if o is not None]
        if not self._one_row or len(x) == 1:
            return dict(zip(wanted, self._session.run(wanted, {self._input: x}, options), strict=True))
        runs = [self._session.run(wanted, {self._input: x[i : i + 1]}, options) for i in range(len(x))]
        return {name: _joined([run[j] for run in runs]) for j, name in enumerate(wanted)}


def _joined(parts: list[Any]) -> Any:
    if isinstance(parts[0], list):  # ZipMap's maps
        return [item for part in parts for item in part]
    return np.concatenate([np.asarray(p) for p in parts], axis=0)


def _one_per_row(raw: Any, n: int, name: str) -> np.ndarray:
    values = np.asarray(raw)
    if values.ndim > 1 and values.shape[0] == n and values.size == n:  # (n, 1), (n, 1, 1), ...
        values = values.reshape(n)
    if values.shape != (n,):
        raise ValueError(f"onnx output {name!r} gives shape {values.shape} for {n} rows, not one value a row")
    return values


def _probability_rows(raw: Any, n: int, name: str) -> list[float | None]:
    """Probability of the last class from an (n, k) tensor or a list of {class: p} maps (ZipMap)."""
    if isinstance(raw, list) and (not raw or isinstance(raw[0], Mapping)):
        if len(raw) != n:
            raise ValueError(f"onnx output {name!r} gives {len(raw)} probability maps for {n} rows")
        return [float(m[max(m)]) if m else None for m in raw]  # classes sort like sklearn's classes_
    return _last_class(np.asarray(raw, dtype=np.float64), n, name)


def _last_class(proba: np.ndarray, n: int, name: str) -> list[float | None]:
    if proba.ndim not in (1, 2) or proba.shape[0] != n:
        raise ValueError(f"onnx output {name!r} gives shape {proba.shape} for {n} rows, not (rows, classes)")
    scores: list[float | None] = (proba[:, -1] if proba.ndim == 2 else proba).tolist()
    return scores


def _positive_probability(raw: Any, n: int, name: str) -> list[float | None]:
    """`_probability_rows`, each row class probabilities: logits under a 'prob' name fail their
    rows. Every class's, not the score's alone: a row of logits whose last fell in [0, 1] was
    scored with confidence (a review)."""
    if isinstance(raw, list):  # ZipMap's maps, each in its classes' order
        scores = _probability_rows(raw, n, name)
        table = [[float(m[k]) for k in sorted(m)] for m in raw if m]
        if table and len({len(row) for row in table}) == 1:
            check_probabilities(np.asarray(table, dtype=np.float64), f"onnx output {name!r}")
        return scores
    proba = np.asarray(raw, dtype=np.float64)  # once: the scores and the check read the same array
    scores = _last_class(proba, n, name)
    check_probabilities(proba, f"onnx output {name!r}")
    return scores


def _still_leads_to(path: Path, file: Path) -> bool:
    """Whether `path` leads to `file` still; not while a link is being made again (BusyBox's
    `ln -sfn` removes it first): that load is tried again."""
    try:
        return path.resolve(strict=True) == file
    except (OSError, RuntimeError):  # RuntimeError: a loop of links
        return False
