"""Fitted scikit-learn models re-evaluated in plain numpy, without scikit-learn's per-call cost.

At 200 requests/s a micro-batch is about one row, and for one row scikit-learn spends most of
its time around the arithmetic: input validation, output wrappers, and for a forest one joblib
task per tree. These scorers read the fitted arrays once and repeat only the arithmetic, in the
same order and precision as scikit-learn's `predict_proba`, so their outputs match it (the unit
tests compare them on the whole demo data set):

    LogisticScorer   StandardScaler + binary LogisticRegression: ((x - mean) / scale) @ coef + b,
                     then the logistic function (scipy's expit, as scikit-learn uses)
    TreeScorer       a decision tree or a forest: every tree walked at once, level by level, on
                     the float32 inputs scikit-learn's trees compare (`x <= threshold`); leaf class
                     fractions summed tree by tree in order, then divided by the number of trees

Both return P(class 1) per row of a NaN-free float64 batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit

__all__ = ["PYTHON_ROWS", "LogisticScorer", "TreeScorer"]

# Trees walk batches of up to this many rows in plain Python. At low rates a batch is one or two
# rows arriving on a cold CPU, where each numpy call costs tens of microseconds; the walk's
# numpy version makes about six calls per tree level (docs/benchmarks.md).
PYTHON_ROWS = 4


class LogisticScorer:
    """P(class 1) of a fitted `make_pipeline(StandardScaler(), LogisticRegression())` (binary)."""

    def __init__(self, pipeline: Any) -> None:
        scaler, logreg = pipeline[0], pipeline[-1]
        if len(pipeline) != 2 or len(logreg.classes_) != 2:
            raise ValueError("LogisticScorer needs a two-step pipeline ending in a binary LogisticRegression")
        self._mean = np.asarray(scaler.mean_, dtype=np.float64)
        self._scale = np.asarray(scaler.scale_, dtype=np.float64)
        self._coef_t = np.ascontiguousarray(logreg.coef_.T, dtype=np.float64)  # (k, 1)
        self._intercept = np.asarray(logreg.intercept_, dtype=np.float64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        standard = (x - self._mean) / self._scale
        if not _all_within(standard, MAX_STANDARD_SCORE):
            # Far from anything the model was fitted on, a logistic model's answer is a confident 0
            # or 1 whatever the value: one feature of 1e308 among ordinary ones was answered OK, 0.0
            # (a review). Past float64's range (1e307: an infinity) scikit-learn's predict_proba
            # refuses it too. The worker scores the rest of the batch without it. (No np.errstate:
            # it cost 10 µs a call, a third of a one-row batch; numpy's overflow warning is said once.)
            raise ValueError(f"a feature value is more than {MAX_STANDARD_SCORE:,.0f} standard deviations from "
                             "the mean the model was fitted on: outside any range it can score")
        decision = standard @ self._coef_t + self._intercept
        return np.asarray(expit(decision.reshape(-1)))


# The demo data's features lie within ±12 standard deviations of their means; a thousand is far
# past any value measured, and far short of the values that only say "this input is garbage".
MAX_STANDARD_SCORE = 1_000.0


def _all_within(values: np.ndarray, bound: float) -> bool:
    """Whether every value is within ±bound (NaN is not): in Python for the few rows of a live
    batch (where numpy's comparison and reduction cost more than the row), numpy's for many."""
    if values.size <= 32:
        return all(-bound <= value <= bound for value in values.ravel().tolist())
    return bool((np.abs(values) <= bound).all())


class TreeScorer:
    """P(class 1) of fitted binary decision trees, averaged like a random forest's predict_proba.

    The trees' node arrays are concatenated; a leaf points to itself, so walking every tree
    `depth` levels lands each row on its leaf in every tree, whatever the tree's own depth.
    """

    def __init__(self, trees: Sequence[Any], columns: Sequence[int] | None = None) -> None:
        if not trees:
            raise ValueError("TreeScorer needs at least one fitted tree")
        features, thresholds, lefts, rights, leaf_p1, roots = [], [], [], [], [], []
        offset = 0
        depth = 0
        for estimator in trees:
            tree = estimator.tree_
            if tree.n_outputs != 1 or tree.value.shape[2] != 2:
                raise ValueError("TreeScorer handles single-output binary classifiers only")
            nodes = np.arange(tree.node_count)
            leaf = tree.children_left < 0
            lefts.append(np.where(leaf, nodes, tree.children_left) + offset)
            rights.append(np.where(leaf, nodes, tree.children_right) + offset)
            features.append(np.where(leaf, 0, tree.feature))
            thresholds.append(np.where(leaf, np.inf, tree.threshold))
            leaf_p1.append(_positive_fraction(tree.value[:, 0, :]))
            roots.append(offset)
            offset += tree.node_count
            depth = max(depth, int(tree.max_depth))
        self._feature = np.concatenate(features).astype(np.intp)
        self._threshold = np.concatenate(thresholds).astype(np.float64)
        self._left = np.concatenate(lefts).astype(np.intp)
        self._right = np.concatenate(rights).astype(np.intp)
        self._p1 = np.concatenate(leaf_p1)
        self._roots = np.asarray(roots, dtype=np.intp)[:, None]  # (trees, 1)
        self._depth = depth
        self._columns = None if columns is None else np.asarray(columns, dtype=np.intp)
        # The same arrays as Python lists, for `_walk_rows`.
        self._lists = (self._feature.tolist(), self._threshold.tolist(), self._left.tolist(),
                       self._right.tolist(), self._p1.tolist(), self._roots[:, 0].tolist())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._columns is not None:
            x = x[:, self._columns]
        # scikit-learn's trees compare float32 inputs with float64 thresholds.
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        if np.isinf(x32).any():
            # 1e39 is finite as the float64 read, infinite as float32: it would go down one side of
            # every tree to a confident score. scikit-learn refuses it; so does this.
            raise ValueError("a feature value is beyond the float32 range the trees compare (|x| > 3.4e38)")
        if len(x) <= PYTHON_ROWS:
            return self._walk_rows(x32)
        n, k = x32.shape
        flat = x32.reshape(-1)
        row_start = np.arange(0, n * k, k, dtype=np.intp)  # (n,): where each row begins in `flat`
        node = np.repeat(self._roots, n, axis=1)  # (trees, n)
        for _ in range(self._depth):
            goes_left = flat[row_start + self._feature[node]] <= self._threshold[node]
            node = np.where(goes_left, self._left[node], self._right[node])
        fractions = self._p1[node]
        if len(fractions) == 1:
            return fractions[0]
        # Summed tree after tree, like the forest's accumulation (cumsum is strictly sequential,
        # so the float rounding is the same), then divided by the number of trees.
        total: np.ndarray = np.cumsum(fractions, axis=0)[-1]
        return total / len(fractions)

    def _walk_rows(self, x: np.ndarray) -> np.ndarray:
        """The same walk in plain Python on the float32 batch `x`, one row and one tree at a time,
        leaf fractions summed in tree order as above (so the result is the same to the bit)."""
        feature, threshold, left, right, p1, roots = self._lists
        totals = []
        for row in x.tolist():  # float32 values (`x` is the float32 batch), compared as float64 as above
            total = 0.0
            for node in roots:
                while left[node] != node:  # a leaf points to itself
                    node = left[node] if row[feature[node]] <= threshold[node] else right[node]
                total += p1[node]
            totals.append(total)
        scores = np.array(totals, dtype=np.float64)
        return scores if len(roots) == 1 else scores / len(roots)


def _positive_fraction(value: np.ndarray) -> np.ndarray:
    """Class-1 fraction per node: scikit-learn >= 1.4 stores fractions; older versions counts."""
    value = np.asarray(value, dtype=np.float64)
    sums = value.sum(axis=1)
    if np.allclose(sums, 1.0, rtol=0.0, atol=1e-9):
        return value[:, 1].copy()
    sums[sums == 0.0] = 1.0
    return value[:, 1] / sums
