"""Adapter for a scikit-learn estimator, usually one saved with joblib (`*.joblib`, `*.pkl`).

    classifier with predict_proba   score = probability of the last class in `classes_`
                                    (the positive class of a binary classifier),
                                    label = str(class with the highest probability)
    classifier without it           label = str(predict()), score = that value if numeric else None
    regressor                       score = predict(), label = None

Feature names come from the estimator's `feature_names_in_` (set when it was fitted on a pandas
DataFrame); otherwise from a sidecar JSON list `<file>.features.json` next to the model file.
The estimator gets NaN for missing features; if it cannot handle NaN it raises and the worker
fails the affected records.

joblib files are pickles: loading one runs code from it. Load only files you trust.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.core.errors import ModelSpecError

from ._files import file_version, read_sidecar, sidecar_hint
from .base import Prediction, check_batch

__all__ = ["SklearnModel"]

_NO_NAMES_WARNING = "X does not have valid feature names"


class SklearnModel:
    """A fitted scikit-learn estimator behind the Model seam."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        estimator: Any = None,
        feature_names: Sequence[str] | None = None,
        name: str | None = None,
        version: str | None = None,
    ) -> None:
        if (path is None) == (estimator is None):
            raise ValueError("SklearnModel needs exactly one of path= or estimator=")
        self.path = path
        self.name = name if name is not None else (path.stem if path is not None else "sklearn")
        self.version = version if version is not None else ""
        self.feature_names: tuple[str, ...] = tuple(feature_names) if feature_names is not None else ()
        self._estimator: Any = estimator
        self._proba = False
        self._classes: list[str] = []
        self._is_classifier = False
        self._loaded = False

    @classmethod
    def from_estimator(
        cls,
        estimator: Any,
        *,
        feature_names: Sequence[str] | None = None,
        name: str = "sklearn",
        version: str = "sklearn-1",
    ) -> SklearnModel:
        """Wrap an in-memory fitted estimator (handy in a `module:factory` spec)."""
        return cls(estimator=estimator, feature_names=feature_names, name=name, version=version)

    @property
    def _label(self) -> str:
        return repr(str(self.path)) if self.path is not None else f"estimator {self.name!r}"

    def load(self) -> None:
        if self.path is not None:
            self._estimator = self._load_file(self.path)
            if not self.version:
                self.version = file_version(self.path)
        est = self._estimator
        if not callable(getattr(est, "predict", None)):
            raise ModelSpecError(
                f"model {self._label}: {type(est).__name__} is not a scikit-learn estimator "
                "(no predict method); save a fitted estimator or pipeline with joblib.dump"
            )
        self.feature_names = self._resolve_feature_names(est)
        self._proba = callable(getattr(est, "predict_proba", None)) and hasattr(est, "classes_")
        self._is_classifier = hasattr(est, "classes_")
        self._classes = [str(c) for c in getattr(est, "classes_", [])]
        self._loaded = True

    @staticmethod
    def _load_file(path: Path) -> Any:
        import joblib

        try:
            return joblib.load(path)
        except Exception as err:
            raise ModelSpecError(
                f"model {str(path)!r}: joblib cannot load it ({type(err).__name__}: {err}); "
                "is it a joblib.dump of a scikit-learn estimator made with compatible library versions?"
            ) from err

    def _resolve_feature_names(self, est: Any) -> tuple[str, ...]:
        fitted = getattr(est, "feature_names_in_", None)
        from_est = tuple(str(n) for n in fitted) if fitted is not None else None
        from_sidecar = read_sidecar(self.path) if self.path is not None else None
        given = self.feature_names or None
        names = from_est or from_sidecar or given
        if names is None:
            hint = sidecar_hint(self.path) if self.path is not None else "pass feature_names="
            raise ModelSpecError(
                f"model {self._label}: the estimator has no feature_names_in_ (it was not fitted on a "
                f"DataFrame) and no feature names were given; {hint}"
            )
        for other, what in ((from_sidecar, "sidecar"), (given, "feature_names=")):
            if other is not None and from_est is not None and other != from_est:
                raise ModelSpecError(
                    f"model {self._label}: {what} feature names {list(other)} differ from the "
                    f"estimator's feature_names_in_ {list(from_est)}; fix or remove the {what}"
                )
        n_in = getattr(est, "n_features_in_", None)
        if isinstance(n_in, int | np.integer) and int(n_in) != len(names):
            raise ModelSpecError(
                f"model {self._label}: the estimator expects {int(n_in)} features but "
                f"{len(names)} feature names were given; list exactly its input columns in order"
            )
        return names

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        if not self._loaded:
            raise RuntimeError(f"model {self.name!r} used before load()")
        x = check_batch(batch, len(self.feature_names), self.name)
        if len(x) == 0:
            return []
        est = self._estimator
        with warnings.catch_warnings():
            # Fitted on a DataFrame but given an ndarray: columns are already in feature_names order.
            warnings.filterwarnings("ignore", message=_NO_NAMES_WARNING, category=UserWarning)
            if self._proba:
                proba = np.asarray(est.predict_proba(x), dtype=np.float64)
                return _from_proba(proba, self._classes)
            values = np.asarray(est.predict(x))
        return _from_values(values.reshape(len(x), -1)[:, 0], self._is_classifier)


def _from_proba(proba: np.ndarray, classes: list[str]) -> list[Prediction]:
    scores = proba[:, -1].tolist()
    labels = [classes[i] for i in proba.argmax(axis=1).tolist()] if classes else [None] * len(scores)
    return [Prediction(s, lab) for s, lab in zip(scores, labels, strict=True)]


def _from_values(values: np.ndarray, is_classifier: bool) -> list[Prediction]:
    numeric = values.dtype.kind in "biuf"
    if not is_classifier:
        if not numeric:
            raise ValueError(f"regressor returned non-numeric predictions (dtype {values.dtype})")
        return [Prediction(float(v)) for v in values.tolist()]
    if numeric:
        return [Prediction(float(v), str(v)) for v in values.tolist()]
    return [Prediction(None, str(v)) for v in values.tolist()]
