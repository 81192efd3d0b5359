"""Prometheus metrics of the comparison service: lifetime counters and window gauges.

The names and labels are the contract the dashboards (deploy/grafana/dashboards/) and the
alert rules (deploy/prometheus/alerts.yml) are written against.

Counters count every record read (not only those inside the window). Window gauges are a
snapshot: each export builds the complete set of series from the window and swaps it in at
once (`WindowGauges.publish`), so a model that left the window vanishes, and no scrape ever
sees a half-cleared set. Undefined values (an empty side, a constant score) are left out,
never exported as NaN.

Label cardinality: model names come from the data, so `LabelBudget` gives at most
`max_models` names (and 4x as many model/version pairs) their own label values and counts
the rest as "_other"; confusion matrices keep at most 10 labels a side (the rest is "(other labels)");
request ids never become labels.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter as TypedCounter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.comparison.window import STATUSES, ModelStats, WindowView
from services.core.model_names import FOLDED_NAMES
from services.stats.distributions import QuantileSketch, ks_statistic, psi

log = logging.getLogger(__name__)

OTHER = FOLDED_NAMES  # the label of the names past the budget (core/model_names.py)
QUANTILES = (("0.5", 0.5), ("0.9", 0.9), ("0.99", 0.99), ("0.999", 0.999))
MAX_CONFUSION_LABELS = 10

RECORDS = Counter("rdv_cmp_records_total", "Comparison records read from the log (one per request).")
EXPORT_FAILURES = Counter("rdv_cmp_export_failures_total",
                          "Times the window's figures could not be computed (the last published ones stayed).")
# Longer model or version names are counted as '_other': label values go into every /metrics scrape.
MAX_LABEL_CHARS = 128
STALE = Counter(
    "rdv_cmp_stale_records_total", "Records older than the window's start when read: counted, not windowed "
    "(late records, and those of a partition read behind another while catching up on a backlog)."
)
OUTPUTS = Counter(
    "rdv_cmp_outputs_total",
    "Model outputs in the log, by outcome: ok, error (the model failed), late (arrived after the "
    "answer was sent, or after the model's wait in the schedule, without error; an error wins over late).",
    ["model", "version", "outcome"],
)
DEADLINE = Counter(
    "rdv_cmp_deadline_total",
    "Model outputs that met (no error, latency <= deadline - created_at) or missed the deadline; "
    "for the champion, also each record without its output (but ERROR answers): a miss.",
    ["model", "outcome"],
)
ANSWERS = Counter(
    "rdv_cmp_answers_total", "Requests by the status of their answer (OK, FALLBACK, TIMEOUT, ERROR).",
    ["status"],
)
for _status in STATUSES:  # a fixed enum: every series exists from the start, at 0
    ANSWERS.labels(_status)

# name -> (help, label names) of every window gauge.
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "rdv_cmp_latency_seconds": (
        "Latency quantiles of each model's answers over the window (request created -> score arrived; "
        "error outputs not counted).",
        ("model", "quantile"),
    ),
    "rdv_cmp_agreement_ratio": (
        "Share of the paired requests in the window the champion labelled on which the model's label equals the "
        "champion's (one the model left unlabelled counts as a disagreement; those the champion left unlabelled "
        "are not counted: rdv_cmp_window_labelled_pairs).",
        ("model", "champion"),
    ),
    "rdv_cmp_confusion": (
        "Window counts of (champion label, model label) on the same requests.",
        ("model", "champion", "champion_label", "model_label"),
    ),
    "rdv_cmp_score_mad": (
        "Mean absolute difference of the model's and the champion's scores on the same requests.",
        ("model", "champion"),
    ),
    "rdv_cmp_score_correlation": (
        "Pearson correlation of the model's and the champion's scores on the same requests.",
        ("model", "champion"),
    ),
    "rdv_cmp_score_ks": (
        "Kolmogorov-Smirnov distance of the model's window score distribution from a reference: "
        "the champion's window, (reference=self) the model's own first scores, "
        "or (reference=canary) the canary's window.",
        ("model", "reference"),
    ),
    "rdv_cmp_score_psi": (
        "Population stability index of the model's window scores against a reference "
        "(champion, self or canary, as for rdv_cmp_score_ks).",
        ("model", "reference"),
    ),
    "rdv_cmp_window_outputs": ("Outputs of each model in the window.", ("model",)),
    "rdv_cmp_window_pairs": (
        "Requests in the window where both the model and the champion answered without error (under model "
        "'_other', one per folded name's output: it may exceed the requests).",
        ("model", "champion"),
    ),
    "rdv_cmp_window_labelled_pairs": (
        "Of rdv_cmp_window_pairs, those the champion labelled: what rdv_cmp_agreement_ratio is a share of.",
        ("model", "champion"),
    ),
    "rdv_cmp_champion_info": ("The champion the pairs are computed against (value 1).", ("model",)),
    "rdv_cmp_canary_info": ("The canary named by --canary (value 1): the rules watch it for drift, not agreement.",
                            ("model",)),
    "rdv_cmp_fallback_ratio": ("Share of the window's requests answered with status FALLBACK.", ()),
    "rdv_cmp_error_ratio": ("Share of each model's window outputs that are errors.", ("model",)),
    "rdv_cmp_late_ratio": (
        "Share of each model's window outputs that arrived after the answer was sent, or after the model's "
        "wait in the schedule.", ("model",)
    ),
    "rdv_cmp_window_records": ("Comparison records (requests) in the window.", ()),
    "rdv_cmp_window_end_timestamp_seconds": (
        "created_at of the newest record: where the event-time window ends (compare with time()).", ()
    ),
    "rdv_cmp_reference_outputs": (
        "Scores in each model's frozen self reference so far (drift gauges appear when it is full).",
        ("model",),
    ),
}

Samples = dict[str, list[tuple[tuple[str, ...], float]]]


class WindowGauges(Collector):
    """Serves the latest published snapshot; `publish` swaps it in with one assignment."""

    def __init__(self) -> None:
        self._samples: Samples = {}

    def publish(self, samples: Samples) -> None:
        unknown = set(samples) - set(GAUGES)
        if unknown:
            raise ValueError(f"not window gauges: {sorted(unknown)}")
        self._samples = samples

    def collect(self) -> Iterator[GaugeMetricFamily]:
        samples = self._samples
        for name, (doc, labels) in GAUGES.items():
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            for values, value in samples.get(name, ()):
                family.add_metric(list(values), value)
            yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        for name, (doc, labels) in GAUGES.items():
            yield GaugeMetricFamily(name, doc, labels=list(labels))

    def value(self, name: str, **labels: str) -> float | None:
        """One published value (for tests and the log line), None if absent."""
        wanted = tuple(labels[label] for label in GAUGES[name][1])
        return next((v for values, v in self._samples.get(name, ()) if values == wanted), None)


WINDOW = WindowGauges()
REGISTRY.register(WINDOW)


class LabelBudget:
    """The first `max_models` model names keep their name as a label value; later ones are '_other'.

    Model/version pairs get 4x that budget; a pair beyond it keeps its model and gets version
    '_other' (as every version of a name counted as '_other' does, taking no place). Only admitted
    values are remembered, so a flood of names costs no memory. Names `forget` gives back their
    places: the service gives back, when the budget is full, those no longer in its window (so
    one forged record of 50 names does not count every model as '_other' for good); and versions
    `forget_versions`, when the version budget is full, those without an output for a window.
    The names the service was told (--champion, --canary) always keep theirs: a flood of forged
    names right after a start counted them as '_other' until their places were given back.
    """

    def __init__(self, max_models: int, reserved: tuple[str, ...] = ()):
        self.max_models = max_models
        self._reserved = {name for name in reserved if self._reservable(name)}
        self._told = frozenset(self._reserved)  # reserved for good: the names the service was told
        self._champion: str | None = None  # the schedule's champion reserved last (`reserve_champion`)
        self._models: set[str] = set()
        self._versions: set[tuple[str, str]] = set()
        self._warned = False
        self.wanted = False  # a name was refused a place since the last `forget`

    def model(self, name: str) -> str:
        if name in self._models:
            return name
        if name in self._reserved or (len(self._models) < self.max_models and self._fits(name)):
            self._models.add(name)
            return name
        self.wanted = self.wanted or self._fits(name)
        if not self._warned:
            self._warned = True
            log.warning("model %r and any later new model, or any named with more than %d characters, are "
                        "counted as %r (--max-models %d)", name[:MAX_LABEL_CHARS], MAX_LABEL_CHARS, OTHER,
                        self.max_models)
        return OTHER

    def chosen(self, name: str) -> str:
        """The label of a record's chosen model, which takes no place: the chosen model of every
        record the rendezvous writes is one of its outputs, admitted before it. One named by no
        output (any writer of the log may write one) took a place on the record path before the
        outputs of later records, and after them in the batch fold (a review)."""
        return name if name in self._models or name in self._reserved else OTHER

    @property
    def labelled(self) -> frozenset[str]:
        """The names with a label of their own now (admitted, or reserved)."""
        return frozenset(self._models | self._reserved)

    @property
    def full(self) -> bool:
        return len(self._models) >= self.max_models

    @property
    def admitted(self) -> frozenset[str]:
        return frozenset(self._models)

    @property
    def reserved(self) -> frozenset[str]:
        return frozenset(self._reserved)

    def reserve(self, name: str) -> None:
        """Keep `name` a place of its own from now on (the champion of the schedule in force)."""
        if name not in self._reserved and self._reservable(name):
            self._reserved.add(name)
            self._models.add(name)

    def reserve_champion(self, name: str) -> None:
        """Reserve the schedule's champion `name` in place of the one before, which keeps its place
        only as any name does, unless it was told (--champion, --canary): every champion kept
        reserved, names changing at each promotion filled the budget for good (a review)."""
        if name == self._champion:
            return
        if self._champion is not None and self._champion not in self._told:
            self._reserved.discard(self._champion)
        self.reserve(name)
        self._champion = name

    @staticmethod
    def _fits(name: str) -> bool:
        """Whether `name` may be a label value of its own."""
        return name != OTHER and len(name) <= MAX_LABEL_CHARS

    @classmethod
    def _reservable(cls, name: str) -> bool:
        return bool(name) and cls._fits(name)

    def forget(self, names: set[str]) -> None:
        self._models -= names
        self.wanted = False
        self._versions = {pair for pair in self._versions if pair[0] not in names}
        self._warned = False  # the next name past the budget is said again

    @property
    def versions_full(self) -> bool:
        return len(self._versions) >= 4 * self.max_models

    def forget_versions(self, pairs: set[tuple[str, str]]) -> None:
        self._versions -= pairs

    def version(self, model: str, version: str) -> str:
        if model == OTHER:  # its versions would take places no name of the budget could give back
            return OTHER
        key = (model, version)
        if key in self._versions:
            return version
        if len(self._versions) < 4 * self.max_models and len(version) <= MAX_LABEL_CHARS:
            self._versions.add(key)
            return version
        return OTHER


@dataclass
class Tally:
    """Counter increments of one batch, applied with one `inc` per series (cheap per record).

    `outputs` is keyed by ((model, version), outcome, met) so the hot loop does one dict update
    per output; `apply` splits it into the outputs and deadline counters.
    """

    records: int = 0
    stale: int = 0
    answers: TypedCounter[str] = field(default_factory=TypedCounter)
    outputs: dict[tuple[tuple[str, str], str, bool], int] = field(default_factory=dict)
    # Records (but ERROR answers) without an output of the champion they are compared against,
    # by its name: a champion that sent nothing by the deadline and linger is in no output, and
    # counted by outputs alone it missed nothing, its alert silent (a review).
    absent: TypedCounter[str] = field(default_factory=TypedCounter)

    def apply(self) -> None:
        if self.records:
            RECORDS.inc(self.records)
        if self.stale:
            STALE.inc(self.stale)
        for status, n in self.answers.items():
            ANSWERS.labels(status).inc(n)
        deadline: TypedCounter[tuple[str, str]] = TypedCounter()
        for ((model, version), outcome, met), n in self.outputs.items():
            OUTPUTS.labels(model, version, outcome).inc(n)
            deadline[(model, "met" if met else "missed")] += n
        for champion, n in self.absent.items():
            deadline[(champion, "missed")] += n
        for labels, n in deadline.items():
            DEADLINE.labels(*labels).inc(n)


def forget_version_series(model: str, version: str) -> None:
    """Drop one version's output counters (it gave its label back: `LabelBudget.forget_versions`)."""
    for outcome in ("ok", "error", "late"):
        with contextlib.suppress(KeyError):
            OUTPUTS.remove(model, version, outcome)


def forget_series(model: str, version: str) -> None:
    """Drop a model version's counter series (its name gave its label back: `LabelBudget.forget`)."""
    forget_version_series(model, version)
    for outcome in ("met", "missed"):
        with contextlib.suppress(KeyError):
            DEADLINE.remove(model, outcome)


def touch_model(model: str, version: str) -> None:
    """Create a new model's counter series at 0, so rate() sees its first increments."""
    for outcome in ("ok", "error", "late"):
        OUTPUTS.labels(model, version, outcome)
    for outcome in ("met", "missed"):
        DEADLINE.labels(model, outcome)


def window_samples(
    view: WindowView,
    champion: str | None,
    references: Mapping[str, QuantileSketch],
    reference_counts: Mapping[str, int],
    canary: str | None = None,
) -> Samples:
    """Every window gauge's series, computed from the merged window."""
    out: Samples = {name: [] for name in GAUGES}
    totals = view.totals
    if totals.records:
        out["rdv_cmp_window_records"].append(((), float(totals.records)))
        out["rdv_cmp_window_end_timestamp_seconds"].append(((), view.newest_ms / 1000.0))
        fallbacks = totals.statuses.get("FALLBACK", 0)
        out["rdv_cmp_fallback_ratio"].append(((), fallbacks / totals.records))
    fixed = totals.models.get(canary) if canary else None
    if champion:
        out["rdv_cmp_champion_info"].append(((champion,), 1.0))
    if canary:  # whether or not it is in the window: the alert rules tell it by this, not by its name
        out["rdv_cmp_canary_info"].append(((canary,), 1.0))
    for name in sorted(totals.models):
        stats = totals.models[name]
        _model_samples(out, name, stats, reference_counts.get(name, 0))
        reference = references.get(name)
        if reference is not None:
            _distance(out, name, "self", stats.scores, reference)
        if fixed is not None and name != canary:
            # The canary never changes: a model drifting from it while the canary holds
            # steady against its own past is a model change, not an input change.
            _distance(out, name, "canary", stats.scores, fixed.scores)
        if champion and name != champion:
            _pair_samples(out, view, name, champion)
    return out


def _model_samples(out: Samples, name: str, stats: ModelStats, reference_count: int) -> None:
    out["rdv_cmp_window_outputs"].append(((name,), float(stats.outputs)))
    out["rdv_cmp_reference_outputs"].append(((name,), float(reference_count)))
    if stats.outputs:
        out["rdv_cmp_error_ratio"].append(((name,), stats.errors / stats.outputs))
        out["rdv_cmp_late_ratio"].append(((name,), stats.late / stats.outputs))
    if stats.latency_ms.count:
        values = stats.latency_ms.quantiles([q for _, q in QUANTILES]) / 1000.0
        for (label, _), value in zip(QUANTILES, values.tolist(), strict=True):
            _finite(out, "rdv_cmp_latency_seconds", (name, label), value)


def _distance(out: Samples, name: str, reference: str, current: QuantileSketch,
              against: QuantileSketch) -> None:
    if current.count and against.count:
        _finite(out, "rdv_cmp_score_ks", (name, reference), ks_statistic(against, current))
        _finite(out, "rdv_cmp_score_psi", (name, reference), psi(against, current))


def _pair_samples(out: Samples, view: WindowView, name: str, champion: str) -> None:
    pair = view.totals.pairs.get((name, champion))
    labels = (name, champion)
    out["rdv_cmp_window_pairs"].append((labels, float(pair.n if pair else 0)))
    out["rdv_cmp_window_labelled_pairs"].append((labels, float(pair.lead_labelled if pair else 0)))
    if pair is None:
        return
    # On the requests both scored, as the report and the gates compare them (window.PairStats).
    _distance(out, name, "champion", pair.model_scores, pair.champion_scores)
    _finite(out, "rdv_cmp_score_mad", labels, pair.scores.mad())
    _finite(out, "rdv_cmp_score_correlation", labels, pair.scores.correlation())
    if pair.lead_labelled:
        # Over the paired requests the champion labelled, one the model left unlabelled disagreeing
        # (as the report and the promote gate count): a challenger that stopped labelling kept 1.0
        # on the 2 in 200 it labelled, and one that labelled none had no gauge for its alert.
        _finite(out, "rdv_cmp_agreement_ratio", labels, pair.labels.agreeing / pair.lead_labelled)
    if pair.labels.n:
        names, counts = pair.labels.matrix(MAX_CONFUSION_LABELS)
        for i, lead_label in enumerate(names):
            for j, model_label in enumerate(names):
                value = float(counts[i, j])
                out["rdv_cmp_confusion"].append(((name, champion, lead_label, model_label), value))


def _finite(out: Samples, name: str, labels: tuple[str, ...], value: float) -> None:
    if np.isfinite(value):
        out[name].append((labels, float(value)))
