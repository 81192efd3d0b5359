"""Adapter for a fitted scikit-learn estimator: a `*.skops` file (safe), or a `*.joblib` / `*.pkl`
pickle (runs code when loaded: only with `trust_model_file`), or an in-memory estimator.

    classifier with predict_proba   score = probability of the last class in `classes_`
                                    (the positive class of a binary classifier),
                                    label = str(class with the highest probability)
    classifier without it           label = str(predict()), score = that value if numeric else None
    regressor                       score = predict(), label = None

Feature names come from the estimator's `feature_names_in_` (set when it was fitted on a pandas
DataFrame); otherwise from a sidecar JSON list `<file>.features.json` next to the model file.
Every feature is required unless the sidecar says otherwise (`{"name": ..., "default": 0.0}`,
or `"required": false` without a default for estimators that handle NaN themselves).

Safety: a joblib/pickle file can run any code when it is loaded, so it is refused unless
`trust_model_file` is set. A skops file is loaded by skops, which rebuilds only the types it
trusts (scikit-learn estimators, numpy, scipy, ...) and never unpickles; a skops file holding
other types is refused, naming them, unless `trust_model_file` is set. Note that skops does not
trust scikit-learn's internal `Tree` (a file could set node indices that predict() follows
without bounds checks), so tree-based models in skops need the flag too: export those to ONNX.
The same holds for estimators skops does trust whose predict() runs compiled code over the
file's arrays unchecked, so this adapter asks the flag for them: the libsvm estimators (SVC,
NuSVC, SVR, NuSVR, OneClassSVM; a file with two support vectors fewer than its counts say crashed
the worker on its first predict), the neighbours estimators that search the fitted samples
(k-neighbours and radius-neighbours ones, NearestNeighbors, LocalOutlierFactor: a k-neighbours
classifier adds each neighbour's weight at the class index its file gives, unchecked, and an
index out of range wrote past the array, so the worker died) and k-means (KMeans,
MiniBatchKMeans, BisectingKMeans: it reads as many centre columns as the input has).

A model must give one number per row: a multi-output classifier (a list of `classes_`) is
refused at load, and a regressor predicting several values per row fails its rows, naming it.

Speed: inputs the worker has checked (all finite) skip scikit-learn's finiteness check
(`assume_finite`), and a random forest or extra-trees classifier running on one job is evaluated
tree by tree without joblib's per-tree task machinery (same sums in the same order).
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from services.core.errors import ModelSpecError
from services.core.signatures import Signature

from ._files import opened_model_file, read_sidecar, resolved_model_path, sidecar_hint, stream_version
from .base import Prediction, check_batch, check_finite, check_probabilities, fits_float32
from .zip_bounds import check_entries, check_references, inflation_bound, schema_objects

__all__ = ["PICKLE_SUFFIXES", "SKOPS_SUFFIX", "TRUST_HINT", "SklearnModel", "pickle_refusal"]

_NO_NAMES_WARNING = "X does not have valid feature names"
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
SKOPS_SUFFIX = ".skops"
TRUST_HINT = "--trust-model-file (env RDV_TRUST_MODEL_FILE=1)"
_SHOWN_TYPES = 5
# Trusted by skops, but their predict() runs compiled code over the file's arrays unchecked:
# module -> the classes concerned (None: every class of the module).
_UNCHECKED: dict[str, frozenset[str]] = {
    "sklearn.svm": frozenset({"SVC", "NuSVC", "SVR", "NuSVR", "OneClassSVM"}),  # libsvm
    # Cython over the fitted samples and their class indices (ArgKminClassMode and kin).
    "sklearn.neighbors": frozenset({
        "KNeighborsClassifier", "KNeighborsRegressor", "KNeighborsTransformer", "RadiusNeighborsClassifier",
        "RadiusNeighborsRegressor", "RadiusNeighborsTransformer", "NearestNeighbors", "LocalOutlierFactor",
        "KDTree", "BallTree",
    }),
    # Cython over the centres, as many columns as the input has.
    "sklearn.cluster": frozenset({"KMeans", "MiniBatchKMeans", "BisectingKMeans"}),
}
_SCHEMA = "schema.json"  # a skops file's description of every object in it


def pickle_refusal(path: Path) -> ModelSpecError:
    """Why a pickle is not loaded without trust, and what to do instead (one line)."""
    return ModelSpecError(
        f"model {str(path)!r}: refusing to load a pickle/joblib file, because loading one runs any code it "
        f"contains; save the model with skops instead (skops.io.dump(model, {path.stem + SKOPS_SUFFIX!r})) "
        f"and serve the .skops file, or, only if you trust this file and where it came from, pass {TRUST_HINT}"
    )


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
        trust_model_file: bool = False,
        signature: Signature | None = None,
    ) -> None:
        if (path is None) == (estimator is None):
            raise ValueError("SklearnModel needs exactly one of path= or estimator=")
        self.path = path
        self.name = name if name is not None else (path.stem if path is not None else "sklearn")
        self.version = version if version is not None else ""
        self.feature_names: tuple[str, ...] = tuple(feature_names) if feature_names is not None else ()
        self.signature: Signature | None = signature
        if signature is not None and not self.feature_names:
            self.feature_names = signature.names
        self.trust_model_file = trust_model_file
        self._estimator: Any = estimator
        self._proba = False
        self._classes: list[str] = []
        self._is_classifier = False
        self._forest: list[Any] | None = None  # the trees of a forest evaluated without joblib
        self._loaded = False

    @classmethod
    def from_estimator(
        cls,
        estimator: Any,
        *,
        feature_names: Sequence[str] | None = None,
        name: str = "sklearn",
        version: str = "sklearn-1",
        signature: Signature | None = None,
    ) -> SklearnModel:
        """Wrap an in-memory fitted estimator (handy in a `module:factory` spec); `signature`
        declares optional features and defaults (default: every feature required)."""
        return cls(estimator=estimator, feature_names=feature_names, name=name, version=version, signature=signature)

    @property
    def _label(self) -> str:
        return repr(str(self.path)) if self.path is not None else f"estimator {self.name!r}"

    def load(self) -> None:
        file = None  # the file loaded: `path` through its links, as it was when the load began
        if self.path is not None:
            # Opened once: the checks, the load and the version read the same file, whatever is
            # renamed into its place meanwhile. Opened by each, a file replaced meanwhile had an
            # SVC loaded past the check of another file, and a version naming other bytes than
            # those served; read whole into memory instead, a 400 MiB model took 400 MiB more to
            # load (reviews). A file written over in place stays a writer's to time.
            file = resolved_model_path(self.path)
            with opened_model_file(file, self.path) as model_file:
                version = stream_version(self.path, model_file)
                self._estimator = self._load_file(self.path, model_file)
            if not self.version:
                self.version = version
        est = self._estimator
        if not callable(getattr(est, "predict", None)):
            raise ModelSpecError(
                f"model {self._label}: {type(est).__name__} is not a scikit-learn estimator "
                "(no predict method); save a fitted estimator or pipeline with joblib.dump"
            )
        sidecar = read_sidecar(file, self.path) if file is not None else None
        self.feature_names = self._resolve_feature_names(est, sidecar.names if sidecar else None, file)
        self.signature = sidecar or self.signature or Signature.all_required(self.feature_names)
        _check_one_output(est, self._label)
        self._proba = callable(getattr(est, "predict_proba", None)) and hasattr(est, "classes_")
        self._is_classifier = hasattr(est, "classes_")
        self._classes = [str(c) for c in getattr(est, "classes_", [])]
        self._forest = _single_job_forest(est) if self._proba else None
        self._loaded = True

    def _load_file(self, path: Path, model_file: BinaryIO) -> Any:
        if path.suffix.lower() == SKOPS_SUFFIX:
            return _load_skops(path, model_file, self.trust_model_file)
        if not self.trust_model_file:
            raise pickle_refusal(path)
        import joblib

        try:
            model_file.seek(0)
            return joblib.load(model_file)
        except Exception as err:
            raise ModelSpecError(
                f"model {str(path)!r}: joblib cannot load it ({type(err).__name__}: {err}); "
                "is it a joblib.dump of a scikit-learn estimator made with compatible library versions?"
            ) from err

    def _resolve_feature_names(self, est: Any, from_sidecar: tuple[str, ...] | None,
                               file: Path | None) -> tuple[str, ...]:
        fitted = getattr(est, "feature_names_in_", None)
        from_est = tuple(str(n) for n in fitted) if fitted is not None else None
        given = self.feature_names or None
        names = from_est or from_sidecar or given
        if names is None:
            hint = sidecar_hint(file) if file is not None else "pass feature_names="
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
        import sklearn

        finite = bool(np.isfinite(x).all())
        if not finite:
            check_finite(x, self.signature or Signature.all_required(self.feature_names), self.name)
        # Beyond float32's range, scikit-learn's own check decides: an estimator that computes in
        # float32 (trees) refuses the value, one in float64 takes it.
        finite = finite and fits_float32(x)
        if self._forest is not None and finite:
            return _from_proba(_forest_proba(self._forest, x), self._classes)
        est = self._estimator
        # NaN may only reach the estimator for optional features without a default; then
        # scikit-learn's own check stays on (an estimator that cannot take NaN says so).
        with warnings.catch_warnings(), sklearn.config_context(assume_finite=finite):
            # Fitted on a DataFrame but given an ndarray: columns are already in feature_names order.
            warnings.filterwarnings("ignore", message=_NO_NAMES_WARNING, category=UserWarning)
            if self._proba:
                proba = np.asarray(est.predict_proba(x), dtype=np.float64)
                return _from_proba(proba, self._classes)
            values = np.asarray(est.predict(x))
        return _from_values(_one_per_row(values, len(x)), self._is_classifier)

def _load_skops(path: Path, model_file: BinaryIO, trust: bool) -> Any:
    """Load a skops file (open as `model_file`); types outside skops' trusted defaults, and libsvm
    estimators, only with `trust`."""
    import skops.io as sio

    where = f"model {str(path)!r}"
    try:
        unchecked = _unchecked_types(model_file, where)  # first: it bounds the schema skops parses too
        untrusted = sio.get_untrusted_types(file=_rewound(model_file))
    except ModelSpecError:
        raise
    except Exception as err:
        raise ModelSpecError(f"{where}: skops cannot read it ({type(err).__name__}: {err}); "
                             "is it a skops.io.dump file?") from err
    if untrusted and not trust:
        raise ModelSpecError(
            f"{where}: the file holds types skops does not trust by default ({_shown(untrusted)}): loading them "
            f"is not known to be safe; review them and, only if you trust this file, pass {TRUST_HINT}"
        )
    if unchecked and not trust:
        raise ModelSpecError(
            f"{where}: the file holds an estimator ({_shown(unchecked)}) whose fitted arrays compiled code follows "
            "without checking them: a crafted file can crash the worker or write past its memory; export it to "
            f"ONNX, or, only if you trust this file, pass {TRUST_HINT}"
        )
    try:
        return sio.load(_rewound(model_file), trusted=untrusted or None)
    except Exception as err:
        raise ModelSpecError(f"{where}: skops cannot load it ({type(err).__name__}: {err}); "
                             "was it saved with compatible scikit-learn and skops versions?") from err


def _shown(types: list[str]) -> str:
    more = f" (+{len(types) - _SHOWN_TYPES} more)" if len(types) > _SHOWN_TYPES else ""
    return ", ".join(types[:_SHOWN_TYPES]) + more


def _check_one_output(est: Any, label: str) -> None:
    """A multi-output classifier (a list of `classes_`, one per output) cannot give one score a row:
    loaded, every request failed with 'list indices must be integers or slices, not list'."""
    classes = getattr(est, "classes_", None)  # not n_outputs_: a multi-class MLPClassifier's is its class count
    if classes is not None and any(np.ndim(c) > 0 for c in classes):
        raise ModelSpecError(f"model {label}: {type(est).__name__} predicts several outputs per row; a model "
                             "serves one score (or label) per request: serve one estimator per output")


# A skops file's schema.json at most, inflated: parsed whole (by skops too), a 1 MB file that
# inflated to 1 GiB took 2.3 GB of memory, and 10 MB would take ~23 GB and the OOM killer (a review).
MAX_SCHEMA_BYTES = 64 * 2**20


def _rewound(model_file: BinaryIO) -> BinaryIO:
    model_file.seek(0)
    return model_file


def _unchecked_types(model_file: BinaryIO, where: str) -> list[str]:
    """The types a skops file holds that `_UNCHECKED` names, as module.Class names; a file that
    would not fit in memory (zip_bounds.py), or whose schema is past MAX_SCHEMA_BYTES, is refused
    before any of it is kept."""
    with zipfile.ZipFile(_rewound(model_file)) as archive:
        bound = inflation_bound(model_file)
        costs = check_entries(archive, model_file, bound, where)  # first: the sizes read below are true after it
        size = archive.getinfo(_SCHEMA).file_size
        if size > MAX_SCHEMA_BYTES:
            raise ModelSpecError(f"{where}: its {_SCHEMA} inflates to {size:,} bytes (at most {MAX_SCHEMA_BYTES:,} "
                                 "are read): not a model skops.io.dump wrote")
        schema = json.loads(archive.read(_SCHEMA))
        check_references(schema, costs, bound, where, model_file)
    found: set[str] = set()
    for node in schema_objects(schema):  # every object skops describes, however deeply nested (pipelines, ensembles)
        module, name = node.get("__module__"), node.get("__class__")
        if isinstance(module, str) and isinstance(name, str) and _is_unchecked(module, name):
            found.add(f"{module}.{name}")
    return sorted(found)


def _is_unchecked(module: str, name: str) -> bool:
    for prefix, classes in _UNCHECKED.items():
        if module == prefix or module.startswith(prefix + "."):
            return name in classes
    return False


def _single_job_forest(est: Any) -> list[Any] | None:
    """The trees of a binary or multi-class forest classifier that predicts on one job, else None."""
    from sklearn.ensemble._forest import ForestClassifier

    single_job = getattr(est, "n_jobs", None) in (None, 1)
    if not isinstance(est, ForestClassifier) or not single_job or getattr(est, "n_outputs_", 1) != 1:
        return None
    return list(est.estimators_)


def _forest_proba(trees: list[Any], x: np.ndarray) -> np.ndarray:
    """The forest's predict_proba, tree after tree in order (its sums), without joblib tasks."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)  # what the forest's own input check produces
    total = np.zeros((len(x32), trees[0].n_classes_), dtype=np.float64)
    for tree in trees:
        total += tree.predict_proba(x32, check_input=False)
    total /= len(trees)
    return total


def _from_proba(proba: np.ndarray, classes: list[str]) -> list[Prediction]:
    check_probabilities(proba, "predict_proba")
    scores = proba[:, -1].tolist()
    labels = [classes[i] for i in proba.argmax(axis=1).tolist()] if classes else [None] * len(scores)
    return [Prediction(s, lab) for s, lab in zip(scores, labels, strict=True)]


def _one_per_row(values: np.ndarray, n: int) -> np.ndarray:
    """predict()'s values as one per row: a multi-target regressor's first target alone was
    written as the score, the others dropped without a word."""
    if values.ndim == 2 and values.shape == (n, 1):
        return values[:, 0]
    if values.shape != (n,):
        raise ValueError(f"predict() returned shape {values.shape} for {n} rows; a model gives one value per row "
                         "(a multi-target regressor: serve one estimator per target)")
    return values


def _from_values(values: np.ndarray, is_classifier: bool) -> list[Prediction]:
    numeric = values.dtype.kind in "biuf"
    if not is_classifier:
        if not numeric:
            raise ValueError(f"regressor returned non-numeric predictions (dtype {values.dtype})")
        return [Prediction(float(v)) for v in values.tolist()]
    if numeric:
        return [Prediction(float(v), str(v)) for v in values.tolist()]
    return [Prediction(None, str(v)) for v in values.tolist()]
