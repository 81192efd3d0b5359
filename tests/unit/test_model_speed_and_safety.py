"""Fast demo scorers equal scikit-learn; Score bytes equal the codec's; model files load only safely."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import random
import struct
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import skops.io as skops_io
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from services.core.codec import codec
from services.core.errors import ConfigError, ModelSpecError
from services.core.redaction import forget_all, never_print
from services.core.score_limits import MAX_LABEL_CHARS
from services.core.signatures import FeatureSpec, Signature
from services.model_worker.models import DEMO_FEATURES, Prediction, demo_rows, load_model
from services.model_worker.models.base import model_signature
from services.model_worker.models.demo import (
    DEMO_LABELS,
    _canary_scorer,
    _challenger_scorer,
    demo_data,
    demo_estimator,
)
from services.model_worker.models.fast import PYTHON_ROWS
from services.model_worker.models.loader import check_spec
from services.model_worker.models.sklearn_model import SklearnModel
from services.model_worker.score_writer import ScoreWriter, layout_matches
from services.model_worker.settings import WorkerSettings, model_groups
from services.model_worker.worker import Hosted, Scored, hosted_models, score_batch, score_co_hosted
from tests.model_files import ranged_logistic_model

CANARY_COLUMNS = [DEMO_FEATURES.index("worst_concave_points"), DEMO_FEATURES.index("worst_area")]


# --- the demo models equal scikit-learn's predict_proba -----------------------------------------


@pytest.mark.parametrize("name", ["champion", "challenger", "canary"])
def test_demo_scores_equal_predict_proba_on_the_whole_data_set(name: str) -> None:
    x, _ = demo_data()
    estimator = demo_estimator(name)
    expected = estimator.predict_proba(x[:, CANARY_COLUMNS] if name == "canary" else x)[:, 1]
    predictions = load_model(f"demo:{name}").predict(x)
    scores = np.array([p.score for p in predictions])
    np.testing.assert_array_equal(scores, expected)  # bit for bit, not approximately
    assert [p.label for p in predictions] == [DEMO_LABELS[int(s > 0.5)] for s in expected]


@pytest.mark.parametrize("name", ["champion", "challenger", "canary"])
def test_demo_scores_equal_predict_proba_one_row_at_a_time(name: str) -> None:
    # BLAS may round a one-row product differently from a batch, for scikit-learn as for us:
    # the fast path must equal scikit-learn at batch size 1 too.
    model, estimator = load_model(f"demo:{name}"), demo_estimator(name)
    x, _ = demo_data()
    for row in x[:40]:
        one = row[None, :]
        expected = estimator.predict_proba(one[:, CANARY_COLUMNS] if name == "canary" else one)[0, 1]
        assert model.predict(one)[0].score == expected


@pytest.mark.parametrize("name", ["challenger", "canary"])
def test_demo_trees_equal_predict_proba_in_small_batches(name: str) -> None:
    # Batches of up to fast.PYTHON_ROWS rows are walked in plain Python, larger ones in numpy:
    # both sides of that line, and the Python walk itself at every size, equal scikit-learn.
    model, estimator = load_model(f"demo:{name}"), demo_estimator(name)
    scorer = {"challenger": _challenger_scorer, "canary": _canary_scorer}[name]()
    x, _ = demo_data()
    for size in range(1, PYTHON_ROWS + 3):
        for start in range(0, 100, size):
            batch = x[start : start + size]
            read = batch[:, CANARY_COLUMNS] if name == "canary" else batch
            expected = estimator.predict_proba(read)[:, 1].tolist()
            assert [p.score for p in model.predict(batch)] == expected
            assert scorer._walk_rows(read.astype(np.float32)).tolist() == expected


def test_canary_signature_requires_only_what_it_reads() -> None:
    signature = model_signature(load_model("demo:canary"))
    assert signature.required == ("worst_area", "worst_concave_points")
    assert signature.names == DEMO_FEATURES
    assert all(f.default is None for f in signature.features)  # no demo feature is imputed
    two = {"worst_concave_points": 0.1, "worst_area": 700.0}
    assert score_batch(load_model("demo:canary"), [two])[0].prediction is not None
    assert score_batch(load_model("demo:champion"), [two])[0].error.startswith("missing: mean_radius")


# --- the generic scikit-learn adapter's shortcuts -----------------------------------------------


@pytest.mark.parametrize("forest_class", [RandomForestClassifier, ExtraTreesClassifier])
def test_forest_without_joblib_equals_predict_proba(forest_class: type) -> None:
    x, y = demo_data()
    three_classes = y + (x[:, 0] > 17).astype(int)
    for target in (y, three_classes):
        forest = forest_class(n_estimators=20, max_depth=5, random_state=1).fit(x, target)
        model = SklearnModel.from_estimator(forest, feature_names=DEMO_FEATURES)
        model.load()
        assert model._forest is not None  # the shortcut is in use
        predictions = model.predict(x)
        proba = forest.predict_proba(x)
        np.testing.assert_array_equal([p.score for p in predictions], proba[:, -1])
        assert [p.label for p in predictions] == [str(forest.classes_[i]) for i in proba.argmax(axis=1)]


def test_an_optional_feature_without_default_reaches_the_estimator_as_nan() -> None:
    x, y = demo_data()
    forest = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(x[:, :2], y)
    signature = Signature((FeatureSpec("a"), FeatureSpec("b", required=False)))
    model = SklearnModel.from_estimator(forest, signature=signature)
    model.load()
    (result,) = score_batch(model, [{"a": 14.0}])
    # Trees in scikit-learn >= 1.4 take NaN, so it answers; the shortcut stood aside for it.
    assert result.error is None and result.prediction is not None
    np.testing.assert_allclose(result.prediction.score, forest.predict_proba([[14.0, math.nan]])[0, 1])
    logreg = LogisticRegression(max_iter=2000).fit(x[:, :2], y)
    strict = SklearnModel.from_estimator(logreg, signature=signature)
    strict.load()
    (refused,) = score_batch(strict, [{"a": 14.0}])
    assert refused.prediction is None and "NaN" in (refused.error or "")  # the estimator's own check


def test_a_value_beyond_float32_is_refused_by_a_tree_model_not_scored_as_infinity() -> None:
    """Finite as float64, 1e39 is infinite as the float32 trees compute in: with their own check
    skipped (the input looked finite), forests and trees gave it a confident score."""
    x, y = demo_data()
    forest = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(x[:, :2], y)
    logreg = LogisticRegression(max_iter=2000).fit(x[:, :2], y)
    rows = [{"a": 1e39, "b": 0.0}, {"a": 14.0, "b": 0.0}]
    trees = SklearnModel.from_estimator(forest, feature_names=("a", "b"))
    linear = SklearnModel.from_estimator(logreg, feature_names=("a", "b"))
    trees.load()
    linear.load()
    with pytest.warns(RuntimeWarning, match="overflow"):  # scikit-learn's own cast, before it refuses
        refused, scored = score_batch(trees, rows)
    assert refused.prediction is None and "too large for dtype('float32')" in (refused.error or "")
    assert scored.error is None and scored.prediction is not None  # the rest of its batch is scored
    assert all(r.error is None for r in score_batch(linear, rows))  # float64 throughout: a value like any


@pytest.mark.parametrize("name", ["challenger", "canary"])
def test_a_value_beyond_float32_is_refused_by_a_demo_tree_not_scored(name: str) -> None:
    """The demo's own tree scorers checked only for NaN and infinity: 1e39 went down one side of
    every tree to a confident score (challenger 0.61, canary 0.0 'malignant')."""
    model = load_model(f"demo:{name}")
    model.load()
    x, _ = demo_data()
    rows = [dict(zip(model.feature_names, map(float, row), strict=True)) for row in x[:40]]
    for huge in (1e39, -1e39, 1e300):
        hostile = [*rows[:20], {**rows[20], "worst_area": huge}, *rows[21:]]
        results = score_batch(model, hostile)
        assert [r.error is not None for r in results] == [i == 20 for i in range(40)], huge
        assert "float32" in (results[20].error or "")
        assert [r.prediction.score for r in results if r.prediction] == [  # the rest of the batch as alone
            r.prediction.score for r in score_batch(model, rows[:20] + rows[21:]) if r.prediction]


@pytest.mark.parametrize("name", ["champion", "contrarian"])
def test_a_value_the_scaling_overflows_is_refused_by_a_demo_logistic_model_not_scored(name: str) -> None:
    """Finite, 1e307 overflowed the scaler to infinity, and expit made it a confident 0 or 1 where
    scikit-learn's predict_proba refuses the input (a review)."""
    model = load_model(f"demo:{name}")
    model.load()
    x, _ = demo_data()
    rows = [dict(zip(model.feature_names, map(float, row), strict=True)) for row in x[:30]]
    hostile = [*rows[:10], {**rows[10], "mean_fractal_dimension": 1e307}, *rows[11:]]
    with pytest.warns(RuntimeWarning, match="overflow"):  # numpy's own, before the scorer refuses
        results = score_batch(model, hostile)
    assert [r.error is not None for r in results] == [i == 10 for i in range(30)]
    assert "standard deviations from the mean the model was fitted on" in (results[10].error or "")
    assert [r.prediction.score for r in results if r.prediction] == pytest.approx([  # a matrix product's rounding
        r.prediction.score for r in score_batch(model, rows[:10] + rows[11:]) if r.prediction], rel=1e-9)


@pytest.mark.parametrize("name", ["champion", "contrarian"])
@pytest.mark.parametrize("huge", [1e308, -1e308, 1e6])
def test_a_value_far_from_anything_fitted_is_refused_by_a_demo_logistic_model_not_answered_confidently(
    name: str, huge: float
) -> None:
    """One feature of 1e308 among ordinary ones stayed finite through the scaling and was answered
    OK, a confident 0.0 (-1e308: 1.0; a review). A value within the data's range is scored."""
    model = load_model(f"demo:{name}")
    model.load()
    x, _ = demo_data()
    rows = [dict(zip(model.feature_names, map(float, row), strict=True)) for row in x[:5]]
    results = score_batch(model, [*rows[:2], {**rows[2], "mean_radius": huge}, *rows[3:]])
    assert [r.error is not None for r in results] == [False, False, True, False, False]
    assert "standard deviations from the mean" in (results[2].error or "")
    largest = float(x[:, 0].max())  # the largest mean_radius measured: scored
    assert score_batch(model, [{**rows[2], "mean_radius": largest}])[0].error is None


# --- module:factory signatures ------------------------------------------------------------------


class _WithDefaults:
    name, version = "defaults", "d-1"
    feature_names = ("a", "b")
    signature = Signature((FeatureSpec("a"), FeatureSpec("b", required=False, default=10.0)))

    def load(self) -> None:
        pass

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        return [Prediction(float(a + b)) for a, b in batch.tolist()]


class _Mismatched(_WithDefaults):
    feature_names = ("b", "a")


def test_factory_signature_gives_defaults_and_must_fit_feature_names(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("rdv_test_signatures")
    module.good = _WithDefaults  # type: ignore[attr-defined]
    module.bad = _Mismatched  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rdv_test_signatures", module)
    model = load_model("rdv_test_signatures:good")
    results = score_batch(model, [{"a": 1.0}, {"a": 1.0, "b": 2.0}, {"b": 2.0}])
    assert [r.prediction.score if r.prediction else r.error for r in results] == [11.0, 3.0, "missing: a"]
    with pytest.raises(ModelSpecError, match="same names in the same order"):
        load_model("rdv_test_signatures:bad")


def test_worker_setting_turns_on_ignoring_extras() -> None:
    settings = WorkerSettings(model="demo:champion", ignore_extra_features=True)
    model = load_model("demo:champion")
    row = {**demo_rows(1)[0], "tenant": 7.0}
    assert score_batch(model, [row])[0].error == "unknown features: tenant"
    lenient = model_signature(model, settings.extra_features())
    assert score_batch(model, [row], lenient)[0].prediction is not None
    assert WorkerSettings(model="demo:champion").extra_features() == "reject"


# --- Score bytes --------------------------------------------------------------------------------


def _record(request: dict[str, object], result: Scored, received: int, scored: int) -> dict[str, object]:
    p = result.prediction
    error = result.error[:1000] if result.error else None
    return {"request_id": request["request_id"], "model": "champion", "version": "v-é", "instance": "host-1",
            "score": p.score if p else None, "label": p.label if p else None, "error": error,
            "deadline": request["deadline"], "received_at": received, "scored_at": scored,
            "compute_ms": result.compute_ms}


def test_score_writer_bytes_equal_the_codec() -> None:
    assert layout_matches(codec("score").schema), "score.avsc changed: update score_writer.LAYOUT"
    rnd = random.Random(3)
    writer = ScoreWriter("champion", "v-é", "host-1")
    requests, results = [], []
    for i in range(500):
        requests.append({"request_id": rnd.choice(["r", "ü-✓-" * rnd.randrange(50), f"id-{i}", ""]),
                         "deadline": rnd.choice([0, 1, -1, 63, 64, -65, 2**62, -(2**63), 2**63 - 1,
                                                 1_700_000_000_000 + i])})
        prediction = rnd.choice([None, Prediction(rnd.random(), rnd.choice(["benign", None, "ß" * 200])),
                                 Prediction(None, "x"), Prediction(-0.0), Prediction(math.inf, "y")])
        error = rnd.choice([None, "boom", "é" * 3000]) if prediction is None else None
        results.append(Scored(prediction, error, rnd.choice([0.0, 0.25, 1e300])))
    values, unencodable = writer.encode_batch(requests, results, 1_700_000_000_123, 1_700_000_000_456)
    assert unencodable == []
    scores = codec("score")
    for request, result, value in zip(requests, results, values, strict=True):
        assert value == scores.encode(_record(request, result, 1_700_000_000_123, 1_700_000_000_456))


def test_score_writer_unusual_outputs_take_the_codec_path() -> None:
    writer = ScoreWriter("m", "1", "i")
    requests = [{"request_id": "a", "deadline": 5}, {"request_id": "b", "deadline": 5}]
    results = [Scored(Prediction(np.float32(0.5), "x"), None, 1.0),  # numpy scalar: the codec decides
               Scored(Prediction(0.5, 7), None, 1.0)]  # type: ignore[arg-type]  # a label that is no string
    values, unencodable = writer.encode_batch(requests, results, 1, 2)
    assert unencodable == [1]
    first, second = (codec("score").decode(v) for v in values)
    assert (first["score"], first["label"], first["error"]) == (0.5, "x", None)
    assert second["score"] is None and second["error"].startswith("model output not encodable")


def test_a_label_too_long_for_a_score_record_is_that_requests_error() -> None:
    writer = ScoreWriter("m", "1", "i")
    requests = [{"request_id": "a", "deadline": 5}, {"request_id": "b", "deadline": 5}]
    results = [Scored(Prediction(0.5, "x" * MAX_LABEL_CHARS), None, 1.0),
               Scored(Prediction(0.5, "x" * 900_000), None, 1.0)]
    values, unencodable = writer.encode_batch(requests, results, 1, 2)
    assert unencodable == [1]
    first, second = (codec("score").decode(v) for v in values)
    assert first["label"] == "x" * MAX_LABEL_CHARS and first["error"] is None
    assert (second["score"], second["label"]) == (None, None) and len(values[1]) < 1_000
    assert second["error"] == f"the model's label of 900000 characters is over the limit of {MAX_LABEL_CHARS}"


def test_outputs_that_once_killed_the_worker_are_each_their_requests_error() -> None:
    """A label with a lone surrogate, an exception whose text holds one, or a model returning
    something else than Predictions raised out of the Score writer: the worker died (with every
    co-hosted model), again on the re-read batch after each restart."""
    writer = ScoreWriter("m", "1", "i")
    requests = [{"request_id": rid, "deadline": 5} for rid in "abcd"]
    results = [Scored(Prediction(0.5, "bad \udc80 label"), None, 1.0),
               Scored(None, "ValueError: bad \udc80 text", 1.0),
               Scored(0.75, None, 1.0),  # type: ignore[arg-type]  # a plain float: its score
               Scored(object(), None, 1.0)]  # type: ignore[arg-type]
    values, unencodable = writer.encode_batch(requests, results, 1, 2)
    decoded = [codec("score").decode(v) for v in values]
    assert decoded[0]["score"] is None and decoded[0]["error"].startswith("model output not encodable")
    assert decoded[1]["score"] is None and "bad" in decoded[1]["error"]
    assert (decoded[2]["score"], decoded[2]["error"]) == (0.75, None)
    assert decoded[3]["score"] is None and decoded[3]["error"].startswith("model output not encodable")
    assert unencodable == [0, 3]  # the first and the last; the second was an error already


class _Overflowing:
    """A model whose arithmetic overflows on inputs near the float range (finite, so they pass
    the contract), and that drops the rows it cannot handle from a batch."""

    name, version, feature_names = "overflowing", "1", ["x"]

    def load(self) -> None:
        return None

    def predict(self, matrix: Any) -> list[Prediction]:
        kept = [row for row in matrix if abs(row[0]) < 1e300]
        if len(kept) < len(matrix) and len(matrix) > 1:
            return [Prediction(float(row[0]) * 1e10, "l") for row in kept]
        return [Prediction(float(row[0]) * 1e10, "l") for row in matrix]


def test_a_score_that_is_not_finite_is_an_error_and_a_rows_score_never_depends_on_its_batch() -> None:
    """1e308 features overflowed a model's arithmetic into a NaN or inf score, answered OK with
    confidence; a model dropping one row of a batch failed every row of it."""
    model = _Overflowing()
    alone = score_batch(model, [{"x": 0.5}])  # type: ignore[arg-type]
    together = score_batch(model, [{"x": 0.5}, {"x": 1e308}])  # type: ignore[arg-type]
    assert together[0].prediction == alone[0].prediction and together[0].error is None
    assert together[1].prediction is None and together[1].error == "the model's score is not a finite number (inf)"


def test_an_exception_whose_text_cannot_be_shown_is_still_that_requests_error() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    class Raising(_Overflowing):
        def predict(self, matrix: Any) -> list[Prediction]:
            raise Unprintable()

    (result,) = score_batch(Raising(), [{"x": 0.5}])  # type: ignore[arg-type]
    assert result.prediction is None and result.error == "Unprintable (its message cannot be shown)"


def test_an_exception_whose_text_raises_system_exit_is_still_that_requests_error() -> None:
    """The message's own failure was caught as an Exception only: a __str__ raising SystemExit
    ended the worker, and its restart read the batch again, for good (a review)."""
    class Exiting(Exception):
        def __str__(self) -> str:
            raise SystemExit(3)

    class Raising(_Overflowing):
        def predict(self, matrix: Any) -> list[Prediction]:
            raise Exiting()

    results = score_batch(Raising(), [{"x": 0.5}, {"x": 0.25}])  # type: ignore[arg-type]
    assert [(r.prediction, r.error) for r in results] == [(None, "Exiting (its message cannot be shown)")] * 2


class _OneColumnTable:
    """What a pandas DataFrame of one column looks like to the worker: len() its rows, iterating
    its column labels."""

    columns = [0]

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return self.rows

    def __iter__(self) -> Iterator[int]:
        return iter(self.columns)


@pytest.mark.parametrize(("output", "said"), [
    (_OneColumnTable, "a table or a mapping"),
    (lambda rows: dict.fromkeys(range(rows), 0.7), "a table or a mapping"),
    (lambda rows: {0.1 * i for i in range(rows)}, "in the rows' order"),
    (lambda rows: bytes(range(rows)), "in the rows' order"),
    (lambda rows: "1" * rows, "in the rows' order"),
])
def test_what_gives_no_prediction_per_row_is_every_rows_error_never_a_score(output: Any, said: str) -> None:
    """Iterated, a table or a mapping gives its column labels or keys: a one-column DataFrame's 0
    was each row's confident score of 0.0, a dict by row index 0, 1, 2; a set gave its values in
    hash order, not the rows', bytes integers, a string letters (reviews)."""
    class Unordered(_Overflowing):
        def predict(self, matrix: Any) -> Any:
            return output(len(matrix))

    for rows in (1, 3):
        results = score_batch(Unordered(), [{"x": 0.5}] * rows)  # type: ignore[arg-type]
        assert [r.prediction for r in results] == [None] * rows
        assert all(r.error is not None and said in r.error for r in results), results


def test_an_exception_quoting_a_secret_of_the_worker_is_masked_in_its_score() -> None:
    """A model's exception text went into the Score as it was, and from there into the answer a
    gateway's caller reads: a model quoting the worker's credentials (a connection string) showed them."""
    class Leaking(_Overflowing):
        def predict(self, matrix: Any) -> list[Prediction]:
            raise RuntimeError("cannot reach sasl://svc:hunter2-secret@broker")

    never_print("hunter2-secret")
    try:
        (result,) = score_batch(Leaking(), [{"x": 0.5}])  # type: ignore[arg-type]
    finally:
        forget_all()
    assert result.prediction is None and result.error == "RuntimeError: cannot reach sasl://svc:***@broker"


def test_class_probabilities_that_are_none_fail_their_rows_not_scored_with_confidence() -> None:
    """[-3, 4] was scored 4.0, and [nan, 0.7] 0.7 with the NaN's class as its label (a review); a row
    of probabilities beside them keeps its score, one that does not sum to 1 too (a multilabel
    estimator's, an outlier's row of zeros: a review of the first version of the check)."""
    rows = [[0.2, 0.8], [-3.0, 4.0], [0.9, 0.9], [float("nan"), 0.7], [0.0, 0.0]]
    estimator = _OwnArithmetic(rows).fit(np.array([[0.0], [1.0]]), np.array([0, 1]))
    model = SklearnModel.from_estimator(estimator, feature_names=["x"])
    model.load()
    scored = score_batch(model, [{"x": float(i)} for i in range(len(rows))])
    assert [s.prediction.score if s.prediction else None for s in scored] == [0.8, None, 0.9, None, 0.0]
    assert [s.error for s in scored[1::2]] == [
        f"ValueError: predict_proba gave {row} for a row: no class probabilities (each in [0, 1]; logits?)"
        for row in ([-3.0, 4.0], [float("nan"), 0.7])]


# --- model files: pickles only when trusted; skops checks its types ---------------------------------


class _Payload:
    """A pickle that runs code when loaded (here: it writes a file), as a hostile one would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (self.marker, "code from the model file ran"))  # type: ignore[return-value]


@pytest.mark.parametrize("suffix", [".joblib", ".pkl", ".pickle"])
def test_a_pickle_is_refused_without_trust_and_its_code_never_runs(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "ran.txt"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelSpecError) as refused:
        load_model(str(path))
    message = str(refused.value)
    assert "\n" not in message
    assert "runs any code it contains" in message and "skops" in message and "--trust-model-file" in message
    assert not marker.exists()
    with pytest.raises(ModelSpecError, match="refusing to load a pickle/joblib file"):
        check_spec(str(path))  # replay's check before the broker: said there too (a review)
    check_spec(str(path), trust_model_file=True)
    with pytest.raises(ModelSpecError, match="not a scikit-learn estimator"):
        load_model(str(path), trust_model_file=True)  # trusted: it loads, and its code ran
    assert marker.exists()


class _HomeMadeClassifier(ClassifierMixin, BaseEstimator):
    def fit(self, x: np.ndarray, y: np.ndarray) -> _HomeMadeClassifier:
        self.classes_ = np.unique(y)
        self.n_features_in_ = x.shape[1]
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.tile([0.25, 0.75], (len(x), 1))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[np.ones(len(x), dtype=int)]


class _OwnArithmetic(_HomeMadeClassifier):
    """An estimator whose predict_proba is its own: a row of it per request, as given."""

    def __init__(self, rows: list[list[float]] | None = None) -> None:
        self.rows = rows

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.array([self.rows[int(v)] for v in x[:, 0]])  # type: ignore[index]


def test_skops_refuses_untrusted_types_unless_trusted(tmp_path: Path) -> None:
    x, y = demo_data()
    path = tmp_path / "home.skops"
    skops_io.dump(_HomeMadeClassifier().fit(x[:, :2], y), path)
    (tmp_path / "home.skops.features.json").write_text('["mean_radius", "mean_texture"]')
    with pytest.raises(ModelSpecError, match=r"types skops does not trust by default \(.*_HomeMadeClassifier\)"):
        load_model(str(path))
    model = load_model(str(path), trust_model_file=True)
    assert model.predict(x[:3, :2])[0] == Prediction(0.75, "1")


def test_skops_svm_needs_trust_even_inside_a_pipeline(tmp_path: Path) -> None:
    """skops trusts SVC, but libsvm follows the file's arrays unchecked (a crafted one crashed the
    worker at its first predict): like trees, it takes --trust-model-file."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    x, y = demo_data()
    path = tmp_path / "svm.skops"
    skops_io.dump(make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)).fit(x, y), path)
    (tmp_path / "svm.features.json").write_text(json.dumps(list(DEMO_FEATURES)))
    assert skops_io.get_untrusted_types(file=path) == []  # skops alone would load it
    refused = r"estimator \(sklearn\.svm\._classes\.SVC\) whose fitted arrays compiled code follows.*--trust-model-file"
    with pytest.raises(ModelSpecError, match=refused):
        load_model(str(path))
    assert len(load_model(str(path), trust_model_file=True).predict(x[:3])) == 3


def test_a_skops_file_is_checked_and_loaded_from_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each check, the load and the version opened the file again: one replaced meanwhile had an
    SVC loaded past the check of a linear model's file, and a version naming other bytes (a review)."""
    from sklearn.svm import SVC

    from services.model_worker.models import sklearn_model

    x, y = demo_data()
    path, other = tmp_path / "model.skops", tmp_path / "svm.skops"
    skops_io.dump(LogisticRegression(max_iter=3000).fit(x, y), path)
    skops_io.dump(SVC(random_state=0).fit(x[:50], y[:50]), other)
    (tmp_path / "model.features.json").write_text(json.dumps(list(DEMO_FEATURES)))
    opened = sklearn_model.opened_model_file
    first = path.read_bytes()

    def swapped_once_opened(where: Path, named_as: Path | None = None) -> Any:
        model_file = opened(where, named_as)
        other.replace(where)  # the file replaced as soon as it was opened
        return model_file

    monkeypatch.setattr(sklearn_model, "opened_model_file", swapped_once_opened)
    model = load_model(str(path))
    assert type(model._estimator).__name__ == "LogisticRegression"
    assert model.version == f"model-{hashlib.sha256(first).hexdigest()[:8]}"


def test_a_skops_schema_that_inflates_past_its_bound_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 MB file whose schema.json inflated to 1 GiB took 2.3 GB of memory (a review)."""
    import zipfile

    from services.model_worker.models import sklearn_model

    monkeypatch.setattr(sklearn_model, "MAX_SCHEMA_BYTES", 10_000)
    path = tmp_path / "bomb.skops"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", '{"__class__": "x", "pad": "' + " " * 20_000 + '"}')
    (tmp_path / "bomb.features.json").write_text(json.dumps(["a"]))
    with pytest.raises(ModelSpecError, match=r"its schema.json inflates to 20,0\d\d bytes \(at most 10,000"):
        load_model(str(path))
    assert path.stat().st_size < 1_000


def _declaring(archive: bytes, name: str, size: int, crc: int | None = None) -> bytes:
    """`archive` with entry `name` declaring `size` bytes inflated (and `crc`, if given), in its
    local header and in the central directory (the zip format's offsets: 22 and 14 in a local
    header, 24 and 16 in a central one)."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(archive)) as read:
        local, central = read.getinfo(name).header_offset, read.start_dir
        names = [info.filename for info in read.infolist()]
    patched = bytearray(archive)
    struct.pack_into("<I", patched, local + 22, size)
    if crc is not None:
        struct.pack_into("<I", patched, local + 14, crc)
    for entry in names:  # each central header: 46 bytes, then its name, extra field and comment
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", patched, central + 28)
        if entry == name:
            struct.pack_into("<I", patched, central + 24, size)
            if crc is not None:
                struct.pack_into("<I", patched, central + 16, crc)
        central += 46 + name_length + extra_length + comment_length
    return bytes(patched)


def test_a_skops_file_whose_arrays_inflate_many_times_its_size_is_refused_before_they_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """skops reads each array whole: a 0.4 MB file whose array was deflated zeros took 0.9 GB to
    load (a review). Here an array of 16 MB of zeros, deflated to a few kB, with the floor lowered."""
    import io
    import tracemalloc
    import zipfile
    import zlib

    from services.model_worker.models import zip_bounds

    x, y = demo_data()
    plain = tmp_path / "plain.skops"
    skops_io.dump(LogisticRegression(max_iter=3000).fit(x, y), plain)
    path = tmp_path / "bomb.skops"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bomb:
        arrays = [name for name in source.namelist() if name.endswith(".npy")]
        for name in source.namelist():
            data = source.read(name)
            if name == arrays[0]:
                zeros = io.BytesIO()
                np.save(zeros, np.zeros(2_000_000))
                data = zeros = zeros.getvalue()
            bomb.writestr(name, data)
    (tmp_path / "bomb.features.json").write_text(json.dumps(list(DEMO_FEATURES)))
    monkeypatch.setattr(zip_bounds, "INFLATED_FLOOR_BYTES", 1_000_000)
    assert path.stat().st_size * zip_bounds.MAX_INFLATION < 16_000_000
    with pytest.raises(ModelSpecError, match=r"its entries inflate to more than 1,000,000 bytes from a [\d,]+-byte "
                                             r"file \(50 times, or 1,000,000 bytes if more\)"):
        load_model(str(path))
    # Its sizes a writer's word: declaring 100 bytes for the zeros, with the checksum of their first
    # 100, passed a bound of declared sizes, and zipfile's own size and checksum checks (reviews).
    path.write_bytes(_declaring(path.read_bytes(), arrays[0], 100, zlib.crc32(zeros[:100])))
    assert sum(i.file_size for i in zipfile.ZipFile(path).infolist()) < 1_000_000, "the sizes it declares"
    tracemalloc.start()
    try:
        with pytest.raises(ModelSpecError, match=r"declares 100 bytes and inflates to more than 100: a damaged or"):
            load_model(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000, f"{peak:,} bytes at the peak: the 16 MB of zeros were inflated"
    # bzip2 and lzma entries inflate without a bound in one call: refused for their method.
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as bomb:
        for name in source.namelist():
            bomb.writestr(name, source.read(name))
    with pytest.raises(ModelSpecError, match=r"is compressed with method 12; only stored or deflated entries"):
        load_model(str(path))
    (tmp_path / "plain.features.json").write_text(json.dumps(list(DEMO_FEATURES)))
    assert load_model(str(plain)).feature_names == DEMO_FEATURES, "a file skops wrote loads"


def test_a_skops_schema_naming_one_array_again_and_again_is_refused_before_skops_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """skops reads an array each time the schema names it in a node of its own (`__id__`): an 8 kB
    file naming one 8 MB array 40 times took 640 MB (a review). Here 100 kB of zeros named by 20
    nodes, with the floor lowered; and a sparse matrix's `.npz`, a zip that scipy inflates itself."""
    import io
    import zipfile

    from services.model_worker.models import zip_bounds

    x, y = demo_data()
    plain = tmp_path / "plain.skops"
    skops_io.dump(LogisticRegression(max_iter=3000).fit(x, y), plain)
    path = tmp_path / "again.skops"
    zeros = io.BytesIO()
    np.save(zeros, np.zeros(12_500))
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as again:
        schema = json.loads(source.read("schema.json"))
        state = schema["content"]["content"]  # the estimator's attributes
        array = next(node for node in state.values() if isinstance(node, dict) and "file" in node)
        nodes = [{**array, "__id__": 10**15 + i} for i in range(1, 21)]
        decoys = [{"__id__": 10**15 + i, "file": "nothing"} for i in range(1, 21)]  # met first by a walk from the end
        state["named_again"] = {**state["classes_"], "__loader__": "ListNode", "__class__": "list",
                                "__id__": 10**15, "content": nodes + decoys}
        for name in source.namelist():
            data = json.dumps(schema) if name == "schema.json" else source.read(name)
            again.writestr(name, zeros.getvalue() if name == array["file"] else data)
    (tmp_path / "again.features.json").write_text(json.dumps(list(DEMO_FEATURES)))
    monkeypatch.setattr(zip_bounds, "INFLATED_FLOOR_BYTES", 1_000_000)
    inflated = sum(info.file_size for info in zipfile.ZipFile(path).infolist())
    assert inflated < 1_000_000 < 20 * len(zeros.getvalue())
    assert path.stat().st_size * zip_bounds.MAX_INFLATION < 1_000_000
    with pytest.raises(ModelSpecError, match=r"inflate to more than 1,000,000 bytes as the schema names them"):
        load_model(str(path))
    # The same node named 20 times is read once (skops keeps it by its __id__): not refused for it.
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp_path / "once.skops", "w") as once:
        schema = json.loads(source.read("schema.json"))
        schema["content"]["content"]["named_again"]["content"] = [array] * 20
        for name in source.namelist():
            once.writestr(name, json.dumps(schema) if name == "schema.json" else source.read(name),
                          compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(ModelSpecError) as refused:
        load_model(str(tmp_path / "once.skops"))
    assert "inflate to more than" not in str(refused.value), "refused for what skops reads, not for the count"
    # A sparse matrix's .npz of 16 MB of zeros, deflated to a few kB: its entries are counted too,
    # behind an empty archive's end record as well (np.load opens that as a zip; a review).
    sparse = io.BytesIO(b"PK\x05\x06" + bytes(18))
    sparse.seek(0, 2)
    np.savez_compressed(sparse, data=np.zeros(2_000_000))
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bomb:
        schema = json.loads(source.read("schema.json"))
        schema["content"]["content"]["sparse"] = {
            "__class__": "spmatrix", "__module__": "scipy.sparse._matrix", "__loader__": "SparseMatrixNode",
            "type": "scipy", "file": "sparse.npz", "__id__": 10**15 + 99}
        for name in source.namelist():
            bomb.writestr(name, json.dumps(schema) if name == "schema.json" else source.read(name))
        bomb.writestr("sparse.npz", sparse.getvalue())
    assert path.stat().st_size * zip_bounds.MAX_INFLATION < 1_000_000
    with pytest.raises(ModelSpecError, match=r"\(in 'sparse.npz'\): its entries inflate to more than"):
        load_model(str(path))


def test_skops_linear_model_loads_without_trust_a_forest_needs_it(tmp_path: Path) -> None:
    x, y = demo_data()
    logreg = LogisticRegression(max_iter=3000).fit(x, y)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    names = json.dumps(list(DEMO_FEATURES))
    for name, estimator in (("logreg", logreg), ("forest", forest)):
        skops_io.dump(estimator, tmp_path / f"{name}.skops")
        (tmp_path / f"{name}.features.json").write_text(names)
    model = load_model(str(tmp_path / "logreg.skops"))
    np.testing.assert_array_equal([p.score for p in model.predict(x)], logreg.predict_proba(x)[:, 1])
    # skops does not trust scikit-learn's Tree by default (its node indices are not bounds-checked).
    with pytest.raises(ModelSpecError, match=r"\(sklearn\.tree\._tree\.Tree\)"):
        load_model(str(tmp_path / "forest.skops"))
    trusted = load_model(str(tmp_path / "forest.skops"), trust_model_file=True)
    np.testing.assert_array_equal([p.score for p in trusted.predict(x)], forest.predict_proba(x)[:, 1])
    joblib.dump(forest, tmp_path / "forest.joblib")
    with pytest.raises(ModelSpecError, match="refusing to load a pickle/joblib file"):
        load_model(str(tmp_path / "forest.joblib"))


# --- Co-hosted models ---------------------------------------------------------------------------


def test_co_hosted_models_load_under_their_names_with_a_group_of_their_own() -> None:
    settings = WorkerSettings(model="demo:champion", name="main", instance="host-1", topic_prefix="p.",
                              co_host=("challenger=demo:challenger", " canary = demo:canary "))
    settings.validate()
    hosted = hosted_models(settings, "host-1")
    assert [(h.name, h.version) for h in hosted] == [
        ("main", load_model("demo:champion").version), ("challenger", "forest-1"), ("canary", "stump-1")]
    assert settings.group_id([h.name for h in hosted]) == "p.model.main+challenger+canary"
    assert WorkerSettings(model="demo:champion", topic_prefix="p.").group_id(["champion"]) == "p.model.champion"
    assert WorkerSettings(model="demo:champion", group="g").group_id(["a", "b"]) == "g"


@pytest.mark.parametrize("item", ["challenger", "=demo:challenger", "challenger="])
def test_co_host_needs_name_and_spec(item: str) -> None:
    with pytest.raises(ConfigError, match="--co-host expects NAME=SPEC"):
        WorkerSettings(model="demo:champion", co_host=(item,)).validate()


def test_co_hosted_names_must_differ() -> None:
    settings = WorkerSettings(model="demo:champion", co_host=("champion=demo:canary",))
    with pytest.raises(ConfigError, match="distinct names, got champion, champion"):
        hosted_models(settings, "host-1")


def test_model_groups_finds_the_group_of_a_co_hosted_model() -> None:
    groups = ["p.rendezvous", "p.model.champion", "p.model.champion+challenger+canary", "q.model.other",
              "p.model.decoy"]
    found = model_groups("p.", groups)
    assert {name: found.get(name) for name in ("champion", "challenger", "canary", "decoy", "other")} == {
        "champion": "p.model.champion", "challenger": "p.model.champion+challenger+canary",
        "canary": "p.model.champion+challenger+canary", "decoy": "p.model.decoy", "other": None}


def test_model_groups_finds_a_lone_model_whose_name_has_a_plus() -> None:
    assert model_groups("p.", ["p.model.a+b", "p.model.a"])["a+b"] == "p.model.a+b"


def test_co_hosted_names_may_not_contain_a_plus() -> None:
    settings = WorkerSettings(model="demo:champion", co_host=("a+b=demo:canary",))
    with pytest.raises(ConfigError, match=r"--co-host name 'a\+b': use letters, digits"):
        hosted_models(settings, "host-1")


class _Doubling:
    """A model that scales its input in place (allowed: the batch is its own)."""

    name, version = "doubling", "1"
    feature_names: tuple[str, ...] = ("a", "b")

    def load(self) -> None:
        pass

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        batch *= 2.0
        return [Prediction(float(row.sum())) for row in batch]


class _DoublingThenFailing(_Doubling):
    """Scales its input in place, then refuses a batch holding a row whose a is over 100."""

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        batch *= 2.0
        if (batch[:, 0] > 200.0).any():
            raise ValueError("a is too large")
        return [Prediction(float(row.sum())) for row in batch]


def test_rows_retried_after_a_model_raised_are_the_rows_it_was_given() -> None:
    results = score_batch(_DoublingThenFailing(), [{"a": 1.0, "b": 2.0}, {"a": 150.0, "b": 1.0}])
    assert [r.prediction.score if r.prediction else r.error for r in results] == [
        6.0, "ValueError: a is too large"]


def test_co_hosted_models_with_one_signature_share_one_check_and_not_their_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prepared: list[Signature] = []
    original = Signature.prepare

    def counting(self: Signature, rows: Any) -> Any:
        prepared.append(self)
        return original(self, rows)

    monkeypatch.setattr(Signature, "prepare", counting)
    hosted = [Hosted(_Doubling(), f"m{i}", "", "host-1", "reject") for i in range(3)]
    hosted.append(Hosted(load_model("demo:canary"), "canary", "", "host-1", "ignore"))
    hosted[1].signature = hosted[0].signature  # as hosted_models makes equal signatures one object
    rows = [{"a": 1.0, "b": 2.0}, {"a": 3.0}]
    results = {h.name: r for h, r in score_co_hosted(hosted, rows)}
    # m0 and m1 share a check; m2's equal but separate signature and the canary's are checked apart
    assert len(prepared) == 3
    outputs = {name: [s.prediction.score if s.prediction else s.error for s in r] for name, r in results.items()}
    assert outputs["m0"] == outputs["m1"] == outputs["m2"] == [6.0, "missing: b"]


def test_hosted_models_make_equal_signatures_one_object() -> None:
    settings = WorkerSettings(model="demo:champion", co_host=("challenger=demo:challenger", "canary=demo:canary"))
    settings.validate()
    champion, challenger, canary = hosted_models(settings, "host-1")
    assert champion.signature is challenger.signature
    assert canary.signature is not champion.signature


class RefusingNegatives(_Overflowing):
    """A model that fails a whole batch holding a negative row (as real adapters fail a batch
    for one row they cannot take); counts its calls."""

    calls = 0

    def predict(self, matrix: Any) -> list[Prediction]:
        type(self).calls += 1
        if any(row[0] < 0 for row in matrix):
            raise ValueError("a row it cannot take")
        return [Prediction(float(row[0]), "l") for row in matrix]


def _score_counting_calls(rows: list[dict[str, float]]) -> tuple[list[Any], int]:
    RefusingNegatives.calls = 0
    results = score_batch(RefusingNegatives(), rows)  # type: ignore[arg-type]
    return results, RefusingNegatives.calls


def test_one_hostile_row_costs_a_few_calls_not_one_per_row() -> None:
    """The batch was re-scored row by row: one such row in every batch of 256 made 257 calls."""
    rows = [{"x": float(i)} for i in range(256)]
    rows[77] = {"x": -1.0}
    results, calls = _score_counting_calls(rows)
    assert [r.error is not None for r in results] == [i == 77 for i in range(256)]
    assert [r.prediction.score for r in results if r.prediction] == [float(i) for i in range(256) if i != 77]
    assert calls <= 3 + 2 * 8  # the batch, the first row alone, the rest, two halves a level below it


def test_a_hostile_row_at_the_head_of_a_batch_costs_a_few_calls_not_one_per_row() -> None:
    """The first row failing alone was taken for a broken model: every row went alone (257 calls)."""
    for bad in ({0}, {0, 255}, {0, 1}):
        results, calls = _score_counting_calls([{"x": -1.0 if i in bad else float(i)} for i in range(256)])
        assert [r.error is not None for r in results] == [i in bad for i in range(256)]
        assert [r.prediction.score for r in results if r.prediction] == [float(i) for i in range(256) if i not in bad]
        assert calls <= 3 + 2 * 2 * 8, (bad, calls)  # probes, then halving down to each bad row
    for size in (2, 3):  # the middle row is the last, or the one after the first
        results, _calls = _score_counting_calls([{"x": -1.0}] + [{"x": float(i)} for i in range(1, size)])
        assert [r.error is not None for r in results] == [i == 0 for i in range(size)]


def test_a_model_that_fails_every_row_costs_one_call_a_row_not_two() -> None:
    """Halving a batch where every row fails would make 2n - 1 calls: the first row, tried alone
    first, tells it apart and the rest go one by one (n + 1 calls, as before halving)."""

    class Broken(_Overflowing):
        calls = 0

        def predict(self, matrix: Any) -> list[Prediction]:
            Broken.calls += 1
            raise RuntimeError("broken")

    results = score_batch(Broken(), [{"x": float(i)} for i in range(256)])  # type: ignore[arg-type]
    assert all(r.error == "RuntimeError: broken" for r in results) and Broken.calls == 257


def test_scores_the_float_range_cannot_hold_are_errors_whatever_their_type() -> None:
    """An int past the float range raised OverflowError out of the check (the worker's end); a
    plain float NaN (a model returning floats) passed it and was written as an OK Score."""

    class Odd(_Overflowing):
        def predict(self, matrix: Any) -> list[Any]:
            return [Prediction(10**400, "l"), float("nan"), 0.25][: len(matrix)]

    results = score_batch(Odd(), [{"x": 0.0}, {"x": 1.0}, {"x": 2.0}])  # type: ignore[arg-type]
    assert [r.error is not None for r in results] == [True, True, False]
    assert "not a finite number" in (results[1].error or "") and results[2].prediction == Prediction(0.25, None)



@pytest.mark.parametrize("output", [None, Prediction(None, None)])
def test_an_output_with_neither_score_nor_label_is_that_requests_error(output: Any) -> None:
    """It was written as a Score with no score, no label and no error, counted ok (a review)."""

    class Blank(_Overflowing):
        def predict(self, matrix: Any) -> list[Any]:
            return [output for _ in range(len(matrix))]

    (result,) = score_batch(Blank(), [{"x": 1.0}])  # type: ignore[arg-type]
    assert result.prediction is None and result.error == "the model gave neither a score nor a label"


class _Failing(_Overflowing):
    """A model whose every call raises (a remote dependency gone), counting its calls."""

    calls = 0

    def predict(self, matrix: Any) -> list[Prediction]:
        self.calls += 1
        raise TimeoutError("feature store did not answer")


def test_a_failed_batch_is_tried_in_parts_only_within_its_retry_time() -> None:
    """A model failing every call was called once a row: at 0.23 s a call a batch of 256 outlasted
    the 60 s timeout, and the watchdog ended the worker at every batch (a review). Out of retry
    time, the other rows get the batch's error."""
    from services.core.signatures import Prepared
    from services.model_worker.worker import retry_budget_s, score_prepared

    matrix = np.zeros((64, 1))
    patient, hurried = _Failing(), _Failing()
    tried = score_prepared(patient, Prepared(matrix.copy(), list(range(64)), {}), 64, 0.0)  # type: ignore[arg-type]
    assert patient.calls == 65 and all(r.error == "TimeoutError: feature store did not answer" for r in tried)
    cut = score_prepared(hurried, Prepared(matrix.copy(), list(range(64)), {}), 64, 0.0, retry_s=0.0)  # type: ignore[arg-type]
    assert hurried.calls == 1
    assert all(r.prediction is None and "TimeoutError: feature store did not answer (the batch's error: this row was "
               "not tried alone" in (r.error or "") for r in cut)
    assert retry_budget_s(60.0) == 15.0 and retry_budget_s(0.0) > 0


def test_the_retry_time_bounds_the_calls_row_by_row_and_starts_at_the_first_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The time was checked only after a call of several rows failed: once the first and middle rows
    failed alone, every row was called (257 calls in a 0.1 s budget); and it was timed from before
    the batch's own call, so a healthy model's long batch with one bad row failed all 256 (a review).
    The model's calls move a clock of their own: each takes 1 s."""
    from services.core.signatures import Prepared
    from services.model_worker import worker

    clock = [0.0]
    monkeypatch.setattr(worker._Retries, "clock", staticmethod(lambda: clock[0]))

    class SlowlyFailing(_Failing):
        def predict(self, matrix: Any) -> list[Prediction]:
            clock[0] += 1.0
            return super().predict(matrix)

    failing = SlowlyFailing()
    results = worker.score_prepared(failing, Prepared(np.zeros((64, 1)), list(range(64)), {}), 64, 0.0,  # type: ignore[arg-type]
                                    retry_s=10.0)
    assert failing.calls == 11  # the batch, then 10 s of retries: not 65
    assert sum("this row was not tried alone" in (r.error or "") for r in results) == 64 - 10  # 10 were

    class LongBatchOneBadRow(_Overflowing):
        def predict(self, matrix: Any) -> list[Prediction]:
            clock[0] += 30.0 if len(matrix) == 64 else 0.0  # a long batch call, quick retries
            if any(row[0] < 0 for row in matrix):
                raise ValueError("negative")
            return [Prediction(float(row[0]), "l") for row in matrix]

    matrix = np.ones((64, 1))
    matrix[5] = -1.0
    scored = worker.score_prepared(LongBatchOneBadRow(), Prepared(matrix.copy(), list(range(64)), {}), 64, 0.0,  # type: ignore[arg-type]
                                   retry_s=40.0)
    assert [i for i, r in enumerate(scored) if r.error] == [5]
    # A failed call that took the whole retry time alone is not followed by more: one more call of
    # as long carried the turn past the watchdog's timeout (a review of the mend).
    slow = worker.score_prepared(LongBatchOneBadRow(), Prepared(matrix.copy(), list(range(64)), {}), 64, 0.0,  # type: ignore[arg-type]
                                 retry_s=10.0)
    assert all("this row was not tried alone" in (r.error or "") for r in slow)


def test_an_output_whose_fields_raise_is_its_requests_error_not_the_writers_end() -> None:
    """A result whose `label` property raised passed the check (it read the label only without a
    score) and then ended the worker inside the Score writer, at every restart (a review)."""

    class Output:
        def __init__(self, score: float) -> None:
            self.score = score

        @property
        def label(self) -> str:
            return ["no", "yes"][int(self.score * 2)]  # IndexError at a score of 1.0

    class Labelling(_Overflowing):
        def predict(self, matrix: Any) -> list[Any]:
            return [Output(float(row[0])) for row in matrix]

    results = score_batch(Labelling(), [{"x": 0.25}, {"x": 1.0}, {"x": 0.75}])  # type: ignore[arg-type]
    assert [r.prediction for r in results] == [Prediction(0.25, "no"), None, Prediction(0.75, "yes")]
    assert (results[1].error or "").startswith("IndexError")
    requests = [{"request_id": f"r{i}", "deadline": 10, "features": {}} for i in range(3)]
    values, unencodable = ScoreWriter("m", "1", "i").encode_batch(requests, results, 1, 2)
    assert len(values) == 3 and unencodable == []


def test_a_models_own_keyboard_interrupt_is_its_error_where_sigint_is_a_stop() -> None:
    """A service turns SIGINT into a stop flag, so a KeyboardInterrupt there is the model's own: it
    ended the worker at every restart, its batch read again (a review). Where SIGINT raises it
    (replay), it is Ctrl-C and goes on."""
    import signal

    class Interrupting(_Overflowing):
        def predict(self, matrix: Any) -> list[Any]:
            raise KeyboardInterrupt("the model's own")

    before = signal.signal(signal.SIGINT, lambda *_: None)  # as run_service sets it
    try:
        [result] = score_batch(Interrupting(), [{"x": 0.5}])  # type: ignore[arg-type]
        assert result.error == "KeyboardInterrupt: the model's own"
    except KeyboardInterrupt:  # not let on to pytest, which would take it for Ctrl-C and stop the run
        pytest.fail("the model's KeyboardInterrupt ended the scoring")
    finally:
        signal.signal(signal.SIGINT, before)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            score_batch(Interrupting(), [{"x": 0.5}])  # type: ignore[arg-type]
    finally:
        signal.signal(signal.SIGINT, before)


def test_an_endless_output_iterable_is_the_batchs_error_not_all_the_memory() -> None:
    """Listed whole before its count: itertools.repeat filled 4 GB in 30 s (a review)."""
    import itertools

    class Endless(_Overflowing):
        def predict(self, matrix: Any) -> Any:
            return itertools.repeat(Prediction(0.5, "l"))

    results = score_batch(Endless(), [{"x": 0.5}, {"x": 0.25}])  # type: ignore[arg-type]
    assert {r.error for r in results} == {"ValueError: model returned over 1 outputs for 1 inputs"}


def test_a_commands_sigterm_is_never_a_rows_error() -> None:
    """With SIGINT ignored (a replay run in the background, nohup) the KeyboardInterrupt check took
    the command's SIGTERM (Stopped) for the model's own: a row error, and the replay went on (a review)."""
    import signal

    from services.core.errors import Stopped

    class Terminated(_Overflowing):
        def predict(self, matrix: Any) -> list[Any]:
            raise Stopped(signal.SIGTERM)

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(Stopped):
            score_batch(Terminated(), [{"x": 0.5}])  # type: ignore[arg-type]
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_sidecar_range_turns_an_out_of_range_request_into_an_error_not_a_confident_score(tmp_path: Path) -> None:
    """A logistic model answers any value with confidence (1e6 of mean_radius: a score of 0 or 1):
    the range its sidecar declares is the one it was fitted on, and a request outside it gets an
    error score from this model, the rest of the batch its scores."""
    path, x = ranged_logistic_model(tmp_path)
    rows = demo_rows(3)
    rows[1] = {**rows[1], "mean_radius": 1e6}
    scored = score_batch(load_model(str(path)), rows)
    assert [s.prediction is not None for s in scored] == [True, False, True]
    assert scored[1].error == (f"outside the model's range: mean_radius=1000000.0 "
                               f"(above its maximum {float(x[:, 0].max())!r})")


def test_a_model_served_through_a_symbolic_link_keeps_the_ranges_of_the_sidecar_beside_its_file(
    tmp_path: Path,
) -> None:
    """`current.skops -> v5/ranged.skops`: the sidecar was looked for beside the link alone, so the
    model was served with no ranges, and 1e6 got a confident score (a review)."""
    (tmp_path / "v5").mkdir()
    path, _x = ranged_logistic_model(tmp_path / "v5")
    (tmp_path / "current.skops").symlink_to(path)
    rows = demo_rows(2)
    rows[1] = {**rows[1], "mean_radius": 1e6}
    scored = score_batch(load_model(str(tmp_path / "current.skops")), rows)
    assert scored[0].prediction is not None
    assert scored[1].prediction is None and "outside the model's range: mean_radius" in str(scored[1].error)
    # One beside the link stays as the link moves on from version to version: the file's own wins.
    (tmp_path / "current.features.json").write_text(json.dumps(list(DEMO_FEATURES)))
    scored = score_batch(load_model(str(tmp_path / "current.skops")), rows)
    assert scored[1].prediction is None and "outside the model's range: mean_radius" in str(scored[1].error)


def test_an_unencodable_output_whose_error_score_is_over_the_topics_limit_too_counts_as_one_error() -> None:
    """Counted once as unencodable and again as too large: two errors for one request, and one
    valid row fewer counted ok (a review)."""
    from types import SimpleNamespace

    from prometheus_client import REGISTRY

    from services.core.errors import RecordTooLarge
    from services.model_worker.worker import _BatchScorer

    hosted = SimpleNamespace(labels=("double-count", "1"), writer=ScoreWriter("double-count", "1", "i"))
    requests = [{"request_id": rid, "deadline": 5} for rid in "ab"]
    results = [Scored(Prediction(0.5, "bad \udc80 label"), None, 1.0), Scored(Prediction(0.5, "ok"), None, 1.0)]

    def produce(msg: Any, request: dict[str, Any], value: bytes) -> None:
        if request["request_id"] == "a":
            raise RecordTooLarge("over what the scores topic takes")

    worker = SimpleNamespace(_produce_score=produce, _write_smaller=lambda *args: None)
    _BatchScorer._write(worker, hosted, results, requests, [None, None], 1)  # type: ignore[arg-type]
    counted = {outcome: REGISTRY.get_sample_value("rdv_model_scores_total",
                                                  {"model": "double-count", "version": "1", "outcome": outcome})
               for outcome in ("ok", "error")}
    assert counted == {"ok": 1.0, "error": 1.0}
