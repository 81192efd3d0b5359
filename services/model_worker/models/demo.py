"""Demo models, trained at start time on scikit-learn's bundled breast-cancer data set.

The data set (569 rows, 30 numeric features) ships with scikit-learn, so nothing is downloaded.
Feature names are the data set's names in snake_case (`DEMO_FEATURES`, e.g. "mean_radius",
"worst_concave_points").

Every demo model is a binary classifier with
    score = P(benign)            (class 1 in scikit-learn's encoding; malignant is class 0)
    label = "benign" if score > 0.5 else "malignant"
Input contract (`signature`): every feature a model reads is required, and none has a default.
Nothing is imputed: the training mean stood in for a missing feature once, and so `{"foo": 1}` got
a confident answer built from 30 invented values. Each demo model is trained on complete rows of
one data set, so a client that has one measurement of a row has all of them; a row without them
gets an error naming what is missing. The canary reads only worst_concave_points and worst_area:
those two are required, and the other 28 are declared optional (accepted, never read), so the
same request is valid for every demo model.

    demo:champion     StandardScaler + LogisticRegression                      version logreg-1
    demo:challenger   RandomForest(50 trees, depth 6)                          version forest-1
    demo:canary       depth-2 decision tree on worst_concave_points, worst_area   version stump-1
    demo:slow         champion, but sleeps RDV_DEMO_SLOW_MS ms per batch (400)  version logreg-slow-1
    demo:flaky        champion, but raises ValueError for a whole batch when any row has
                      mean_radius above the data set's 80th percentile (`flaky_rejects`)
                                                                               version logreg-flaky-1
    demo:contrarian   champion, but with the label flipped (and score 1 - score) for rows whose
                      mean_texture is above the data set's 70th percentile (`contrarian_flips`):
                      a challenger that disagrees with the champion on a known share of inputs
                                                                               version logreg-contrarian-1

Training is deterministic (fixed random_state) and cached per process, so loading several demo
models in one process trains each estimator once (all of them together take well under a second).
Scoring re-evaluates the fitted estimators in numpy (`fast.py`), with the same outputs as their
`predict_proba` at a fraction of its per-call cost.
Each factory below (`champion()`, `challenger()`, ...) returns an unloaded model, so
`services.model_worker.models.demo:champion` is also a valid `module:factory` spec.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from services.core.errors import ModelSpecError
from services.core.numbers import ascii_float
from services.core.signatures import FeatureSpec, Signature

from .base import Prediction, check_batch
from .fast import LogisticScorer, TreeScorer

__all__ = [
    "DEMO_FEATURES",
    "DEMO_LABELS",
    "DEMO_MODELS",
    "SLOW_MS_ENV",
    "DemoModel",
    "canary",
    "challenger",
    "champion",
    "contrarian",
    "contrarian_flips",
    "contrarian_threshold",
    "demo_data",
    "demo_estimator",
    "demo_rows",
    "demo_signature",
    "flaky",
    "flaky_rejects",
    "flaky_threshold",
    "slow",
]

DEMO_LABELS: tuple[str, str] = ("malignant", "benign")  # index = scikit-learn class
SLOW_MS_ENV = "RDV_DEMO_SLOW_MS"
_DEFAULT_SLOW_MS = 400.0
_MOST_SLOW_MS = 3_600_000.0  # an hour
_CANARY_FEATURES = ("worst_concave_points", "worst_area")
_FLAKY_FEATURE = "mean_radius"
_FLAKY_PERCENTILE = 80.0
_CONTRARIAN_FEATURE = "mean_texture"
_CONTRARIAN_PERCENTILE = 70.0
_SEED = 0

# One scorer maps a NaN-free float64 batch (n, 30) to P(benign) per row.
_Scorer = Callable[[np.ndarray], np.ndarray]


@functools.cache
def _dataset() -> tuple[np.ndarray, np.ndarray]:
    rows = _bundled_rows()
    x = np.array([row[:-1] for row in rows], dtype=np.float64)
    x.setflags(write=False)
    y = np.array([row[-1] for row in rows], dtype=np.int64)
    y.setflags(write=False)
    return x, y


def _bundled_rows() -> list[list[float]]:
    """The data set's rows (30 features, then the class), read from the CSV file scikit-learn ships.

    Read directly: `sklearn.datasets` costs ≈ 2 s of CPU to import on a small machine, and the
    demo's load generator (which needs rows, not scikit-learn) paid it before its first request.
    If a scikit-learn release moves the file, `load_breast_cancer` is the fallback (a unit test
    checks that the file is found and gives the same values)."""
    path = bundled_csv()
    if path is None:
        from sklearn.datasets import load_breast_cancer

        data: Any = load_breast_cancer()
        targets = data.target.tolist()
        return [[*features, float(targets[i])] for i, features in enumerate(data.data.tolist())]
    with path.open(newline="") as lines:
        next(lines)  # "569,30,malignant,benign": rows, features, class names
        return [[float(value) for value in row] for row in csv.reader(lines)]


def bundled_csv() -> Path | None:
    """scikit-learn's copy of the breast-cancer data set, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder, "datasets", "data", "breast_cancer.csv")
        if path.is_file():
            return path
    return None


def demo_data() -> tuple[np.ndarray, np.ndarray]:
    """The data set as (X, y): X float64 (569, 30) in `DEMO_FEATURES` order, y 1 = benign, 0 = malignant.

    Both arrays are read-only and shared; copy them before modifying.
    """
    return _dataset()


# Kept literal (and checked against the data set by the tests) so importing this module is cheap.
DEMO_FEATURES: tuple[str, ...] = (
    "mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness",
    "mean_compactness", "mean_concavity", "mean_concave_points", "mean_symmetry",
    "mean_fractal_dimension", "radius_error", "texture_error", "perimeter_error", "area_error",
    "smoothness_error", "compactness_error", "concavity_error", "concave_points_error",
    "symmetry_error", "fractal_dimension_error", "worst_radius", "worst_texture", "worst_perimeter",
    "worst_area", "worst_smoothness", "worst_compactness", "worst_concavity", "worst_concave_points",
    "worst_symmetry", "worst_fractal_dimension",
)  # fmt: skip


def demo_rows(n: int, seed: int = 0) -> list[dict[str, float]]:
    """`n` feature dicts drawn from the data set with replacement (any n works), reproducible by seed."""
    if n < 0:
        raise ValueError(f"demo_rows: n must be >= 0, got {n}")
    x, _ = _dataset()
    idx = np.random.default_rng(seed).integers(0, len(x), size=n)
    names = DEMO_FEATURES
    return [dict(zip(names, values, strict=True)) for values in x[idx].tolist()]


def _column(name: str) -> int:
    return DEMO_FEATURES.index(name)


@functools.cache
def demo_estimator(kind: str) -> Any:
    """The fitted scikit-learn estimator behind a demo scorer: "champion" (a StandardScaler +
    LogisticRegression pipeline), "challenger" (a random forest) or "canary" (a depth-2 tree on
    `_CANARY_FEATURES`, in that column order). Shared and cached: do not modify it."""
    x, y = _dataset()
    if kind == "champion":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=_SEED)).fit(x, y)
    if kind == "challenger":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=50, max_depth=6, random_state=_SEED).fit(x, y)
    if kind == "canary":
        from sklearn.tree import DecisionTreeClassifier

        cols = [_column(name) for name in _CANARY_FEATURES]
        return DecisionTreeClassifier(max_depth=2, random_state=_SEED).fit(x[:, cols], y)
    raise ValueError(f"no demo estimator {kind!r}")


@functools.cache
def _champion_scorer() -> _Scorer:
    return LogisticScorer(demo_estimator("champion"))


@functools.cache
def _challenger_scorer() -> _Scorer:
    return TreeScorer(demo_estimator("challenger").estimators_)


@functools.cache
def _canary_scorer() -> _Scorer:
    return TreeScorer([demo_estimator("canary")], columns=[_column(name) for name in _CANARY_FEATURES])


@functools.cache
def flaky_threshold() -> float:
    """The flaky model refuses rows whose mean_radius is above this (the 80th percentile)."""
    x, _ = _dataset()
    return float(np.percentile(x[:, _column(_FLAKY_FEATURE)], _FLAKY_PERCENTILE))


def flaky_rejects(row: Mapping[str, float]) -> bool:
    """True when demo:flaky refuses this row (mean_radius above the threshold; missing never is)."""
    value = row.get(_FLAKY_FEATURE)
    return value is not None and float(value) > flaky_threshold()


@functools.cache
def contrarian_threshold() -> float:
    """demo:contrarian flips rows whose mean_texture is above this (the 70th percentile)."""
    x, _ = _dataset()
    return float(np.percentile(x[:, _column(_CONTRARIAN_FEATURE)], _CONTRARIAN_PERCENTILE))


def contrarian_flips(row: Mapping[str, float]) -> bool:
    """True when demo:contrarian contradicts the champion on this row (a row without mean_texture is
    not scored at all: the feature is required)."""
    value = row.get(_CONTRARIAN_FEATURE)
    return value is not None and float(value) > contrarian_threshold()


def _to_predictions(scores: np.ndarray) -> list[Prediction]:
    values = scores.tolist()  # one numpy call; the labels are compared in Python (docs/benchmarks.md)
    return [Prediction(score, DEMO_LABELS[score > 0.5]) for score in values]


def demo_signature(read: tuple[str, ...] = DEMO_FEATURES) -> Signature:
    """All 30 demo features: those the model reads are required, the rest optional and unused."""
    return Signature(tuple(FeatureSpec(name, required=name in read) for name in DEMO_FEATURES))


class DemoModel:
    """A demo classifier: P(benign) from a cached, trained scikit-learn estimator."""

    def __init__(
        self, name: str, version: str, scorer: Callable[[], _Scorer], reads: tuple[str, ...] = DEMO_FEATURES
    ) -> None:
        self.name = name
        self.version = version
        self.feature_names: tuple[str, ...] = DEMO_FEATURES
        self.signature = demo_signature(reads)
        self._reads = np.array([_column(n) for n in reads], dtype=np.intp)
        self._reads_all = reads == DEMO_FEATURES
        self._make_scorer = scorer
        self._scorer: _Scorer | None = None

    def load(self) -> None:
        self._scorer = self._make_scorer()

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        if self._scorer is None:
            raise RuntimeError(f"model {self.name!r} used before load()")
        x = check_batch(batch, len(self.feature_names), self.name)
        if len(x) == 0:
            return []
        read = x if self._reads_all else x[:, self._reads]
        if not np.isfinite(read).all():
            # The worker checks every row against `signature` first; this guards direct callers.
            raise ValueError(f"model {self.name!r}: a feature it reads is missing (NaN) or not finite")
        return _to_predictions(self._scorer(x))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r})"


class SlowModel(DemoModel):
    """The champion, sleeping `RDV_DEMO_SLOW_MS` milliseconds (read at load, default 400) per batch."""

    def __init__(self, name: str = "slow", version: str = "logreg-slow-1") -> None:
        super().__init__(name, version, _champion_scorer)
        self.delay_s = _DEFAULT_SLOW_MS / 1000.0

    def load(self) -> None:
        raw = os.environ.get(SLOW_MS_ENV, "").strip()
        if raw:
            try:
                ms = ascii_float(raw)
            except ValueError:
                ms = -1.0
            # An hour at most: 1e20 passed, and every batch's sleep raised OverflowError, each row
            # answered an error that named no variable (a review).
            if not 0.0 <= ms <= _MOST_SLOW_MS:
                raise ModelSpecError(f"demo:slow: {SLOW_MS_ENV}={raw!r} is not a number of milliseconds from 0 to "
                                     f"{_MOST_SLOW_MS:.0f}; fix or unset it")
            self.delay_s = ms / 1000.0
        super().load()

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        time.sleep(self.delay_s)
        return super().predict(batch)


class FlakyModel(DemoModel):
    """The champion, but it raises ValueError for the whole batch if any row has `flaky_rejects`."""

    def __init__(self, name: str = "flaky", version: str = "logreg-flaky-1") -> None:
        super().__init__(name, version, _champion_scorer)
        self.threshold = float("nan")
        self._col = _column(_FLAKY_FEATURE)

    def load(self) -> None:
        self.threshold = flaky_threshold()
        super().load()

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        x = check_batch(batch, len(self.feature_names), self.name)
        values = x[:, self._col]
        bad = values > self.threshold  # NaN (missing) compares False: never refused
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(
                f"flaky model: refuses inputs with {_FLAKY_FEATURE} > {self.threshold:.4g} "
                f"({int(bad.sum())} of {len(x)} rows; row {first} has {values[first]:.4g})"
            )
        return super().predict(x)


class ContrarianModel(DemoModel):
    """The champion, contradicted where `contrarian_flips` holds: label flipped, score 1 - score.

    The flip is applied to the label directly (not re-derived from the flipped score), so the
    disagreement with the champion is exactly the share of rows the public rule selects; that is
    what lets a test predict the paired agreement of a live comparison.
    """

    def __init__(self, name: str = "contrarian", version: str = "logreg-contrarian-1") -> None:
        super().__init__(name, version, _champion_scorer)
        self.threshold = float("nan")
        self._col = _column(_CONTRARIAN_FEATURE)

    def load(self) -> None:
        self.threshold = contrarian_threshold()
        super().load()

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        x = check_batch(batch, len(self.feature_names), self.name)
        predictions = super().predict(x)
        flips = np.nan_to_num(x[:, self._col], nan=-np.inf) > self.threshold
        malignant_label, benign_label = DEMO_LABELS
        flipped = {benign_label: malignant_label, malignant_label: benign_label}
        return [
            Prediction(None if p.score is None else 1.0 - p.score, flipped.get(p.label or "", p.label))
            if flip else p
            for p, flip in zip(predictions, flips.tolist(), strict=True)
        ]


def champion() -> DemoModel:
    return DemoModel("champion", "logreg-1", _champion_scorer)


def challenger() -> DemoModel:
    return DemoModel("challenger", "forest-1", _challenger_scorer)


def canary() -> DemoModel:
    return DemoModel("canary", "stump-1", _canary_scorer, reads=_CANARY_FEATURES)


def slow() -> DemoModel:
    return SlowModel()


def flaky() -> DemoModel:
    return FlakyModel()


def contrarian() -> DemoModel:
    return ContrarianModel()


DEMO_MODELS: Mapping[str, Callable[[], DemoModel]] = {
    "champion": champion,
    "challenger": challenger,
    "canary": canary,
    "slow": slow,
    "flaky": flaky,
    "contrarian": contrarian,
}
