"""Comparison statistics: mergeable sketches and paired measures (pure, no Kafka).

Used by the live comparison service (over sliding windows of mergeable parts) and by the
`rendezvous compare` report (over a whole time range).

- `QuantileSketch` wraps fastdigest's t-digest (a Rust t-digest: mergeable, compact, fast),
  for latencies and score distributions. Quantile error is rank error: with the default
  compression the estimated quantile's true rank is within ~0.5% of the asked rank for
  mid quantiles and tighter in the tails (tests state the bound they check).
- Paired measures compare two models on the *same* requests: agreement rate and confusion
  matrix for labels, mean absolute difference and Pearson correlation for scores.
- Distribution distances: Kolmogorov-Smirnov statistic (max CDF gap) and population
  stability index (PSI over the reference's quantile bins).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from fastdigest import TDigest

MAX_CENTROIDS = 500
PSI_EPSILON = 1e-4


class QuantileSketch:
    """A mergeable quantile sketch (t-digest)."""

    __slots__ = ("_digest", "_pending")

    def __init__(self, digest: TDigest | None = None):
        self._digest = digest
        self._pending: list[float] = []

    def add(self, value: float) -> None:
        self._pending.append(value)
        if len(self._pending) >= 4096:
            self._flush()

    def add_many(self, values: Iterable[float]) -> None:
        self._pending.extend(values)
        if len(self._pending) >= 4096:
            self._flush()

    def _flush(self) -> None:
        """Fold the pending values into the digest. Values that are not finite are left out: the
        digest refuses them, and one kept pending made every later reading fail. The callers
        filter them already; this keeps one that forgets from breaking the sketch for good."""
        values, self._pending = self._pending, []
        if not math.isfinite(sum(values)):  # a NaN or an infinity makes the sum so (or finite ones overflow it)
            values = [v for v in values if math.isfinite(v)]
        if not values:
            return
        batch = TDigest.from_values(values, max_centroids=MAX_CENTROIDS)
        if self._digest is None:
            self._digest = batch
        else:
            self._digest.merge_inplace(batch)

    def digest(self) -> TDigest | None:
        self._flush()
        return self._digest

    def merged(self, other: QuantileSketch) -> QuantileSketch:
        """A new sketch holding both (neither input changes)."""
        mine, theirs = self.digest(), other.digest()
        if mine is None:
            return QuantileSketch(theirs.copy() if theirs is not None else None)
        result = mine.copy()
        if theirs is not None:
            result.merge_inplace(theirs)
        return QuantileSketch(result)

    @property
    def count(self) -> int:
        digest = self.digest()
        return 0 if digest is None else int(digest.n_values)

    def quantiles(self, qs: Sequence[float] | np.ndarray) -> np.ndarray:
        digest = self.digest()
        if digest is None:
            return np.full(len(qs), np.nan)
        return np.array([digest.quantile(q) for q in qs])

    def quantile(self, q: float) -> float:
        return float(self.quantiles([q])[0])

    def cdf(self, xs: np.ndarray) -> np.ndarray:
        digest = self.digest()
        if digest is None:
            return np.full(len(xs), np.nan)
        return np.asarray(digest.cdf_vec(np.asarray(xs, dtype=np.float64).tolist()), dtype=np.float64)

    @classmethod
    def of(cls, values: Iterable[float]) -> QuantileSketch:
        sketch = cls()
        sketch.add_many(values)
        return sketch


def ks_statistic(a: QuantileSketch, b: QuantileSketch, grid: int = 256) -> float:
    """Max |CDF_a - CDF_b| over a grid spanning both distributions (nan if either is empty)."""
    if a.count == 0 or b.count == 0:
        return float("nan")
    probes = np.linspace(0.0, 1.0, grid)
    xs = np.unique(np.concatenate([a.quantiles(probes), b.quantiles(probes)]))
    xs = np.concatenate([_nudged(xs, -1), _nudged(xs, 1)])  # both sides of a jump: scores pile up on one value
    return float(np.max(np.abs(a.cdf(xs) - b.cdf(xs))))


PSI_SCALE_PROBES = 64  # quantiles of each sketch whose magnitudes scale the nudge of an edge at 0

# How far from a value a sketch's CDF is read, relative to the value: well past the rounding of a
# centroid's mean (sums of up to ~1e5 equal values), well short of the next distinct score.
NUDGE = 1e-10


def _nudged(xs: np.ndarray, side: int, scale_from: np.ndarray | None = None) -> np.ndarray:
    """Each x moved a hair below (side -1) or above (+1): above, a sketch's CDF counts the values
    equal to x (P(X <= x), as `ks_exact` and `psi_exact` count them); below, none of them. At x
    itself a t-digest interpolates between centroids, counting part of a pile of equal values:
    with the reference's deciles all on one value, PSI read 0 where the exact one is 1.43. And a
    pile spreads over several centroids whose means differ from x by a few floating-point steps
    (sums of many equal values), so the next float was not far enough: a canary with four
    distinct scores read KS 0.40-0.46 and PSI 1.3-2.1 against its own unchanged distribution
    (exact: 0.006-0.025 and 0.003), and its drift alert fired (a review). Relative to each value
    (0: to the smallest other magnitude): 1e-9 at least, scores below that read KS and PSI 0
    whatever their drift, and scores near 1e9 a unit apart were read at the next one (a review).
    `scale_from`: more values whose magnitudes count for 0's (PSI's edges may all be 0)."""
    magnitude = np.abs(xs)
    pool = magnitude if scale_from is None else np.concatenate([magnitude, np.abs(scale_from)])
    nonzero = pool[pool > 0]
    at_zero = float(nonzero.min()) if nonzero.size else 1.0
    result: np.ndarray = xs + side * NUDGE * np.where(magnitude > 0, magnitude, at_zero)
    return result


def ks_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample KS statistic from raw values (reference for tests and exact reports)."""
    a, b = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    xs = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, xs, side="right") / len(a)
    cdf_b = np.searchsorted(b, xs, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def psi(reference: QuantileSketch, current: QuantileSketch, bins: int = 10) -> float:
    """Population stability index of `current` against `reference`'s quantile bins.

    Bins are the reference's deciles (by default), so each holds ~1/bins of the reference;
    empty bins are floored at PSI_EPSILON. Rule of thumb: < 0.1 stable, > 0.25 shifted.
    """
    if reference.count == 0 or current.count == 0:
        return float("nan")
    edges = np.unique(reference.quantiles(np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    # An edge at 0 is nudged by the data's smallest magnitudes, the current's too: with every
    # reference decile on 0, 1e-10 counted scores of 1e-11 as 0 (PSI 0 against an exact 1.3).
    probes = np.linspace(0.0, 1.0, PSI_SCALE_PROBES)
    edges = _nudged(edges, 1, np.concatenate([reference.quantiles(probes), current.quantiles(probes)]))
    ref_share = _bin_shares(reference.cdf(edges))
    cur_share = _bin_shares(current.cdf(edges))
    return _psi_from_shares(ref_share, cur_share)


def psi_exact(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI from raw values with the same binning rule as `psi`."""
    reference, current = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if len(reference) == 0 or len(current) == 0:
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    ref_share = _bin_shares(np.searchsorted(np.sort(reference), edges, side="right") / len(reference))
    cur_share = _bin_shares(np.searchsorted(np.sort(current), edges, side="right") / len(current))
    return _psi_from_shares(ref_share, cur_share)


def _bin_shares(cdf_at_edges: np.ndarray) -> np.ndarray:
    return np.diff(np.concatenate([[0.0], np.clip(cdf_at_edges, 0.0, 1.0), [1.0]]))


def _psi_from_shares(expected: np.ndarray, actual: np.ndarray) -> float:
    expected = np.maximum(expected, PSI_EPSILON)
    actual = np.maximum(actual, PSI_EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@dataclass(slots=True)
class PairedScores:
    """MAD and Pearson correlation of paired scores from centred sums (Welford, merged by Chan's
    rule); mergeable. Raw sums of squares lost the variance of scores far from zero (around 1e8
    with a standard deviation of 1 the correlation read 0.58 for 0.96), and an absolute cut-off for
    "constant" took scores in [0, 1e-6] for constants."""

    n: int = 0
    sum_abs_diff: float = 0.0
    mean_a: float = 0.0
    mean_b: float = 0.0
    m2_a: float = 0.0  # sum of squared deviations from mean_a
    m2_b: float = 0.0
    c_ab: float = 0.0  # sum of products of both deviations

    def add(self, a: float, b: float) -> None:
        self.n += 1
        self.sum_abs_diff += abs(a - b)
        da = a - self.mean_a
        self.mean_a += da / self.n
        db = b - self.mean_b
        self.mean_b += db / self.n
        self.m2_a += da * (a - self.mean_a)
        self.m2_b += db * (b - self.mean_b)
        self.c_ab += da * (b - self.mean_b)

    def add_many(self, a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> None:
        """Add pairs (a[i], b[i]) in one vectorised step (the same figures as calling `add` per pair)."""
        xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if xa.shape != xb.shape or xa.ndim != 1:
            raise ValueError(f"add_many needs two equal-length 1-d sequences, got {xa.shape} and {xb.shape}")
        if not len(xa):
            return
        # Scores near the float range overflow to inf: the figures they feed are then not given
        # (`correlation`), which is the answer; no warning for each batch of them.
        with np.errstate(over="ignore", invalid="ignore"):
            mean_a, mean_b = float(xa.mean()), float(xb.mean())
            da, db = xa - mean_a, xb - mean_b
            batch = PairedScores(len(xa), float(np.abs(xa - xb).sum()), mean_a, mean_b, float(da @ da),
                                 float(db @ db), float(da @ db))
        self.merge(batch)

    def merge(self, other: PairedScores) -> None:
        if not other.n:
            return
        n1, n2 = self.n, other.n
        n = n1 + n2
        with np.errstate(over="ignore", invalid="ignore"):
            da, db = other.mean_a - self.mean_a, other.mean_b - self.mean_b
            weight = n1 * n2 / n
            self.mean_a += da * n2 / n
            self.mean_b += db * n2 / n
            self.m2_a += other.m2_a + da * da * weight
            self.m2_b += other.m2_b + db * db * weight
            self.c_ab += other.c_ab + da * db * weight
        self.n = n
        self.sum_abs_diff += other.sum_abs_diff

    def mad(self) -> float:
        """Mean absolute difference (nan when empty)."""
        return self.sum_abs_diff / self.n if self.n else float("nan")

    def correlation(self) -> float:
        """Pearson correlation (nan when empty or when either side is constant)."""
        if self.n < 2:
            return float("nan")
        figures = (self.c_ab, self.m2_a, self.m2_b, self.mean_a, self.mean_b)
        if not all(math.isfinite(x) for x in figures):
            return float("nan")
        if _constant(self.m2_a, self.mean_a, self.n) or _constant(self.m2_b, self.mean_b, self.n):
            return float("nan")
        # Each root apart: the product of the two overflows for scores near 1e150.
        return float(np.clip(self.c_ab / (math.sqrt(self.m2_a) * math.sqrt(self.m2_b)), -1.0, 1.0))


def _constant(m2: float, mean: float, n: int) -> bool:
    """Whether the deviations are no more than rounding noise: below ~1000 ulps of the mean."""
    noise = 1e-13 * abs(mean)
    return m2 <= n * noise * noise or m2 <= 0.0


# Distinct (champion label, model label) pairs counted one by one, at most; later new pairs are
# counted together as OTHER_LABELS (agreeing) or (OTHER_LABELS, DIFFERENT_LABELS): agreement stays
# exact, and a model that puts an id in its label cannot grow memory with every request. 512: a
# 22-class model's whole confusion; kept per model and time bucket, 4,096 made ten challengers
# labelling with ids hold 95 MB and took 3.3 s of the poll loop per export (every 5 s; a review).
MAX_LABEL_PAIRS = 512
OTHER_LABELS = "(other labels)"
DIFFERENT_LABELS = "(other, different labels)"
# A label longer than this is counted among the other labels too: 4,096 pairs of 20 kB labels kept
# 20 MB per pair of models, and each went out as a Prometheus label value on every scrape.
LONGEST_LABEL = 128


@dataclass(slots=True)
class PairedLabels:
    """Agreement and confusion counts of a model against the champion; mergeable."""

    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)  # (champion, model) -> n

    def add(self, champion_label: str, model_label: str, count: int = 1) -> None:
        key = (champion_label, model_label)
        if (len(champion_label) > LONGEST_LABEL or len(model_label) > LONGEST_LABEL
                or (key not in self.confusion and len(self.confusion) >= MAX_LABEL_PAIRS)):
            key = (OTHER_LABELS, OTHER_LABELS if champion_label == model_label else DIFFERENT_LABELS)
        self.confusion[key] += count

    def merge(self, other: PairedLabels) -> None:
        for (champion_label, model_label), count in other.confusion.items():
            self.add(champion_label, model_label, count)

    @property
    def n(self) -> int:
        return sum(self.confusion.values())

    @property
    def agreeing(self) -> int:
        """Pairs whose two labels are equal."""
        return sum(v for (c, m), v in self.confusion.items() if c == m)

    def agreement(self) -> float:
        total = self.n
        return self.agreeing / total if total else float("nan")

    def matrix(self, max_labels: int = 10) -> tuple[list[str], np.ndarray]:
        """The `max_labels` most frequent labels (sorted), then, if there are more, OTHER_LABELS
        for the rest (and for pairs counted as other labels already); counts[champion][model].
        The fold is named as no label a model gives is likely to be: named 'other', it took a
        model's own class 'other' for itself, and the two came out as one name twice. Two folded
        labels that differ are counted in the column DIFFERENT_LABELS (last, its row empty): in
        (other, other) a model swapping two rare classes read as agreeing (a review)."""
        totals: Counter[str] = Counter()
        for (c, m), v in self.confusion.items():
            totals[c] += v
            totals[m] += v
        folded = totals.keys() & {OTHER_LABELS, DIFFERENT_LABELS}
        keep = [label for label, _ in totals.most_common(max_labels + len(folded)) if label not in folded][:max_labels]
        labels = sorted(keep) + ([OTHER_LABELS] if len(totals) > len(keep) else [])
        index = {label: i for i, label in enumerate(labels)}
        other = len(labels) - 1
        cells: Counter[tuple[int, int]] = Counter()
        for (c, m), v in self.confusion.items():
            at = (index.get(c, other), index.get(m, other))
            cells[(other, other + 1) if at == (other, other) and c != m else at] += v
        if any(j > other for _, j in cells):
            labels.append(DIFFERENT_LABELS)
        counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
        for (i, j), v in cells.items():
            counts[i, j] = v
        return labels, counts


def agreement(champion_labels: Sequence[str | None], model_labels: Sequence[str | None]) -> float:
    """Share of pairs where both have a label and the labels are equal (pairs missing one are skipped)."""
    pairs = [
        (c, m) for c, m in zip(champion_labels, model_labels, strict=True) if c is not None and m is not None
    ]
    if not pairs:
        return float("nan")
    return sum(c == m for c, m in pairs) / len(pairs)
