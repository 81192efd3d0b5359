"""Unit tests for the model seam, the spec loader and the demo models (no Kafka needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import skops.io as skops_io
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LinearRegression, LogisticRegression

from services.core.errors import ConfigError, ModelSpecError
from services.model_worker.models import (
    DEMO_FEATURES,
    Model,
    Prediction,
    demo_rows,
    features_to_matrix,
    load_model,
)
from services.model_worker.models import demo as demo_mod
from services.model_worker.models.demo import DEMO_LABELS, demo_data, flaky_rejects, flaky_threshold
from services.model_worker.models.sklearn_model import SklearnModel
from services.model_worker.worker import score_batch

DEMO_VERSIONS = {
    "champion": "logreg-1",
    "challenger": "forest-1",
    "canary": "stump-1",
    "slow": "logreg-slow-1",
    "flaky": "logreg-flaky-1",
}


@pytest.fixture(autouse=True)
def _fast_slow_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDV_DEMO_SLOW_MS", "1")


def _labels(preds: list[Prediction]) -> np.ndarray:
    return np.array([p.label for p in preds])


def _scores(preds: list[Prediction]) -> np.ndarray:
    return np.array([p.score for p in preds], dtype=np.float64)


# --- the seam -----------------------------------------------------------------------------------


def test_features_to_matrix_orders_columns_and_marks_missing_as_nan() -> None:
    rows: list[dict[str, float | None]] = [
        {"b": 2.0, "a": 1.0, "extra": 9.0},
        {"a": 3.0},
        {"a": None, "b": 4},
        {},
    ]
    m = features_to_matrix(rows, ("a", "b"))
    assert m.dtype == np.float64
    assert m.shape == (4, 2)
    np.testing.assert_array_equal(m, [[1.0, 2.0], [3.0, np.nan], [np.nan, 4.0], [np.nan, np.nan]])
    assert features_to_matrix([], ("a", "b")).shape == (0, 2)
    np.testing.assert_array_equal(features_to_matrix([{"a": 5.0}], ("a",)), [[5.0]])


def test_demo_features_are_the_data_set_names_in_snake_case() -> None:
    expected = tuple(n.replace(" ", "_") for n in load_breast_cancer().feature_names)
    assert expected == DEMO_FEATURES
    assert len(DEMO_FEATURES) == 30
    assert {"mean_radius", "worst_concave_points"} <= set(DEMO_FEATURES)


def test_demo_data_read_from_the_bundled_file_is_load_breast_cancer_to_the_bit() -> None:
    # A scikit-learn release that moves the file would silently bring back the slow import.
    assert demo_mod.bundled_csv() is not None
    data = load_breast_cancer()
    x, y = demo_data()
    assert x.dtype == np.float64 and x.shape == (569, 30) and x.tobytes() == np.asarray(data.data).tobytes()
    assert y.tolist() == data.target.tolist()


def test_demo_data_falls_back_to_load_breast_cancer_without_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_mod, "bundled_csv", lambda: None)
    fallback = demo_mod._bundled_rows()
    monkeypatch.undo()
    assert fallback == demo_mod._bundled_rows()


def test_demo_rows_do_not_import_sklearn() -> None:
    code = ("import sys; from services.model_worker.models import demo_rows; demo_rows(5); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_demo_rows_are_reproducible_rows_of_the_data_set() -> None:
    rows = demo_rows(1000, seed=3)
    assert len(rows) == 1000
    assert all(tuple(r) == DEMO_FEATURES for r in rows)
    assert all(type(v) is float for v in rows[0].values())
    assert rows == demo_rows(1000, seed=3)
    assert rows[:20] != demo_rows(20, seed=4)
    x, _ = demo_data()
    known = {tuple(r) for r in x.tolist()}
    assert all(tuple(r.values()) in known for r in rows)
    assert demo_rows(0) == []


# --- demo models --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DEMO_VERSIONS))
def test_each_demo_model_loads_and_predicts_sensibly(name: str) -> None:
    model = load_model(f"demo:{name}")
    assert isinstance(model, Model)
    assert model.name == name
    assert model.version == DEMO_VERSIONS[name]
    assert model.feature_names == DEMO_FEATURES
    rows = [r for r in demo_rows(200, seed=1) if not flaky_rejects(r)]
    preds = model.predict(features_to_matrix(rows, model.feature_names))
    assert len(preds) == len(rows)
    scores = _scores(preds)
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert set(_labels(preds)) <= set(DEMO_LABELS)
    # label and score agree: score = P(benign)
    np.testing.assert_array_equal(_labels(preds) == "benign", scores > 0.5)
    assert model.predict(np.empty((0, len(DEMO_FEATURES)))) == []


def test_demo_models_are_deterministic_across_instances() -> None:
    rows = features_to_matrix(demo_rows(50, seed=2), DEMO_FEATURES)
    for name in ("champion", "challenger", "canary"):
        assert load_model(f"demo:{name}").predict(rows) == load_model(f"demo:{name}").predict(rows)


def test_champion_is_accurate_and_benign_is_the_positive_class() -> None:
    x, y = demo_data()
    preds = load_model("demo:champion").predict(x)
    accuracy = float(np.mean(_labels(preds) == np.array(DEMO_LABELS)[y]))
    assert accuracy > 0.9
    # score = P(benign) = P(class 1): high for benign rows, low for malignant ones
    scores = _scores(preds)
    assert scores[y == 1].mean() > 0.8 > 0.2 > scores[y == 0].mean()


def test_challenger_disagrees_with_champion_on_a_few_rows() -> None:
    x, y = demo_data()
    champion = _labels(load_model("demo:champion").predict(x))
    challenger_labels = _labels(load_model("demo:challenger").predict(x))
    frac = float(np.mean(champion != challenger_labels))
    assert 0.0 < frac < 0.2
    assert np.mean(challenger_labels == np.array(DEMO_LABELS)[y]) > 0.9


def test_canary_is_a_reasonable_but_simpler_model() -> None:
    x, y = demo_data()
    preds = load_model("demo:canary").predict(x)
    assert np.mean(_labels(preds) == np.array(DEMO_LABELS)[y]) > 0.85
    assert len(set(_scores(preds).tolist())) <= 4  # a depth-2 tree has at most four leaves


def test_missing_features_are_an_error_never_imputed() -> None:
    model = load_model("demo:champion")
    rows = demo_rows(10, seed=5)
    for r in rows:
        del r["mean_texture"], r["worst_area"]
    results = score_batch(model, rows)
    assert all(r.prediction is None and r.error == "missing: mean_texture, worst_area" for r in results)
    with pytest.raises(ValueError, match="missing"):  # a direct caller's NaN is refused as well
        model.predict(features_to_matrix(rows, model.feature_names))


def test_a_model_that_calls_sys_exit_fails_its_rows_not_the_worker() -> None:
    """SystemExit is no Exception: a model's sys.exit() (or an argparse inside it) ended the worker,
    and its restart read the batch, and ended, again (a review)."""
    champion = load_model("demo:champion")

    class Exits:
        name, version, feature_names, signature = "exits", "1", champion.feature_names, None

        def predict(self, matrix: Any) -> list[Any]:
            if (matrix[:, 0] > 15).any():
                raise SystemExit(2)
            return champion.predict(matrix)

    rows = demo_rows(20, seed=8)
    results = score_batch(Exits(), rows)  # type: ignore[arg-type]
    assert [r.error for r in results] == ["SystemExit: 2" if r["mean_radius"] > 15 else None for r in rows]
    assert any(r.error for r in results) and any(r.error is None for r in results)


@pytest.mark.parametrize("escaping", [GeneratorExit, "cancelled"])
def test_a_model_raising_any_base_exception_fails_its_rows_not_the_worker(escaping: Any) -> None:
    """asyncio's CancelledError (a model using asyncio inside) or GeneratorExit is no Exception: it
    left the batch, ended the worker, and its restart read the batch and ended again (a review)."""
    import asyncio

    raised = asyncio.CancelledError if escaping == "cancelled" else escaping
    champion = load_model("demo:champion")

    class Escapes:
        name, version, feature_names, signature = "escapes", "1", champion.feature_names, None

        def predict(self, matrix: Any) -> list[Any]:
            if (matrix[:, 0] > 15).any():
                raise raised()
            return champion.predict(matrix)

    rows = demo_rows(20, seed=8)
    results = score_batch(Escapes(), rows)  # type: ignore[arg-type]
    assert [r.error is not None for r in results] == [r["mean_radius"] > 15 for r in rows]
    assert all(r.error.startswith(raised.__name__) for r in results if r.error)
    assert any(r.error is None for r in results)


def test_outputs_that_count_rows_but_iterate_otherwise_fail_the_batch_not_the_worker() -> None:
    """A DataFrame's len() counts its rows and it iterates its columns: fewer outputs than rows
    reached the Score writer's zip, and the worker ended at every restart (a review)."""
    champion = load_model("demo:champion")

    class Frame:
        def __init__(self, rows: int) -> None:
            self.rows = rows

        def __len__(self) -> int:
            return self.rows

        def __iter__(self) -> Any:
            return iter(["score", "label"])  # its columns

    class FrameModel:
        name, version, feature_names, signature = "frame", "1", champion.feature_names, None

        def predict(self, matrix: Any) -> Any:
            return Frame(len(matrix))

    results = score_batch(FrameModel(), demo_rows(5, seed=3))  # type: ignore[arg-type]
    assert len(results) == 5 and all(r.prediction is None for r in results)
    assert [r.error for r in results[:1]] == ["ValueError: model returned over 1 outputs for 1 inputs"]


def test_wrong_batch_shape_is_a_value_error() -> None:
    model = load_model("demo:champion")
    with pytest.raises(ValueError, match=r"shape \(n, 30\)"):
        model.predict(np.zeros((3, 29)))


def test_flaky_raises_exactly_when_flaky_rejects_says_so() -> None:
    flaky = load_model("demo:flaky")
    champion = load_model("demo:champion")
    rows = demo_rows(300, seed=7)
    rejected = [flaky_rejects(r) for r in rows]
    assert 0.1 < sum(rejected) / len(rows) < 0.3  # about 20 %
    for row, expect_error in zip(rows, rejected, strict=True):
        batch = features_to_matrix([row], DEMO_FEATURES)
        if expect_error:
            with pytest.raises(ValueError, match=r"^flaky model: refuses inputs with mean_radius > "):
                flaky.predict(batch)
        else:
            assert flaky.predict(batch) == champion.predict(batch)
    # a batch fails as a whole when any of its rows is refused
    with pytest.raises(ValueError, match="flaky model"):
        flaky.predict(features_to_matrix(rows, DEMO_FEATURES))
    good = [r for r, bad in zip(rows, rejected, strict=True) if not bad]
    assert len(flaky.predict(features_to_matrix(good, DEMO_FEATURES))) == len(good)
    # the rule is public and stable
    assert flaky_rejects({"mean_radius": flaky_threshold() + 0.01})
    assert not flaky_rejects({"mean_radius": flaky_threshold()})
    assert not flaky_rejects({})


def test_slow_predicts_like_the_champion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDV_DEMO_SLOW_MS", "2")
    slow = load_model("demo:slow")
    batch = features_to_matrix(demo_rows(20), DEMO_FEATURES)
    assert slow.predict(batch) == load_model("demo:champion").predict(batch)


@pytest.mark.parametrize("delay", ["soon", "\u0665\u0660", "nan", "-1", "1e20"])  # words, digits not ASCII (fifty)
def test_slow_rejects_a_bad_delay(monkeypatch: pytest.MonkeyPatch, delay: str) -> None:
    monkeypatch.setenv("RDV_DEMO_SLOW_MS", delay)
    with pytest.raises(ModelSpecError, match="RDV_DEMO_SLOW_MS"):
        load_model("demo:slow")


# --- scikit-learn files: skops (safe) and joblib/pickle (only when trusted) -----------------------


def _save(est: object, path: Path) -> None:
    if path.suffix == ".skops":
        skops_io.dump(est, path)
    else:
        joblib.dump(est, path)


def _load(path: Path) -> Model:
    return load_model(str(path), trust_model_file=path.suffix != ".skops")


def _tiny_classifier() -> tuple[LogisticRegression, np.ndarray, tuple[str, ...]]:
    x, y = demo_data()
    names = ("mean_radius", "mean_texture", "worst_area")
    cols = [DEMO_FEATURES.index(n) for n in names]
    est = LogisticRegression(max_iter=2000).fit(x[:, cols], y)
    return est, x[:, cols], names


@pytest.mark.parametrize("suffix", [".skops", ".joblib"])
def test_file_round_trip_with_feature_names_in(tmp_path: Path, suffix: str) -> None:
    est, x, names = _tiny_classifier()
    expected_scores, expected_labels = est.predict_proba(x)[:, 1], [str(c) for c in est.predict(x)]
    # What fitting on a DataFrame records (pandas is not a dependency here).
    est.feature_names_in_ = np.array(names, dtype=object)
    path = tmp_path / f"tiny{suffix}"
    _save(est, path)

    model = _load(path)
    assert model.feature_names == names
    assert model.name == "tiny"
    assert model.version.startswith("tiny-") and len(model.version) == len("tiny-") + 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the "no valid feature names" warning must not leak
        preds = model.predict(x)
    np.testing.assert_allclose(_scores(preds), expected_scores)
    np.testing.assert_array_equal(_labels(preds), expected_labels)


@pytest.mark.parametrize("suffix", [".skops", ".pkl"])
def test_file_feature_names_from_sidecar(tmp_path: Path, suffix: str) -> None:
    est, x, names = _tiny_classifier()
    path = tmp_path / f"tiny{suffix}"
    _save(est, path)
    with pytest.raises(ModelSpecError, match=rf"tiny\{suffix}\.features\.json"):
        _load(path)
    (tmp_path / f"tiny{suffix}.features.json").write_text(json.dumps(list(names)))
    model = _load(path)
    assert model.feature_names == names
    np.testing.assert_allclose(_scores(model.predict(x)), est.predict_proba(x)[:, 1])


def test_joblib_sidecar_must_match_the_estimator(tmp_path: Path) -> None:
    est, _, _ = _tiny_classifier()
    path = tmp_path / "m.skops"
    _save(est, path)
    (tmp_path / "m.skops.features.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(ModelSpecError, match="expects 3 features"):
        _load(path)
    (tmp_path / "m.skops.features.json").write_text("{not json")
    with pytest.raises(ModelSpecError, match="JSON list"):
        _load(path)
    (tmp_path / "m.skops.features.json").write_text(json.dumps(["a", "b", "a"]))
    with pytest.raises(ModelSpecError, match="more than once: a"):
        _load(path)


def test_joblib_regressor_gives_scores_without_labels(tmp_path: Path) -> None:
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    est = LinearRegression().fit(x, x.sum(axis=1))
    path = tmp_path / "reg.joblib"
    joblib.dump(est, path)
    (tmp_path / "reg.features.json").write_text(json.dumps(["u", "v"]))  # the stem form works too
    preds = _load(path).predict(x)
    assert all(p.label is None for p in preds)
    np.testing.assert_allclose(_scores(preds), x.sum(axis=1))


def test_joblib_file_that_is_not_an_estimator(tmp_path: Path) -> None:
    path = tmp_path / "junk.joblib"
    joblib.dump({"not": "a model"}, path)
    with pytest.raises(ModelSpecError, match="not a scikit-learn estimator"):
        _load(path)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x00not a pickle")
    with pytest.raises(ModelSpecError, match="joblib cannot load it"):
        _load(garbage)
    junk_skops = tmp_path / "junk.skops"
    junk_skops.write_bytes(b"not a zip file")
    with pytest.raises(ModelSpecError, match="skops cannot read it"):
        _load(junk_skops)


# --- module:factory -----------------------------------------------------------------------------


class _ConstantModel:
    def __init__(self) -> None:
        self.name = "constant"
        self.version = "const-1"
        self.feature_names: tuple[str, ...] = ("x",)
        self.loaded = False

    def load(self) -> None:
        self.loaded = True

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        return [Prediction(0.5, "maybe") for _ in range(len(batch))]


def test_module_factory_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("rdv_test_models")
    module.make = _ConstantModel  # type: ignore[attr-defined]
    module.broken = lambda: {"no": "predict"}  # type: ignore[attr-defined]
    module.needs_args = lambda path: _ConstantModel()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rdv_test_models", module)

    model = load_model("rdv_test_models:make")
    assert isinstance(model, _ConstantModel) and model.loaded
    assert model.predict(np.zeros((2, 1))) == [Prediction(0.5, "maybe")] * 2

    with pytest.raises(ModelSpecError, match=r"lacks .*predict"):
        load_model("rdv_test_models:broken")
    with pytest.raises(ModelSpecError, match="no arguments"):
        load_model("rdv_test_models:needs_args")
    with pytest.raises(ModelSpecError, match="has no attribute 'missing'"):
        load_model("rdv_test_models:missing")


def test_a_factory_models_feature_names_may_be_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """A list was refused ("must be a non-empty tuple ... got ['x']"), the README asking only for feature_names."""
    from services.model_worker.models.base import model_signature

    listed, empty = _ConstantModel(), _ConstantModel()
    listed.feature_names, empty.feature_names = ["x", "y"], []  # type: ignore[assignment]
    module = types.ModuleType("rdv_test_listed")
    module.listed, module.empty = (lambda: listed), (lambda: empty)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rdv_test_listed", module)
    model = load_model("rdv_test_listed:listed")
    assert model_signature(model).names == ("x", "y")
    assert features_to_matrix([{"x": 1.0, "y": 2.0}], model.feature_names).tolist() == [[1.0, 2.0]]
    with pytest.raises(ModelSpecError, match=r"non-empty tuple or list of distinct strings after load\(\), got \[\]"):
        load_model("rdv_test_listed:empty")


def test_module_factory_spec_for_a_demo_factory() -> None:
    model = load_model("services.model_worker.models.demo:champion")
    assert (model.name, model.version) == ("champion", "logreg-1")
    assert demo_mod.champion is not None


def test_sklearn_model_from_estimator_satisfies_the_seam() -> None:
    est, x, names = _tiny_classifier()
    model = SklearnModel.from_estimator(est, feature_names=names, name="tiny", version="tiny-1")
    model.load()
    assert isinstance(model, Model)
    np.testing.assert_allclose(_scores(model.predict(x)), est.predict_proba(x)[:, 1])


# --- errors -------------------------------------------------------------------------------------


def test_unknown_demo_lists_the_known_ones() -> None:
    with pytest.raises(ModelSpecError) as info:
        load_model("demo:nope")
    message = str(info.value)
    assert "demo:nope" in message
    for name in DEMO_VERSIONS:
        assert f"demo:{name}" in message
    assert isinstance(info.value, ConfigError)


def test_missing_file(tmp_path: Path) -> None:
    for suffix in (".joblib", ".pkl", ".onnx"):
        spec = str(tmp_path / f"absent{suffix}")
        with pytest.raises(ModelSpecError, match="no such file") as info:
            load_model(spec)
        assert spec in str(info.value)


def test_bad_module() -> None:
    with pytest.raises(ModelSpecError, match="cannot import module 'no_such_module_rdv'"):
        load_model("no_such_module_rdv:factory")


def test_unrecognised_spec() -> None:
    for spec in ("", "champion", "model.h5"):
        with pytest.raises(ModelSpecError, match="demo:<name>"):
            load_model(spec)


def test_onnx_without_onnxruntime_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really onnx")
    with pytest.raises(ModelSpecError) as info:
        load_model(str(path))
    message = str(info.value)
    assert "model.onnx" in message
    assert "pip install 'rendezvous-serving[onnx]'" in message


def _onnx_of(model: Any, rows: np.ndarray, tmp_path: Path, name: str, options: dict[int, Any] | None = None) -> Path:
    """A scikit-learn model exported by skl2onnx, as users export theirs (a classifier's
    probabilities as ZipMap's {class: probability} maps unless told otherwise)."""
    from skl2onnx import to_onnx

    path = tmp_path / f"{name}.onnx"
    path.write_bytes(to_onnx(model, rows[:1].astype(np.float32), options=options).SerializeToString())
    return path


@pytest.mark.parametrize("zipmap", [True, False])
def test_an_onnx_classifier_scores_as_the_model_it_was_exported_from(tmp_path: Path, zipmap: bool) -> None:
    """Run by the real onnxruntime (a stand-in session replayed what the adapter expected of it)."""
    rows = np.array([[3.0, 0.0], [0.0, 3.0], [2.0, 1.0], [1.0, 2.0], [2.5, 0.5], [0.5, 2.5]])
    clf = LogisticRegression().fit(rows, [1, 0, 1, 0, 1, 0])
    path = _onnx_of(clf, rows, tmp_path, "clf", None if zipmap else {id(clf): {"zipmap": False}})
    with pytest.raises(ModelSpecError, match=r"clf\.onnx\.features\.json"):
        load_model(str(path))
    (tmp_path / "clf.onnx.features.json").write_text(json.dumps(["u", "v"]))
    model = load_model(str(path))
    assert model.feature_names == ("u", "v") and model.version.startswith("clf-")
    asked = np.array([[3.0, 0.0], [0.0, 3.0], [1.2, 1.1]])
    preds = model.predict(asked)
    assert [p.label for p in preds] == [str(c) for c in clf.predict(asked)]
    assert [p.score for p in preds] == pytest.approx(clf.predict_proba(asked)[:, 1].tolist(), abs=1e-6)


def test_an_onnx_file_renamed_over_while_it_loads_is_served_under_its_own_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime opens the path itself: the version was hashed from another read of it, so a
    file renamed into place between the two had one model served under the other's version (a
    review). Renamed over once, it is loaded again; changing at every load, it is refused."""
    import hashlib

    import onnxruntime

    rows = np.array([[1.0, 2.0], [2.0, 0.0], [0.0, 1.0], [4.0, 1.0]])
    old = _onnx_of(LinearRegression().fit(rows, rows @ np.array([1.0, 0.0])), rows, tmp_path, "old")
    new = _onnx_of(LinearRegression().fit(rows, rows @ np.array([0.0, 1.0])), rows, tmp_path, "new")
    new_digest = hashlib.sha256(new.read_bytes()).hexdigest()[:8]
    served = tmp_path / "served.onnx"
    (tmp_path / "served.onnx.features.json").write_text(json.dumps(["a", "b"]))
    real_session = onnxruntime.InferenceSession
    renames: list[Path] = []

    def renamed_over_first(path: str, *args: Any, **kwargs: Any) -> Any:
        session = real_session(path, *args, **kwargs)
        if renames:
            renames.pop().replace(served)  # a deploy renames the new file into place meanwhile
        return session

    monkeypatch.setattr(onnxruntime, "InferenceSession", renamed_over_first)
    old.replace(served)
    renames.append(new)
    model = load_model(str(served))
    assert model.version == f"served-{new_digest}", "the version of the bytes served"
    assert model.predict(np.array([[5.0, 7.0]]))[0].score == pytest.approx(7.0, abs=1e-4), "the new model"

    def always_renamed_over(path: str, *args: Any, **kwargs: Any) -> Any:
        session = real_session(path, *args, **kwargs)
        copy = tmp_path / "copy.onnx"  # a deploy loop renaming a file into place under every load
        copy.write_bytes(served.read_bytes())
        copy.replace(served)
        return session

    monkeypatch.setattr(onnxruntime, "InferenceSession", always_renamed_over)
    with pytest.raises(ModelSpecError, match="the file changed while it was loaded, 3 times"):
        load_model(str(served))


def test_an_onnx_model_whose_link_moves_on_while_it_loads_is_loaded_again_with_the_new_version_s_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ln -sfn v6 current && rm -rf v5` during a load (a ConfigMap's `..data` swap does so): the
    retry read the deleted v5 again, and a retry that followed the link paired v6's graph with v5's
    sidecar (a review)."""
    import hashlib
    import shutil

    import onnxruntime

    rows = np.array([[1.0, 2.0], [2.0, 0.0], [0.0, 1.0], [4.0, 1.0]])
    for version, weights, names in (("v5", [1.0, 0.0], ["a", "b"]), ("v6", [0.0, 1.0], ["c", "d"])):
        (tmp_path / version).mkdir()
        _onnx_of(LinearRegression().fit(rows, rows @ np.array(weights)), rows, tmp_path / version, "model")
        (tmp_path / version / "model.onnx.features.json").write_text(json.dumps(names))
    current = tmp_path / "current"
    current.symlink_to("v5")
    real_session = onnxruntime.InferenceSession
    moves = [1]

    def link_moved_on(path: str, *args: Any, **kwargs: Any) -> Any:
        session = real_session(path, *args, **kwargs)
        if moves:
            moves.pop()
            (tmp_path / "next").symlink_to("v6")
            (tmp_path / "next").replace(current)
            shutil.rmtree(tmp_path / "v5")
        return session

    monkeypatch.setattr(onnxruntime, "InferenceSession", link_moved_on)
    model = load_model(str(current / "model.onnx"))
    v6_digest = hashlib.sha256((tmp_path / "v6" / "model.onnx").read_bytes()).hexdigest()[:8]
    assert (model.feature_names, model.version) == (("c", "d"), f"model-{v6_digest}")
    assert model.predict(np.array([[5.0, 7.0]]))[0].score == pytest.approx(7.0, abs=1e-4), "v6's graph"


def test_an_onnx_regressor_scores_its_value_and_a_graph_of_other_inputs_is_refused(tmp_path: Path) -> None:
    rows = np.array([[1.0, 2.0, 0.5], [2.0, 0.0, 1.0], [0.0, 1.0, 3.0], [4.0, 1.0, 0.0]])
    reg = LinearRegression().fit(rows, rows @ np.array([0.5, -1.0, 2.0]) + 0.25)
    path = _onnx_of(reg, rows, tmp_path, "reg")
    (tmp_path / "reg.onnx.features.json").write_text(json.dumps(["a", "b", "c"]))
    preds = load_model(str(path)).predict(np.array([[1.0, 1.0, 1.0]]))
    assert preds[0].label is None and preds[0].score == pytest.approx(1.75, abs=1e-5)
    (tmp_path / "reg.onnx.features.json").write_text(json.dumps(["a", "b"]))  # one short of the graph's 3
    with pytest.raises(ModelSpecError, match=r"has shape \[None, 3\], but the sidecar lists 2 features"):
        load_model(str(path))


def test_an_onnx_model_of_a_double_input_is_fed_doubles(tmp_path: Path) -> None:
    """It loaded, then every request got an error score ("Unexpected input data type"): the
    features were always fed as float32 (a review)."""
    from skl2onnx import to_onnx

    rows = np.array([[1.0, 2.0], [2.0, 0.0], [0.0, 1.0], [4.0, 1.0]])
    reg = LinearRegression().fit(rows, rows @ np.array([0.5, -1.0]) + 0.25)
    path = tmp_path / "double.onnx"
    path.write_bytes(to_onnx(reg, rows[:1].astype(np.float64)).SerializeToString())
    (tmp_path / "double.onnx.features.json").write_text(json.dumps(["a", "b"]))
    preds = load_model(str(path)).predict(np.array([[1.0, 1.0], [1e300, 0.0]]))  # past float32's range too
    assert preds[0].score == pytest.approx(-0.25, abs=1e-9) and preds[1].score == pytest.approx(5e299)


def test_a_worker_whose_scores_the_rendezvous_would_refuse_does_not_start() -> None:
    """A model without a name, or a version over what the rendezvous joins: the worker ran, and
    every score it wrote was dead-lettered by the rendezvous (a review). One line at start now."""
    from services.core.settings import from_namespace
    from services.model_worker.models import load_model
    from services.model_worker.settings import WorkerSettings
    from services.model_worker.worker import Hosted

    with pytest.raises(ConfigError, match=r"^--version is 1100 characters long: at most 1024$"):
        from_namespace(WorkerSettings, bootstrap="127.0.0.1:1", model="demo:champion", version="v" * 1100)
    unnamed = load_model("demo:champion")
    unnamed.name = ""
    with pytest.raises(ConfigError, match="the model has no name to write on its scores"):
        Hosted(unnamed, "", "", "instance", "reject")
    long_version = load_model("demo:champion")
    long_version.version = "v" * 1100
    with pytest.raises(ConfigError, match="its version must be text of at most 1024 characters, got 1100"):
        Hosted(long_version, "", "", "instance", "reject")
    assert Hosted(load_model("demo:champion"), "", "", "instance", "reject").labels == ("champion", "logreg-1")


def long_version_model() -> Any:
    """A model (module:factory) whose own version is longer than a score may carry."""
    from services.model_worker.models import load_model

    model = load_model("demo:champion")
    model.version = "v" * 1100
    return model


def test_a_co_hosted_model_s_bad_version_is_not_said_to_be_mended_with_version() -> None:
    """--version is the --model's: the refusal of a co-hosted model's own version pointed at it (a review)."""
    from services.model_worker.settings import WorkerSettings
    from services.model_worker.worker import hosted_models

    spec = f"{__name__}:long_version_model"
    with pytest.raises(ConfigError, match=r"\(--version sets it\)$"):
        hosted_models(WorkerSettings(model=spec), "instance")
    with pytest.raises(ConfigError, match="got 1100 characters \\(a co-hosted model writes the version it gives "
                       "itself: mend it in the model, or serve it with --model and --version\\)"):
        hosted_models(WorkerSettings(model="demo:champion", co_host=(f"other={spec}",)), "instance")


# --- outputs that are not one value a row, and files compiled code reads unchecked (a review) ---


def _graph(tmp_path: Path, name: str, nodes: list[Any], input_shape: list[Any], outputs: list[tuple[str, list[Any]]],
           features: int = 4, extra: dict[str, list[int]] | None = None) -> Path:
    """A hand-made ONNX graph over X (float), with W a fixed (4, 2) weight (and `extra` int64
    constants), and its sidecar."""
    import onnx
    from onnx import TensorProto, helper

    weights = helper.make_tensor("W", TensorProto.FLOAT, [4, 2], [0.1, -0.1, 0.2, -0.2, 0.3, -0.3, 0.4, -0.4])
    constants = [helper.make_tensor(k, TensorProto.INT64, [len(v)], v) for k, v in (extra or {}).items()]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("X", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in outputs],
                              [weights, *constants])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    (tmp_path / f"{name}.onnx.features.json").write_text(json.dumps([f"f{i}" for i in range(features)]))
    return path


def _matmul(out: str = "Z") -> Any:
    from onnx import helper

    return helper.make_node("MatMul", ["X", "W"], [out])


def test_onnx_outputs_not_one_value_a_row_are_refused_at_load(tmp_path: Path) -> None:
    """Read as (n, -1): a class-major [2, n] output gave each request another request's score,
    and a two-column softmax named "output" gave P(class 0) as the score."""
    from onnx import helper

    transposed = _graph(tmp_path, "transposed", [_matmul(), helper.make_node("Transpose", ["Z"], ["probabilities"])],
                        ["N", 4], [("probabilities", [2, "N"])])
    with pytest.raises(ModelSpecError, match=r"output 'probabilities' gives shape \(2, 3\) for 3 rows, not "
                                             r"\(rows, classes\)"):
        load_model(str(transposed))
    # Three classes, class-major: (3, n) has 3 rows for a probe of 3 rows; the probe of 5 tells.
    three = [_matmul(), helper.make_node("Slice", ["Z", "starts", "ends", "axes"], ["S"]),
             helper.make_node("Concat", ["Z", "S"], ["C"], axis=1),
             helper.make_node("Transpose", ["C"], ["probabilities"])]
    three_classes = _graph(tmp_path, "three", three, ["N", 4], [("probabilities", [3, "N"])],
                           extra={"starts": [0], "ends": [1], "axes": [1]})
    with pytest.raises(ModelSpecError, match=r"output 'probabilities' gives shape \(3, 5\) for 5 rows"):
        load_model(str(three_classes))
    softmax = _graph(tmp_path, "softmax", [_matmul(), helper.make_node("Softmax", ["Z"], ["output"], axis=1)],
                     ["N", 4], [("output", ["N", 2])])
    with pytest.raises(ModelSpecError, match=r"output 'output' gives shape \(3, 2\) for 3 rows, not one value a row"):
        load_model(str(softmax))
    # Declared shapes are not trusted either way: exporters leave a fixed [1, 1] after a dynamic batch.
    for name, shape in (("declared_one", [1, 1]), ("rank_three", ["N", 1, 1])):
        nodes = [_matmul(), helper.make_node("ReduceMax", ["Z"], ["Y"], axes=[1], keepdims=1)]
        if len(shape) == 3:
            nodes[-1] = helper.make_node("ReduceMax", ["Z"], ["R"], axes=[1], keepdims=1)
            nodes.append(helper.make_node("Unsqueeze", ["R", "axis"], ["Y"]))
        path = _graph(tmp_path, name, nodes, ["N", 4], [("Y", shape)], extra={"axis": [2]})
        scores = [p.score for p in load_model(str(path)).predict(np.array([[1.0, 0, 0, 0], [0, 0, 0, 2.0]]))]
        assert scores == pytest.approx([0.1, 0.8], rel=1e-5), name


def test_an_onnx_graph_that_never_ends_is_refused_at_load_within_the_probes_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Loop of 2^62 turns held the load for good, the CLI that checks a spec too, SIGTERM unheard
    inside onnxruntime (a review)."""
    from onnx import TensorProto, helper

    from services.model_worker.models import onnx_model

    monkeypatch.setattr(onnx_model, "PROBE_TIMEOUT_S", 0.5)
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [])], [one])
    nodes = [helper.make_node("Loop", ["trip", "cond", "zero"], ["acc"], body=body), _matmul(),
             helper.make_node("ReduceMax", ["Z"], ["R"], axes=[1], keepdims=1),
             helper.make_node("Add", ["R", "acc"], ["Y"])]
    spin = _graph(tmp_path, "spin", nodes, ["N", 4], [("Y", ["N", 1])])
    import onnx

    model = onnx.load(str(spin))
    model.graph.initializer.extend([helper.make_tensor("trip", TensorProto.INT64, [], [2**62]),
                                    helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
                                    helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    onnx.save(model, str(spin))
    with pytest.raises(ModelSpecError, match=r"the graph did not run 3 rows of zeros within 0.5 s"):
        load_model(str(spin))


def test_onnx_probabilities_outside_0_and_1_fail_their_row(tmp_path: Path) -> None:
    logits = _graph(tmp_path, "logits", [_matmul("probabilities")], ["N", 4], [("probabilities", ["N", 2])])
    model = load_model(str(logits))
    row = {"f0": 1.0, "f1": 2.0, "f2": 3.0, "f3": 4.0}
    # Logits [-0.1, 0.1]: the last in [0, 1] was scored 0.1 with confidence (a review).
    inside = {"f0": -1.0, "f1": 0.0, "f2": 0.0, "f3": 0.0}
    scored = score_batch(model, [row, inside])
    assert [s.prediction for s in scored] == [None, None]
    assert [s.error for s in scored] == [
        f"ValueError: onnx output 'probabilities' gave {logits} for a row: no class probabilities (each in [0, 1]; "
        "logits?)" for logits in ([3.0, -3.0], [-0.1, 0.1])]


def test_a_sidecar_that_does_not_fit_a_symbolic_input_is_said_at_load(tmp_path: Path) -> None:
    """It loaded, then every request failed with onnxruntime's own text."""
    symbolic = _graph(tmp_path, "symbolic", [_matmul("probabilities")], ["N", "K"], [("probabilities", ["N", 2])],
                      features=3)
    with pytest.raises(ModelSpecError, match=r"rows of 3 features, as the sidecar lists them, do not run "
                                             r"through the graph"):
        load_model(str(symbolic))


def test_a_graph_of_one_row_is_run_row_by_row_and_one_of_another_fixed_batch_is_refused(tmp_path: Path) -> None:
    """A batch of 64 failed whole, then went through the worker's halving retry: 127 runs."""
    from onnx import helper

    one = _graph(tmp_path, "one", [_matmul(), helper.make_node("ReduceMax", ["Z"], ["Y"], axes=[1], keepdims=1)],
                 [1, 4], [("Y", [1, 1])])
    model = load_model(str(one))
    runs: list[int] = []
    run = model._session.run  # type: ignore[attr-defined]
    model._session.run = lambda *a, **k: (runs.append(1), run(*a, **k))[1]  # type: ignore[attr-defined]
    rows = np.arange(64 * 4, dtype=np.float64).reshape(64, 4)
    scores = [p.score for p in model.predict(rows)]
    assert len(runs) == 64
    assert scores == pytest.approx(np.abs(rows @ np.array([0.1, 0.2, 0.3, 0.4])).tolist(), rel=1e-5)  # max(s, -s)
    fixed = _graph(tmp_path, "fixed", [_matmul("Y")], [8, 4], [("Y", [8, 2])])
    with pytest.raises(ModelSpecError, match=r"takes exactly 8 rows \(shape \[8, 4\]\); export it with a dynamic "
                                             r"batch axis"):
        load_model(str(fixed))


def test_a_skops_neighbours_classifier_needs_trust(tmp_path: Path) -> None:
    """skops trusts it, but its predict_proba adds each neighbour's weight at the class index the
    file gives, in compiled code without bounds checks: a crafted index killed the worker."""
    from sklearn.neighbors import KNeighborsClassifier

    x, y = demo_data()
    path = tmp_path / "knn.skops"
    skops_io.dump(KNeighborsClassifier(metric="manhattan").fit(x, y), path)
    (tmp_path / "knn.features.json").write_text(json.dumps(list(DEMO_FEATURES)))
    assert skops_io.get_untrusted_types(file=path) == []  # skops alone would load it
    with pytest.raises(ModelSpecError, match=r"estimator \(sklearn\.neighbors\._classification\.KNeighborsClassifier\)"
                                             r" whose fitted arrays compiled code follows"):
        load_model(str(path))
    assert len(load_model(str(path), trust_model_file=True).predict(x[:3])) == 3


def test_safe_neighbours_and_multi_class_models_load_without_the_flag(tmp_path: Path) -> None:
    """NearestCentroid checks its dimensions (numpy alone), and a multi-class MLPClassifier's
    n_outputs_ is its class count: neither was to be refused (a review of the rules above)."""
    from sklearn.neighbors import NearestCentroid
    from sklearn.neural_network import MLPClassifier

    x, y = demo_data()
    path = tmp_path / "centroid.skops"
    skops_io.dump(NearestCentroid().fit(x, y), path)
    (tmp_path / "centroid.features.json").write_text(json.dumps(list(DEMO_FEATURES)))
    assert len(load_model(str(path)).predict(x[:3])) == 3
    three = np.arange(len(y)) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it does not converge in 20 iterations: irrelevant here
        mlp = MLPClassifier(max_iter=20, random_state=0).fit(x, three)
    model = SklearnModel.from_estimator(mlp, feature_names=list(DEMO_FEATURES))
    model.load()
    assert [p.label for p in model.predict(x[:4])] == [str(c) for c in mlp.predict(x[:4])]


def test_a_model_of_several_outputs_a_row_is_refused_or_fails_its_rows() -> None:
    """A multi-output classifier loaded, then failed every request with 'list indices must be
    integers or slices, not list'; a two-target regressor wrote its first target alone."""
    from sklearn.multioutput import MultiOutputClassifier

    rows = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0], [1.0, 2.0]])
    two_labels = np.array([[0, 1], [1, 0], [1, 1], [0, 0]])
    classifier = SklearnModel.from_estimator(MultiOutputClassifier(LogisticRegression()).fit(rows, two_labels),
                                             feature_names=["a", "b"])
    with pytest.raises(ModelSpecError, match="MultiOutputClassifier predicts several outputs per row"):
        classifier.load()
    regressor = SklearnModel.from_estimator(LinearRegression().fit(rows, rows * 2.0), feature_names=["a", "b"])
    regressor.load()
    results = score_batch(regressor, [{"a": 1.0, "b": 2.0}, {"a": 0.0, "b": 0.0}])
    assert all(r.prediction is None for r in results)
    assert all("predict() returned shape (1, 2) for 1 rows; a model gives one value per row" in (r.error or "")
               for r in results)


def test_a_spec_holding_a_nul_character_is_a_one_line_error() -> None:
    """Only the Python API or a config file can carry one: resolve() raised a bare ValueError."""
    with pytest.raises(ModelSpecError, match=r"a path cannot hold a NUL character"):
        load_model("a\x00b.skops")
