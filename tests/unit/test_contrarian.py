"""demo:contrarian: the champion contradicted on a public, known share of rows (no Kafka needed)."""

from __future__ import annotations

import numpy as np
import pytest

from services.model_worker.models import DEMO_FEATURES, demo_rows, features_to_matrix, load_model
from services.model_worker.models.demo import (
    DEMO_LABELS,
    contrarian_flips,
    contrarian_threshold,
    demo_data,
)
from services.model_worker.worker import score_batch


def test_contrarian_contradicts_the_champion_exactly_where_the_rule_says() -> None:
    contrarian = load_model("demo:contrarian")
    champion = load_model("demo:champion")
    assert (contrarian.name, contrarian.version) == ("contrarian", "logreg-contrarian-1")
    rows = demo_rows(500, seed=11)
    batch = features_to_matrix(rows, DEMO_FEATURES)
    mine, theirs = contrarian.predict(batch), champion.predict(batch)
    flips = [contrarian_flips(r) for r in rows]
    for flip, c, p in zip(flips, mine, theirs, strict=True):
        assert c.score is not None and p.score is not None
        if flip:
            assert c.label != p.label and c.label in DEMO_LABELS
            assert c.score == pytest.approx(1.0 - p.score, abs=1e-12)
        else:
            assert c == p
    # The known disagreement share is simply the share of rows the rule selects (~30 %).
    disagreement = np.mean([c.label != p.label for c, p in zip(mine, theirs, strict=True)])
    assert disagreement == pytest.approx(np.mean(flips), abs=0.0)
    assert 0.2 < disagreement < 0.4


def test_contrarian_rule_is_the_70th_percentile_of_mean_texture() -> None:
    x, _ = demo_data()
    column = x[:, DEMO_FEATURES.index("mean_texture")]
    assert contrarian_threshold() == pytest.approx(float(np.percentile(column, 70.0)))
    assert np.mean(column > contrarian_threshold()) == pytest.approx(0.3, abs=0.01)
    assert contrarian_flips({"mean_texture": contrarian_threshold() + 0.01})
    assert not contrarian_flips({"mean_texture": contrarian_threshold()})
    assert not contrarian_flips({})


def test_a_missing_mean_texture_is_an_error_never_an_imputed_answer() -> None:
    rows = demo_rows(5, seed=12)
    for row in rows:
        del row["mean_texture"]
    for spec in ("demo:contrarian", "demo:champion"):
        results = score_batch(load_model(spec), rows)
        assert [r.prediction for r in results] == [None] * 5
        assert all(r.error == "missing: mean_texture" for r in results), results[0].error
    with pytest.raises(ValueError, match="missing"):  # a direct caller passing NaN is refused too
        load_model("demo:contrarian").predict(features_to_matrix(rows, DEMO_FEATURES))
