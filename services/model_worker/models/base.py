"""The model seam: what the worker knows about a model, and nothing more.

A model is anything with `name`, `version`, `feature_names`, `load()` and `predict(batch)`
(like MLServer's `load()` / `predict()`); the worker never imports the library behind it.
`predict` receives a float64 matrix of shape (n, len(feature_names)) whose columns follow
`feature_names`; a feature missing from a request is NaN. It returns one `Prediction` per row,
in order. It may raise on a batch; the worker then re-scores the batch record by record to find
the records that fail.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Model", "Prediction", "check_batch", "features_to_matrix"]


@dataclass(frozen=True, slots=True)
class Prediction:
    """One model output.

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


def check_batch(batch: np.ndarray, n_features: int, model_name: str) -> np.ndarray:
    """Return `batch` as a 2-D float64 array with `n_features` columns, or raise ValueError."""
    arr = np.asarray(batch, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise ValueError(f"model {model_name!r} expects a batch of shape (n, {n_features}), got {arr.shape}")
    return arr
