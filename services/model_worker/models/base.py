"""The model seam: what the worker knows about a model, and nothing more.

A model is anything with `name`, `version`, `feature_names`, `load()` and `predict(batch)`
(like MLServer's `load()` / `predict()`); the worker never imports the library behind it.
It may also declare its input contract as `signature` (a `services.core.signatures.Signature`
whose names are `feature_names`, in order); without one, every feature is required.

The worker checks each request against the signature first (`model_signature`): a request with
unknown, missing or non-finite features gets an error Score and never reaches the model. So
`predict` receives a float64 matrix of shape (n, len(feature_names)), columns in `feature_names`
order, with every required feature finite; an absent optional feature holds its default, or
NaN when it has none. It returns one `Prediction` per row, in order. It may raise on a batch; the
worker then re-scores the batch record by record to find the records that fail.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from services.core.errors import ModelSpecError
from services.core.signatures import FeatureSpec, Signature

__all__ = ["Model", "Prediction", "check_batch", "check_finite", "features_to_matrix", "model_signature"]


class Prediction(NamedTuple):
    """One model output (a named tuple: cheap to build, one per request).

    `score` is e.g. the probability of the positive class or a regression value;
    `label` is the class label of a classifier (None for a regressor).
    """

    score: float | None
    label: str | None = None


@runtime_checkable
class Model(Protocol):
    """The seam between the worker and a model library."""

    name: str  # default name, e.g. "champion"
    version: str  # e.g. "logreg-1"
    feature_names: tuple[str, ...]  # order of the columns predict() receives

    def load(self) -> None:
        """Load or train whatever the model needs; called once before the first predict()."""
        ...

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        """Score a float64 batch of shape (n, len(feature_names)); missing features are NaN."""
        ...


def features_to_matrix(rows: Sequence[Mapping[str, float | None]], names: tuple[str, ...]) -> np.ndarray:
    """Stack feature dicts into a float64 matrix with columns in `names` order.

    A feature that is absent (or None) becomes NaN; keys not in `names` are ignored.
    """
    out = np.full((len(rows), len(names)), np.nan, dtype=np.float64)
    if not names:
        return out
    get_all = itemgetter(*names)  # one C call per row when every feature is present
    nan = math.nan
    for i, row in enumerate(rows):
        try:
            out[i] = get_all(row)
        except (KeyError, TypeError):  # a feature is absent or None
            out[i] = [nan if (v := row.get(name)) is None else v for name in names]
    return out


def model_signature(model: Model, extra: str = "reject") -> Signature:
    """The model's declared `signature`, else every feature in `feature_names` required;
    `extra` is the deployment's policy for features outside it (reject or ignore)."""
    declared: Any = getattr(model, "signature", None)
    where = f"model {getattr(model, 'name', '?')!r}"
    if declared is None:
        signature = Signature.all_required(model.feature_names)
    elif isinstance(declared, Signature):
        signature = declared
    elif isinstance(declared, Iterable) and not isinstance(declared, str | bytes | Mapping):
        items = list(declared)
        if not all(isinstance(f, FeatureSpec) for f in items):
            raise ModelSpecError(f"{where}: signature must be a Signature or a sequence of FeatureSpec")
        signature = Signature(tuple(items))
    else:
        raise ModelSpecError(f"{where}: signature must be a Signature or a sequence of FeatureSpec, got "
                             f"{type(declared).__name__}")
    if signature.names != tuple(model.feature_names):
        raise ModelSpecError(
            f"{where}: the signature's features {list(signature.names)} differ from feature_names "
            f"{list(model.feature_names)}; they must be the same names in the same order"
        )
    return signature.with_extra(extra)


def check_batch(batch: np.ndarray, n_features: int, model_name: str) -> np.ndarray:
    """Return `batch` as a 2-D float64 array with `n_features` columns, or raise ValueError."""
    arr = np.asarray(batch, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise ValueError(f"model {model_name!r} expects a batch of shape (n, {n_features}), got {arr.shape}")
    return arr


FLOAT32_MAX = float(np.finfo(np.float32).max)

PROBABILITY_SLACK = 1e-6  # float32 rounding of a softmax may step this far outside [0, 1]


def check_probabilities(proba: np.ndarray, source: str) -> None:
    """ValueError for an (n, k) array of class probabilities (or (n,): one each) holding a row
    that is none: a value outside [0, 1], or NaN beside a finite score (argmax picks the NaN's
    class). Logits or an estimator's own arithmetic were scored as confident probabilities (a
    review). A row need not sum to 1: a multilabel estimator's rows do not, nor an outlier's row
    of zeros. A row whose score (the last column) is not finite is left to the worker, which
    fails that row alone. The worker tries a failed batch again in parts: the row fails alone."""
    table = proba.reshape(len(proba), -1)
    if not table.size or (table.min() >= -PROBABILITY_SLACK and table.max() <= 1 + PROBABILITY_SLACK):  # NaN: no
        return  # every row is (the common case: a few µs a batch)
    inside = (table >= -PROBABILITY_SLACK) & (table <= 1 + PROBABILITY_SLACK)  # NaN: outside
    bad = np.isfinite(table[:, -1]) & ~inside.all(axis=1)
    if bad.any():
        row = table[int(np.argmax(bad))]
        raise ValueError(f"{source} gave {[round(v, 6) for v in row.tolist()]} for a row: no class probabilities "
                         "(each in [0, 1]; logits?)")


def fits_float32(x: np.ndarray) -> bool:
    """Whether no value of a batch becomes infinite as float32 (1e39 does; NaN stays NaN): models
    that compute in float32 (trees, ONNX graphs) would score an infinity with confidence."""
    return not bool((np.abs(x) > FLOAT32_MAX).any())


def check_finite(x: np.ndarray, signature: Signature, model_name: str) -> None:
    """Raise ValueError when a feature that is never NaN for a checked request (a required one, or
    one with a default) is NaN or infinite: the worker checks requests first, this guards direct callers."""
    columns = [i for i, f in enumerate(signature.features) if f.required or f.default is not None]
    if not np.isfinite(x[:, columns]).all():
        raise ValueError(f"model {model_name!r}: a required feature is missing (NaN) or not finite")
