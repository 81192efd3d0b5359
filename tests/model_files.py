"""Model files the tests write, the way a user saves one: a fitted estimator and its sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from skops import io as skops_io

from services.model_worker.models import DEMO_FEATURES
from services.model_worker.models.demo import demo_data


def ranged_logistic_model(directory: Path) -> tuple[Path, np.ndarray]:
    """`directory/ranged.skops`: a logistic model of the demo data, which answers any value with
    confidence (1e6 of mean_radius scores 0 or 1), and its sidecar declaring each feature's range
    as the one it was fitted on. Returns the file and the training matrix (its columns' bounds)."""
    x, y = demo_data()
    path = directory / "ranged.skops"
    skops_io.dump(LogisticRegression(max_iter=3000).fit(x, y), path)
    ranges = [{"name": name, "minimum": float(x[:, i].min()), "maximum": float(x[:, i].max())}
              for i, name in enumerate(DEMO_FEATURES)]
    (directory / "ranged.features.json").write_text(json.dumps(ranges))
    return path, x
