"""Comparison statistics and the sliding window, checked against numpy on the same data (no Kafka)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Message, TopicPartition
from prometheus_client import REGISTRY

from services.compare_report.summary import summarize_records
from services.comparison import metrics as m
from services.comparison.service import ComparisonService, validate
from services.comparison.settings import ComparisonSettings
from services.comparison.window import ChampionTracker, References, SlidingWindow
from services.core.codec import codec
from services.core.errors import ConfigError, DecodeFailed
from services.stats.deadline import met_deadline, met_deadline_array
from services.stats.distributions import (
    DIFFERENT_LABELS,
    OTHER_LABELS,
    PairedLabels,
    PairedScores,
    QuantileSketch,
    agreement,
    ks_exact,
    ks_statistic,
    psi,
    psi_exact,
)

QS = (0.5, 0.9, 0.99, 0.999)
# Stated bound of the t-digest sketch as the window uses it (10 buckets merged): the true rank of
# the estimated quantile is within RANK_BOUND[q] of q (rank error, the t-digest's natural measure).
RANK_BOUND = {0.5: 0.003, 0.9: 0.002, 0.99: 0.001, 0.999: 0.0005}
BASE_MS = 1_700_000_000_000


def merged_sketch(values: np.ndarray, parts: int = 10) -> QuantileSketch:
    """A sketch built the way the window builds one: a sketch per bucket, merged."""
    total = QuantileSketch()
    for part in np.array_split(values, parts):
        total = total.merged(QuantileSketch.of(part.tolist()))
    return total


# --- sketches against numpy ---------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["lognormal-latency", "uniform-score", "bimodal-score"])
@pytest.mark.parametrize("seed", [1, 2])
def test_sketch_quantiles_are_within_the_stated_rank_bound(distribution: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 100_000
    values = {
        "lognormal-latency": rng.lognormal(3.0, 1.0, n),
        "uniform-score": rng.random(n),
        "bimodal-score": np.concatenate([rng.beta(2, 12, n // 2), rng.beta(12, 2, n - n // 2)]),
    }[distribution]
    sketch = merged_sketch(values)
    assert sketch.count == n
    ordered = np.sort(values)
    for q, estimate in zip(QS, sketch.quantiles(QS), strict=True):
        rank = np.searchsorted(ordered, estimate, side="right") / n
        assert abs(rank - q) <= RANK_BOUND[q], (q, estimate, np.quantile(values, q), rank)
    if distribution != "bimodal-score":  # (its median sits in a sparse gap: only rank error is meaningful)
        # where the density is not tiny, a small rank error is a small value error: median within 1 %
        assert sketch.quantile(0.5) == pytest.approx(float(np.quantile(values, 0.5)), rel=0.01)


def test_a_value_that_is_not_finite_leaves_a_sketch_readable() -> None:
    """One NaN kept pending made every later reading raise 'Values must be finite' (a review)."""
    sketch = QuantileSketch()
    sketch.add(float("nan"))
    sketch.add_many([1.0, float("inf"), 3.0, -float("inf")])
    assert (sketch.quantile(0.5), sketch.count) == (2.0, 2)
    sketch.add(5.0)
    assert sketch.count == 3
    empty = QuantileSketch()
    empty.add(float("nan"))
    assert math.isnan(empty.quantile(0.5)) and empty.count == 0


def test_ks_and_psi_from_sketches_match_the_exact_values() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(0.0, 1.0, 20_000)
    for shift, scale in ((0.0, 1.0), (0.3, 1.0), (0.0, 1.5), (1.0, 0.5)):
        b = rng.normal(shift, scale, 20_000)
        ks = ks_statistic(merged_sketch(a), merged_sketch(b))
        assert ks == pytest.approx(ks_exact(a, b), abs=0.01)
        value = psi(merged_sketch(a), merged_sketch(b))
        exact = psi_exact(a, b)
        assert value == pytest.approx(exact, abs=0.01 + 0.1 * exact)
    same = psi(merged_sketch(a), merged_sketch(rng.normal(0.0, 1.0, 20_000)))
    assert same < 0.01  # "stable" by any rule of thumb
    assert math.isnan(ks_statistic(QuantileSketch(), merged_sketch(a)))


def test_ks_on_discrete_scores_matches_the_exact_value() -> None:
    """A depth-2 tree (the canary) has four possible scores: the sketch must still be close."""
    rng = np.random.default_rng(4)
    leaves = np.array([0.0, 0.091, 0.276, 0.953])
    before = leaves[rng.choice(4, 5_000, p=[0.3, 0.05, 0.05, 0.6])]
    after = leaves[rng.choice(4, 5_000, p=[0.6, 0.05, 0.05, 0.3])]
    assert ks_statistic(merged_sketch(before), merged_sketch(after)) == pytest.approx(
        ks_exact(before, after), abs=0.02
    )


def test_psi_and_ks_on_scores_piled_on_one_value_match_the_exact_values() -> None:
    """A champion scoring 0.0 on 95% of requests has every decile at 0.0: the sketch's CDF read at
    the edge itself counted only part of the pile, and the live PSI was 0 (the exact one 1.43)."""
    rng = np.random.default_rng(6)
    champion = np.where(rng.random(5_000) < 0.95, 0.0, rng.random(5_000))
    challenger = np.where(rng.random(5_000) < 0.5, 0.0, rng.random(5_000))
    exact = psi_exact(champion, challenger)
    assert exact > 1.0 and psi(merged_sketch(champion), merged_sketch(challenger)) == pytest.approx(exact, rel=0.1)
    assert ks_statistic(merged_sketch(champion), merged_sketch(challenger)) == pytest.approx(
        ks_exact(champion, challenger), abs=0.02)
    one, other = np.zeros(1), np.ones(1)  # a single score each: wholly apart
    assert ks_statistic(merged_sketch(one), merged_sketch(other)) == ks_exact(one, other) == 1.0


# --- paired measures ----------------------------------------------------------------------------


def test_paired_scores_match_numpy_whether_added_one_by_one_or_in_bulk() -> None:
    rng = np.random.default_rng(5)
    a = rng.random(10_000)
    b = np.clip(a + rng.normal(0, 0.1, 10_000), 0, 1)
    one, bulk, merged = PairedScores(), PairedScores(), PairedScores()
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        one.add(x, y)
    bulk.add_many(a, b)
    for part_a, part_b in zip(np.array_split(a, 7), np.array_split(b, 7), strict=True):
        piece = PairedScores()
        piece.add_many(part_a, part_b)
        merged.merge(piece)
    for paired in (one, bulk, merged):
        assert paired.n == 10_000
        assert paired.mad() == pytest.approx(float(np.mean(np.abs(a - b))), rel=1e-9)
        assert paired.correlation() == pytest.approx(float(np.corrcoef(a, b)[0, 1]), rel=1e-9)
    constant = PairedScores()
    constant.add_many([0.5] * 10, list(a[:10]))
    assert math.isnan(constant.correlation())
    with pytest.raises(ValueError):
        bulk.add_many([1.0, 2.0], [1.0])


@pytest.mark.parametrize(("offset", "scale"), [(0.0, 1e-6), (1e8, 1.0), (-3e12, 1e3), (0.0, 1e150)])
def test_correlation_does_not_depend_on_where_the_scores_sit(offset: float, scale: float) -> None:
    """Raw sums of squares read 0.58 for 0.96 around 1e8, and an absolute cut-off took scores in
    [0, 1e-6] for constants (nan)."""
    rng = np.random.default_rng(7)
    x = rng.random(5_000)
    y = x + rng.normal(0, 0.1, 5_000)
    a, b = offset + scale * x, offset + scale * y
    expected = float(np.corrcoef(x, y)[0, 1])
    one, bulk = PairedScores(), PairedScores()
    for u, v in zip(a.tolist(), b.tolist(), strict=True):
        one.add(u, v)
    for part_a, part_b in zip(np.array_split(a, 9), np.array_split(b, 9), strict=True):
        bulk.add_many(part_a, part_b)
    assert one.correlation() == pytest.approx(expected, rel=1e-6)
    assert bulk.correlation() == pytest.approx(expected, rel=1e-6)
    flat = PairedScores()
    flat.add_many([offset + scale] * 100, b[:100])  # a constant far from zero is still a constant
    assert math.isnan(flat.correlation())


def test_agreement_and_confusion_match_a_direct_count() -> None:
    rng = np.random.default_rng(6)
    champion = rng.choice(["benign", "malignant"], 1_000).tolist()
    model = [c if rng.random() < 0.7 else ("malignant" if c == "benign" else "benign") for c in champion]
    labels = PairedLabels()
    for c, x in zip(champion, model, strict=True):
        labels.add(c, x)
    expected = float(np.mean(np.array(champion) == np.array(model)))
    assert labels.agreement() == pytest.approx(expected, abs=1e-12)
    assert agreement(champion, model) == pytest.approx(expected, abs=1e-12)
    names, counts = labels.matrix()
    assert names == ["benign", "malignant"]
    assert counts.sum() == 1_000
    assert counts[0, 0] == sum(c == x == "benign" for c, x in zip(champion, model, strict=True))


def test_confusion_keeps_ten_labels_a_side_and_folds_the_rest_into_other() -> None:
    labels = PairedLabels()
    for i in range(15):
        for _ in range(15 - i):  # label "c0" most frequent ... "c14" least
            labels.add(f"c{i}", f"c{i}")
    names, counts = labels.matrix(10)
    assert len(names) == 11 and names[-1] == OTHER_LABELS
    assert counts.sum() == sum(range(1, 16))
    assert counts[-1, -1] == sum(range(1, 6))  # c10..c14: 5+4+3+2+1


def test_a_class_named_other_keeps_its_own_row_beside_the_fold() -> None:
    """The fold was named 'other': a model's own class 'other' shared its name, its counts went
    into the fold, and the matrix named 'other' twice (duplicate series on every scrape; a review)."""
    labels = PairedLabels()
    for i, label in enumerate(["other", *(f"c{i}" for i in range(11))]):
        labels.add(label, label, 100 - i)
    labels.add("x" * 200, "y" * 200)  # counted among the other labels already, as different ones
    names, counts = labels.matrix(10)
    assert len(set(names)) == len(names) == 12 and names[-2:] == [OTHER_LABELS, DIFFERENT_LABELS]
    assert counts[names.index("other"), names.index("other")] == 100
    assert counts[-2].sum() == 100 - 10 + 100 - 11 + 1 and counts.sum() == labels.n


# --- the window ---------------------------------------------------------------------------------


def output(model: str, score: float | None = 0.8, *, latency: float = 10.0, error: str | None = None,
           late: bool = False, label: str | None = None, version: str = "v1") -> dict[str, Any]:
    if label is None and score is not None and error is None:
        label = "benign" if score > 0.5 else "malignant"
    return {"model": model, "version": version, "score": None if error else score,
            "label": None if error else label, "error": error, "latency_ms": latency,
            "compute_ms": 1.0, "late": late}


def record(created: int, outputs: Iterable[dict[str, Any]], *, status: str = "OK",
           chosen: str | None = "champion", budget: int = 200) -> dict[str, Any]:
    return {"request_id": f"r{created}", "created_at": created, "deadline": created + budget,
            "answered_at": created + 5, "status": status, "chosen_model": chosen, "reason": "",
            "schedule": "s", "schedule_version": 1, "outputs": list(outputs)}


def test_window_ends_at_the_newest_event_time_and_drops_what_fell_out() -> None:
    window = SlidingWindow(bucket_ms=1_000, buckets=3)
    for second in range(3):
        assert window.add(record(BASE_MS + second * 1_000, [output("champion")]), "champion")
    assert window.view().totals.records == 3
    assert window.view().newest_ms == BASE_MS + 2_000
    # a record 3 s later slides the window: the first bucket leaves, two remain + the new one
    assert window.add(record(BASE_MS + 3_000, [output("champion")]), "champion")
    view = window.view()
    assert (view.totals.records, view.buckets) == (3, 3)
    # a record older than the window's start is stale: counted, not windowed
    assert not window.add(record(BASE_MS + 500, [output("champion")]), "champion")
    assert window.stale == 1 and window.view().totals.records == 3
    # late-arriving but inside the window: accepted into its own (older) bucket
    assert window.add(record(BASE_MS + 1_500, [output("champion")]), "champion")
    assert window.view().totals.records == 4
    # a jump far ahead empties the window except the new record (replays jump like this)
    assert window.add(record(BASE_MS + 60_000, [output("champion")]), "champion")
    assert window.view().totals.records == 1


def test_merged_buckets_equal_one_pass_over_the_same_records() -> None:
    rng = np.random.default_rng(8)
    latencies = rng.lognormal(3.0, 0.7, 3_000)
    scores = rng.random(3_000)
    window = SlidingWindow(bucket_ms=100, buckets=50)  # 3 000 records, 1 ms apart: 30 buckets
    for i in range(3_000):
        window.add(record(BASE_MS + i, [output("champion", float(scores[i]), latency=float(latencies[i]))]),
                   "champion")
        if i % 700 == 0:
            window.compact()  # compaction at batch ends must not change anything
    stats = window.view().totals.models["champion"]
    one_pass = QuantileSketch.of(latencies.tolist())
    assert stats.outputs == 3_000
    assert stats.latency_ms.count == 3_000 and stats.scores.count == 3_000
    for q in QS[:3]:
        rank = np.searchsorted(np.sort(latencies), stats.latency_ms.quantile(q), side="right") / 3_000
        assert abs(rank - q) <= 0.01
        assert stats.latency_ms.quantile(q) == pytest.approx(one_pass.quantile(q), rel=0.05)


def test_deadline_errors_lateness_and_pairs() -> None:
    window = SlidingWindow(bucket_ms=10_000, buckets=6)
    outs = [output("champion", 0.9, latency=50), output("challenger", 0.2, latency=250, late=True),
            output("slow", error="ValueError: no", latency=20)]
    window.add(record(BASE_MS, outs, budget=200), "champion")
    window.add(record(BASE_MS + 1, [output("champion", 0.3), output("challenger", 0.35)]), "champion")
    totals = window.view().totals
    assert [(n, s.met, s.missed, s.errors, s.late) for n, s in sorted(totals.models.items())] == [
        ("challenger", 1, 1, 0, 1), ("champion", 2, 0, 0, 0), ("slow", 0, 1, 1, 0)]
    for out in outs:
        assert met_deadline(out["error"], out["score"], out["latency_ms"], 200) == (out["model"] == "champion")
    pair = totals.pairs[("challenger", "champion")]
    assert pair.n == 2 and ("slow", "champion") not in totals.pairs  # errors never pair
    assert pair.labels.agreement() == 0.5
    assert pair.scores.mad() == pytest.approx((0.7 + 0.05) / 2)
    assert totals.statuses == {"OK": 2}


@pytest.mark.parametrize("score", [float("nan"), float("inf"), float("-inf")])
def test_a_score_that_is_not_a_finite_number_never_met_the_deadline(score: float) -> None:
    """The rendezvous takes such a score for an error; the live figures counted it as met (the
    report did not): a forged or broken model looked 100% on time."""
    assert not met_deadline(None, score, 10.0, 200.0)
    window = SlidingWindow(bucket_ms=10_000, buckets=6)
    window.add(record(BASE_MS, [output("champion", 0.9), output("broken", score, label="benign")]), "champion")
    totals = window.view().totals
    assert (totals.models["broken"].met, totals.models["broken"].missed) == (0, 1)
    assert (totals.models["champion"].met, totals.models["champion"].missed) == (1, 0)


def test_champion_is_the_chosen_model_of_the_latest_ok_answer_unless_overridden() -> None:
    tracker = ChampionTracker()
    assert tracker.current is None
    assert tracker.observe(record(BASE_MS, [], status="FALLBACK", chosen="challenger")) is None
    assert tracker.observe(record(BASE_MS, [], status="OK", chosen="champion")) == "champion"
    assert tracker.observe(record(BASE_MS, [], status="FALLBACK", chosen="canary")) == "champion"
    assert tracker.observe(record(BASE_MS, [], status="TIMEOUT", chosen=None)) == "champion"
    assert tracker.observe(record(BASE_MS, [], status="OK", chosen="v2")) == "v2"  # schedule changed
    fixed = ChampionTracker("champion")
    assert fixed.observe(record(BASE_MS, [], status="OK", chosen="v2")) == "champion"


def test_the_schedules_preferred_model_is_the_champion_whatever_the_answers_say() -> None:
    """Inferred from OK answers, the champion was anyone's who wrote an OK record to the log, and
    none after a restart in the champion's outage (a review). The schedule in force names it; an
    override beats it; without a schedule in force, the answers still tell."""
    schedule: list[str | None] = [None]
    tracker = ChampionTracker(preferred=lambda: schedule[0])
    tracker.refresh()  # once a batch, as the service does
    assert tracker.observe(record(BASE_MS, [], status="OK", chosen="champion")) == "champion"  # none in force yet
    schedule[0] = "champion-v2"
    tracker.refresh()
    assert tracker.observe(record(BASE_MS, [], status="FALLBACK", chosen="challenger")) == "champion-v2"
    assert tracker.observe(record(BASE_MS, [], status="OK", chosen="forged")) == "champion-v2"
    assert tracker.current == "champion-v2"
    assert ChampionTracker("mine", preferred=lambda: "champion-v2").observe(
        record(BASE_MS, [], status="OK", chosen="forged")) == "mine"


@pytest.mark.parametrize("path", ["record", "batch"])
def test_in_a_champion_outage_the_schedule_names_the_champion_from_the_first_record(path: str) -> None:
    """Every answer FALLBACK (the champion down) after a restart: no champion was known, so
    rdv_cmp_champion_info was empty and ChampionDeadlineMisses could not fire (a review)."""
    from types import SimpleNamespace

    from services.control.schedule import Schedule

    svc = service()
    svc._schedules = SimpleNamespace(in_force=lambda: Schedule(models=("champion", "challenger")))  # type: ignore[assignment]
    records = [record(BASE_MS + i, [output("champion", error="TimeoutError: late"), output("challenger", 0.8)],
                      status="FALLBACK", chosen="challenger") for i in range(200)]
    records += [record(BASE_MS + 200 + i, [output("forged", 0.1), output("challenger", 0.8)], chosen="forged")
                for i in range(150)]  # forged OK answers: not the champion for that
    (read if path == "batch" else feed)(svc, records)
    svc.export()
    assert svc.champion.current == "champion"
    assert m.WINDOW.value("rdv_cmp_champion_info", model="champion") == 1.0
    assert m.WINDOW.value("rdv_cmp_champion_info", model="forged") is None
    assert m.WINDOW.value("rdv_cmp_error_ratio", model="champion") == 1.0


def test_self_reference_freezes_after_its_size() -> None:
    refs = References(size=3)
    for score in (0.1, float("nan"), None, 0.2):
        refs.add("canary", score)
    assert refs.count("canary") == 2 and "canary" not in refs.frozen
    refs.add("canary", 0.3)
    refs.add("canary", 0.99)  # after freezing: ignored
    assert refs.count("canary") == 3
    assert refs.frozen["canary"].count == 3 and refs.frozen["canary"].quantile(1.0) == pytest.approx(0.3)


# --- the service's record handling and the exported gauges (no broker) ---------------------------


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def service(**overrides: Any) -> ComparisonService:
    settings = ComparisonSettings(bootstrap="unused:1", window_s=60, buckets=6, reference_size=50,
                                  **overrides)
    settings.validate()
    return ComparisonService(settings)


def read(svc: ComparisonService, records: list[dict[str, Any]], first: int = 0) -> int:
    """`records` as the service reads them: one batch of partition 0 of the log, from offset
    `first`; the next offset."""
    svc.on_batch([Message(topic="rdv.log", partition=0, offset=first + i, value=codec("comparison").encode(rec))
                  for i, rec in enumerate(records)])
    return first + len(records)


def feed(svc: ComparisonService, records: Iterable[dict[str, Any]]) -> None:
    """`records` one by one, as a batch of the record path (on_batch refreshes the champion first)."""
    svc.champion.refresh()
    tally = m.Tally()
    for rec in records:
        svc.observe(rec, tally)
    tally.apply()
    svc.window.compact()


def test_counters_follow_the_deadline_rule_and_gauges_describe_the_window() -> None:
    svc = service()
    rng = np.random.default_rng(9)
    flips = rng.random(400) < 0.3
    records = []
    for i in range(400):
        champ = float(rng.random())
        chall = 1 - champ if flips[i] else champ
        records.append(record(BASE_MS + i * 10, [
            output("champion", champ, latency=20),
            output("challenger", chall, latency=float(rng.choice([50, 500]))),
            output("flaky", champ, error="boom" if i % 4 == 0 else None, latency=30),
        ], status="FALLBACK" if i % 10 == 5 else "OK", chosen="challenger" if i % 10 == 5 else "champion"))
    before = {key: sample("rdv_cmp_deadline_total", model="challenger", outcome=key) for key in ("met", "missed")}
    records_before = sample("rdv_cmp_records_total")
    feed(svc, records)
    svc.export()
    met = sample("rdv_cmp_deadline_total", model="challenger", outcome="met") - before["met"]
    missed = sample("rdv_cmp_deadline_total", model="challenger", outcome="missed") - before["missed"]
    window = svc.window.view().totals.models["challenger"]
    assert (met, missed) == (window.met, window.missed)
    assert met + missed == 400 and sample("rdv_cmp_records_total") - records_before == 400
    seconds = [r["outputs"][1] for r in records]
    assert sum(met_deadline(o["error"], o["score"], o["latency_ms"], 200) for o in seconds) == met

    def gauge(name: str, **labels: str) -> float | None:
        return m.WINDOW.value(name, **labels)

    assert gauge("rdv_cmp_champion_info", model="champion") == 1.0
    assert gauge("rdv_cmp_agreement_ratio", model="challenger", champion="champion") == pytest.approx(
        1 - flips.mean(), abs=1e-12)
    assert gauge("rdv_cmp_window_pairs", model="challenger", champion="champion") == 400
    assert gauge("rdv_cmp_window_pairs", model="flaky", champion="champion") == 300
    assert gauge("rdv_cmp_error_ratio", model="flaky") == pytest.approx(0.25)
    assert gauge("rdv_cmp_fallback_ratio") == pytest.approx(0.1)
    assert gauge("rdv_cmp_latency_seconds", model="champion", quantile="0.99") == pytest.approx(0.02)
    assert gauge("rdv_cmp_score_ks", model="flaky", reference="champion") is not None
    assert gauge("rdv_cmp_score_ks", model="champion", reference="self") is not None  # reference full
    assert gauge("rdv_cmp_agreement_ratio", model="champion", champion="champion") is None
    # nothing exported is NaN, and the confusion matrix is the 2x2 of the labels
    published = m.WINDOW._samples
    assert all(math.isfinite(v) for series in published.values() for _labels, v in series)
    cells = [s for s in published["rdv_cmp_confusion"] if s[0][0] == "challenger"]
    assert len(cells) == 4 and sum(v for _labels, v in cells) == 400


@pytest.mark.parametrize("path", ["record", "batch"])
def test_a_chosen_model_named_by_no_output_takes_no_place_from_a_model_that_scores(path: str) -> None:
    """One forged record whose chosen model is none of its outputs took a place on the record path
    (a newcomer then counted as '_other') and none in the batch fold: the two disagreed (a review)."""
    svc = service(max_models=3)
    records = [record(BASE_MS, [output("champion"), output("challenger")], chosen="ghost")]
    records += [record(BASE_MS + i, [output("champion"), output("challenger"), output("newcomer")])
                for i in range(1, 200)]
    (read if path == "batch" else feed)(svc, records)
    svc.export()
    assert svc._labels.admitted == {"champion", "challenger", "newcomer"}
    assert m.WINDOW.value("rdv_cmp_window_outputs", model="newcomer") == 199


def test_a_chosen_model_with_an_output_only_later_in_the_batch_is_labelled_alike_on_both_paths() -> None:
    """Record by record, a chosen model named by no output of its record and not labelled yet is
    '_other' there; the batch fold labelled it after every output of the batch, under its own name:
    the tracked champion, the pairs and champion_info then differed (a review)."""
    def records() -> list[dict[str, Any]]:  # afresh for each path: the record path relabels them in place
        first = [record(BASE_MS, [output("champion", 0.4)], chosen="challenger")]
        return first + [record(BASE_MS + i, [output("champion", 0.4), output("challenger", 0.45)],
                               status="FALLBACK") for i in range(1, 150)]

    exported = {}
    for path in ("record", "batch"):
        svc = service()
        (read if path == "batch" else feed)(svc, records())
        svc.export()
        exported[path] = (svc.champion.current, {name: sorted(series) for name, series in m.WINDOW._samples.items()})
    assert exported["record"] == exported["batch"]
    assert exported["batch"][0] == m.OTHER


@pytest.mark.parametrize("path", ["record", "batch"])
def test_a_record_without_its_champions_output_is_a_miss_of_the_champions(path: str) -> None:
    """A champion stuck past the deadline and linger is in no output of the records it missed:
    counted by outputs alone, it met 100% of its deadlines, its alert silent, where one less
    stuck (its scores late but logged) missed 30% (a review). An ERROR answer (an invalid
    request, answered at once) expects no score."""
    svc = service()
    records = []
    for i in range(400):
        if i % 10 in (3, 6):  # the champion sent nothing: answered by the fallback
            records.append(record(BASE_MS + i, [output("challenger", 0.7, latency=30)], status="FALLBACK",
                                  chosen="challenger"))
        elif i % 10 == 9:
            records.append(record(BASE_MS + i, [], status="ERROR", chosen=None))
        else:
            records.append(record(BASE_MS + i, [output("champion", 0.8, latency=20),
                                                output("challenger", 0.7, latency=30)]))
    before = {key: sample("rdv_cmp_deadline_total", model="champion", outcome=key) for key in ("met", "missed")}
    (read if path == "batch" else feed)(svc, records)
    met = sample("rdv_cmp_deadline_total", model="champion", outcome="met") - before["met"]
    missed = sample("rdv_cmp_deadline_total", model="champion", outcome="missed") - before["missed"]
    assert (met, missed) == (280, 80)


def fallback(created: int) -> dict[str, Any]:
    """A record of a champion outage: the champion sent nothing, the challenger answered."""
    return record(created, [output("challenger", 0.7, latency=30), output("other", 0.6)], status="FALLBACK",
                  chosen="challenger")


def test_a_champion_given_by_flag_that_has_sent_nothing_since_a_restart_misses_its_deadlines() -> None:
    """--champion X, restarted during X's outage: X had no label place until an output of its own,
    and every miss was dropped; its deadline series never existed, the page could not fire, while
    `rendezvous compare --champion X` counted them (a review)."""
    svc = service(champion="champion")
    before = sample("rdv_cmp_deadline_total", model="champion", outcome="missed")
    read(svc, [fallback(BASE_MS + i) for i in range(50)], 0)
    assert sample("rdv_cmp_deadline_total", model="champion", outcome="missed") - before == 50


def test_a_champion_silent_for_a_whole_window_keeps_its_place_when_the_label_budget_is_full() -> None:
    """With every place taken, names with no output in the window gave theirs back: the silent
    champion's too. Its missed count went back to 0 and later misses were dropped (a review)."""
    svc = service(champion="champion", max_models=3)
    before = sample("rdv_cmp_deadline_total", model="champion", outcome="missed")
    at = read(svc, [record(BASE_MS + i, [output("champion", 0.9), output("challenger", 0.7), output("other", 0.6)])
                       for i in range(10)], 0)
    at = read(svc, [fallback(BASE_MS + 70_000 + i) for i in range(20)], at)  # a window (60 s) later
    svc.export()
    read(svc, [fallback(BASE_MS + 70_100 + i) for i in range(30)], at)
    assert "champion" in svc._labels.labelled
    assert sample("rdv_cmp_deadline_total", model="champion", outcome="missed") - before == 50


@pytest.mark.parametrize("retired_outputs", [0, 1])
def test_a_champion_of_an_earlier_schedule_gives_its_place_back_as_any_name(retired_outputs: int) -> None:
    """Every champion the schedules named was kept its place for good: with names changing at each
    promotion, the budget filled with retired ones and every new challenger was '_other' (a review).
    Silent for a window, or a sliver of it while a name waits (a forged record, a shadow at a low
    rate), a retired champion gives its place back (a review of the first mend, which kept it then)."""
    from services.control.schedule import Schedule

    svc = service(max_models=3)
    in_force = [Schedule(models=("retired", "champion"))]
    svc._schedules = SimpleNamespace(in_force=lambda: in_force[0])  # type: ignore[assignment]
    at = read(svc, [record(BASE_MS + i, [output("retired"), output("champion"), output("challenger")],
                              chosen="retired") for i in range(10)], 0)
    in_force[0] = Schedule(models=("champion", "challenger"), version=2)  # promoted
    later = [record(BASE_MS + 70_000 + i, [output("champion"), output("challenger"), output("newcomer"),
                                           *[output("retired")] * (i < retired_outputs)]) for i in range(400)]
    at = read(svc, later[:200], at)  # a window (60 s) later: the newcomer waits for a place
    svc.export()
    read(svc, later[200:], at)
    assert {"champion", "challenger", "newcomer"} == svc._labels.admitted
    assert "retired" not in svc._labels.reserved


@pytest.mark.parametrize("path", ["record", "batch"])
def test_ks_and_psi_against_the_champion_compare_the_requests_both_scored(path: str) -> None:
    """A model deployed halfway through drifting traffic, scoring each request as the champion did:
    against every score of the champion's in the window, its KS read 0.44 and PSI 2.8 where the
    report and the gates read 0 (a review). The record path and the batch path agree."""
    from services.compare_report.summary import summarize_records

    svc = service()
    rng = np.random.default_rng(1)
    records = []
    for i in range(4_000):
        score = float(rng.random() * 0.2 + i / 4_000 * 0.8)
        outs = [output("champion", score)] + ([output("challenger", score)] if i >= 2_000 else [])
        records.append(record(BASE_MS + i, outs))
    (read if path == "batch" else feed)(svc, records)
    svc.export()
    report = {model.name: model for model in summarize_records(records, champion="champion").models}
    assert report["challenger"].ks == 0 and report["challenger"].psi == 0
    assert m.WINDOW.value("rdv_cmp_score_ks", model="challenger", reference="champion") == pytest.approx(0, abs=0.01)
    assert m.WINDOW.value("rdv_cmp_score_psi", model="challenger", reference="champion") == pytest.approx(0, abs=0.01)


@pytest.mark.parametrize("path", ["record", "batch"])
@pytest.mark.parametrize("forged_champions", [5, 50])
def test_forged_records_changing_the_chosen_model_keep_a_bounded_number_of_pair_tables(
    path: str, forged_champions: int
) -> None:
    """OK records naming another chosen model each made a pair table for every model against each
    of them (a review: 2,450 tables, 439 MiB for one bucket). A bucket keeps the tables of the four
    champions that led the most records: the real one leads every real request, and its pairs are
    all counted while the forged records come, whether they are folded one by one or in a batch."""
    from services.comparison.window import MAX_CHAMPIONS

    svc = service()
    names = [f"forged-{k}" for k in range(50)]
    real = [record(BASE_MS + 2 * i, [output("champion", 0.9), output("challenger", 0.8)]) for i in range(300)]
    forged = [record(BASE_MS + 2 * i + 1, [output(name, 0.5) for name in names],
                     chosen=names[i % forged_champions]) for i in range(300)]
    (read if path == "batch" else feed)(svc, [r for pair in zip(real, forged, strict=True) for r in pair])
    view = svc.window.view()
    assert view.totals.pairs[("challenger", "champion")].n == 300
    for bucket in svc.window._live.values():
        assert len({champion for _model, champion in bucket.pairs}) <= MAX_CHAMPIONS


def test_the_champion_records_are_paired_against_keeps_its_tables_wherever_the_compactions_fall() -> None:
    """Five champions in one bucket (promotions and rollbacks): the one records are paired against
    now keeps its tables, and one dropped starts again, its count of records led with them. A
    dropped champion that came back was kept on the records its dropped tables had led, and the
    current one read 200 of its 250 pairs or 250 by where the compactions fell (a review)."""

    def led_by(champion: str, n: int, start: int) -> list[dict[str, Any]]:
        return [record(BASE_MS + start + i, [output(champion, 0.9), output("challenger", 0.8)], chosen=champion)
                for i in range(n)]

    first = [r for at, name in enumerate("ABCD") for r in led_by(name, 100, 100 * at)] + led_by("E", 50, 400)
    second = led_by("E", 200, 450)
    pairs = []
    for parts in ([first, second], [first + second]):
        svc = service()
        for part in parts:
            feed(svc, part)  # compacts the window at its end, as a batch of COMPACT_EVERY outputs does
        pairs.append({champion: table.n for (model, champion), table in svc.window.view().totals.pairs.items()
                      if model == "challenger"})
    assert pairs[0] == pairs[1] and pairs[0]["E"] == 250 and len(pairs[0]) == 4


def test_names_of_a_sliver_of_the_window_give_their_places_to_a_model_waiting_for_one() -> None:
    """Forged records naming as many models as --max-models, one now and then, kept every name in
    the window: a challenger deployed later was counted as '_other' for good, its series never
    shown (a review). Every model scores every request: a name with under 1% of the window's
    records gives its place while another waits."""
    svc = service(max_models=4)
    forged = [record(BASE_MS + i, [output(f"forged-{k}", 0.5) for k in range(4)], chosen="forged-0")
              for i in range(0, 2)]
    feed(svc, forged)
    real = [record(BASE_MS + 10 + i, [output("champion", 0.9), output("newcomer", 0.8)]) for i in range(400)]
    feed(svc, real[:200])
    svc.export()  # "champion" and "newcomer" waited: the forged names, 2 records of 202, give their places
    assert m.WINDOW.value("rdv_cmp_window_outputs", model="newcomer") is None  # counted as '_other' so far
    feed(svc, real[200:])
    svc.export()
    assert m.WINDOW.value("rdv_cmp_window_outputs", model="newcomer") == 200
    assert m.WINDOW.value("rdv_cmp_window_outputs", model="champion") == 200


def test_a_flood_of_forged_records_never_takes_the_places_of_the_models_scoring_every_request() -> None:
    """Against the window's records, 100 forged records per real one made the champion and the
    challenger a sliver: they gave their places to the forged names (a review of the change that
    made slivers give theirs). The share is of the champion's outputs, and the champion keeps its."""
    svc = service(max_models=4)
    real = [record(BASE_MS + 2 * i, [output("champion", 0.9), output("challenger", 0.8)]) for i in range(200)]
    forged = [record(BASE_MS + 2 * (i // 100) + 1, [output(f"forged-{i % 3}", 0.5)], status="ERROR", chosen=None)
              for i in range(20_000)]
    feed(svc, real + forged + [record(BASE_MS + 401, [output("forged-new", 0.5)], status="ERROR", chosen=None)])
    svc.export()
    assert {"champion", "challenger"} <= svc._labels.admitted
    assert m.WINDOW.value("rdv_cmp_window_outputs", model="challenger") == 200


def test_names_that_gave_their_places_back_are_exported_as_other_not_under_their_own() -> None:
    """Given back, a sparse name stayed in the window under its own name and was exported so: a
    few forged names at each export made 93 label values with --max-models 5 (a review)."""
    svc = service(max_models=4)
    at, names = BASE_MS, set()
    for period in range(8):
        real = [record(at + i, [output("champion", 0.9), output("challenger", 0.8)]) for i in range(100)]
        forged = [record(at + 100 + k, [output("champion", 0.9), output(f"forged-{period}-{k}", 0.5)])
                  for k in range(3)]
        feed(svc, real + forged)
        at += 200
        svc.export()
        names |= {labels[0] for labels, _v in m.WINDOW._samples["rdv_cmp_window_outputs"]}
    assert len(names - {m.OTHER}) <= 4, sorted(names)
    assert {"champion", "challenger", m.OTHER} <= names
    outputs = {labels[0]: value for labels, value in m.WINDOW._samples["rdv_cmp_window_outputs"]}
    assert sum(outputs.values()) == 8 * (200 + 3 * 2)  # every output of the window, under some label


def test_models_that_left_the_window_vanish_from_the_gauges() -> None:
    svc = service()
    feed(svc, [record(BASE_MS, [output("champion"), output("old")])])
    svc.export()
    assert m.WINDOW.value("rdv_cmp_window_outputs", model="old") == 1
    feed(svc, [record(BASE_MS + 120_000, [output("champion")])])  # two windows later
    svc.export()
    assert m.WINDOW.value("rdv_cmp_window_outputs", model="old") is None
    assert m.WINDOW.value("rdv_cmp_window_outputs", model="champion") == 1


def test_label_budget_folds_excess_model_names_into_other() -> None:
    svc = service(max_models=3)
    feed(svc, [record(BASE_MS + i, [output("champion"), output(f"m{i}")]) for i in range(5)])
    svc.export()
    names = {labels[0] for labels, _v in m.WINDOW._samples["rdv_cmp_window_outputs"]}
    assert names == {"champion", "m0", "m1", m.OTHER}
    assert m.WINDOW.value("rdv_cmp_window_outputs", model=m.OTHER) == 3


def test_scores_near_the_float_range_give_no_figure_instead_of_killing_the_service() -> None:
    """A score of 1e200 (anyone may write the log, and no model's score is bounded) made the
    correlation's `sum**2` raise OverflowError in export: the comparison service died, again at
    each export while the record stayed in the window."""
    svc = service()
    feed(svc, [record(BASE_MS + i, [output("champion", 0.5 + i / 100), output("big", 1e200 * (i + 1))])
               for i in range(5)])
    svc.export()  # raised OverflowError
    pairs = {labels for labels, _v in m.WINDOW._samples["rdv_cmp_window_pairs"]}
    correlated = {labels for labels, _v in m.WINDOW._samples["rdv_cmp_score_correlation"]}
    assert ("big", "champion") in pairs and ("big", "champion") not in correlated  # no figure: none given


def test_a_failure_to_compute_the_figures_leaves_the_last_ones_and_is_counted(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = service()
    feed(svc, [record(BASE_MS, [output("champion"), output("challenger")])])
    svc.export()
    before = sample("rdv_cmp_export_failures_total")
    published = dict(m.WINDOW._samples)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise ValueError("a figure that cannot be computed")

    monkeypatch.setattr(m, "window_samples", broken)
    svc.export()
    assert sample("rdv_cmp_export_failures_total") == before + 1
    assert dict(m.WINDOW._samples) == published


def test_model_names_too_long_for_a_metric_label_are_counted_as_other() -> None:
    """50 records with 400 kB names made a 439 MB /metrics body, 8 s to build at every scrape."""
    svc = service()
    feed(svc, [record(BASE_MS, [output("champion"), output("n" * 100_000)])])
    svc.export()
    names = {labels[0] for labels, _v in m.WINDOW._samples["rdv_cmp_window_outputs"]}
    assert names == {"champion", m.OTHER}


def test_a_record_far_ahead_never_moves_the_window_past_half_its_length() -> None:
    """The tolerance equalled the window (300 s): one record 290 s ahead emptied it."""
    assert ComparisonSettings(window_s=300).future_tolerance_ms() == 120_000  # the default
    assert ComparisonSettings(window_s=60, future_tolerance_s=300).future_tolerance_ms() == 30_000


def test_implausible_records_are_rejected_as_bad_input() -> None:
    with pytest.raises(DecodeFailed, match="in the future"):
        validate(record(BASE_MS + 10_000_000, []), latest_ok_ms=BASE_MS)
    with pytest.raises(DecodeFailed, match="epoch milliseconds"):
        validate(record(0, []), latest_ok_ms=BASE_MS)
    with pytest.raises(DecodeFailed, match="epoch milliseconds since 2000, got 1000"):  # as `compare` leaves out
        validate(record(1000, []), latest_ok_ms=BASE_MS)
    with pytest.raises(DecodeFailed, match="latency_ms -1"):  # it would count as a deadline met
        validate(record(BASE_MS, [output("champion", latency=-1.0)]), latest_ok_ms=BASE_MS)
    with pytest.raises(DecodeFailed, match="latency_ms nan"):
        validate(record(BASE_MS, [output("champion", latency=float("nan"))]), latest_ok_ms=BASE_MS)
    with pytest.raises(DecodeFailed, match="deadline must be epoch milliseconds"):
        validate({**record(BASE_MS, [output("champion")]), "deadline": -(2**63) + 5}, latest_ok_ms=BASE_MS)
    validate(record(BASE_MS, [output("champion")]), latest_ok_ms=BASE_MS)


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ConfigError, match="--buckets"):
        ComparisonSettings(bootstrap="x", buckets=0).validate()
    with pytest.raises(ConfigError, match="--start-from"):
        ComparisonSettings(bootstrap="x", start_from="middle").validate()
    assert ComparisonSettings(bootstrap="x").bucket_ms() == 30_000
    assert ComparisonSettings(bootstrap="x", topic_prefix="p.").group_id() == "p.comparison"


def test_every_model_is_also_measured_against_the_canary() -> None:
    import numpy as np

    from services.comparison import metrics as m
    from services.comparison.window import SlidingWindow

    window = SlidingWindow(bucket_ms=10_000, buckets=6)
    rng = np.random.default_rng(5)
    for i in range(400):
        outputs = [
            {"model": "champion", "version": "1", "score": float(rng.uniform()), "label": "a", "error": None,
             "latency_ms": 5.0, "compute_ms": 1.0, "late": False},
            {"model": "canary", "version": "1", "score": float(rng.uniform(0.5, 1.0)), "label": "a", "error": None,
             "latency_ms": 5.0, "compute_ms": 1.0, "late": False},
        ]
        window.add({"request_id": str(i), "created_at": 1_000_000 + i, "deadline": 1_000_200 + i,
                    "answered_at": 1_000_010 + i, "status": "OK", "chosen_model": "champion", "outputs": outputs},
                   champion="champion")
    samples = m.window_samples(window.view(), "champion", {}, {}, canary="canary")
    ks = dict(samples["rdv_cmp_score_ks"])
    assert ("champion", "canary") in ks and ("canary", "canary") not in ks
    assert 0.4 < ks[("champion", "canary")] < 0.6  # U(0,1) vs U(0.5,1): KS = 0.5


def test_the_deadline_rule_is_one_rule_for_one_record_and_for_columns() -> None:
    rng = np.random.default_rng(3)
    errors = rng.random(500) < 0.2
    missing = rng.random(500) < 0.1
    latency = rng.uniform(0, 400, 500)
    budget = rng.choice([100.0, 200.0, 300.0], 500)
    scalar = [met_deadline("x" if e else None, None if m else 0.5, float(lat), float(b))
              for e, m, lat, b in zip(errors, missing, latency, budget, strict=True)]
    columns = met_deadline_array(~errors & ~missing, latency, budget)
    assert list(columns) == scalar
    assert 0 < sum(scalar) < 500


@pytest.mark.parametrize("labelled", [0, 2])
def test_the_agreement_gauge_counts_a_request_without_a_label_as_a_disagreement_as_the_report_does(
    labelled: int,
) -> None:
    """A challenger that labelled 2 of 200 paired requests showed an agreement of 1.0 beside
    200 pairs, and one that labelled none had no gauge: the alert on it (< 0.95 with >= 100 pairs)
    could not fire. The report's column said 1.0 as well (a review)."""
    svc = service()
    records = []
    for i in range(200):
        challenger = output("challenger", 0.9) if i < labelled else {**output("challenger", 0.9), "label": None}
        records.append(record(BASE_MS + i * 10, [output("champion", 0.9), challenger]))
    feed(svc, records)
    svc.export()
    assert m.WINDOW.value("rdv_cmp_window_pairs", model="challenger", champion="champion") == 200
    expected = labelled / 200
    assert m.WINDOW.value("rdv_cmp_agreement_ratio", model="challenger", champion="champion") == pytest.approx(expected)
    row = next(r for r in summarize_records(records, champion="champion").models if r.name == "challenger")
    assert row.agreement == pytest.approx(expected)


def test_no_agreement_gauge_when_the_champion_gives_no_labels() -> None:
    """Regressors: nothing to agree on, so no gauge (0 would fire the alert)."""
    svc = service()
    unlabelled = [{**output(name, 0.9), "label": None} for name in ("champion", "challenger")]
    feed(svc, [record(BASE_MS + i * 10, unlabelled) for i in range(200)])
    svc.export()
    assert m.WINDOW.value("rdv_cmp_window_pairs", model="challenger", champion="champion") == 200
    assert m.WINDOW.value("rdv_cmp_agreement_ratio", model="challenger", champion="champion") is None


def test_label_pairs_beyond_the_bound_are_counted_together_and_agreement_stays_exact() -> None:
    """A model putting an id in its label made one confusion entry per request: 50,000 records
    of 1 kB labels took 58 MB of the comparison service's window."""
    from services.stats.distributions import MAX_LABEL_PAIRS, PairedLabels

    labels, other = PairedLabels(), PairedLabels()
    for i in range(MAX_LABEL_PAIRS + 3_000):
        labels.add(f"id-{i}", f"id-{i}" if i % 3 == 0 else f"other-{i}")
    other.add("yes", "yes", 5)
    labels.merge(other)
    assert len(labels.confusion) <= MAX_LABEL_PAIRS + 2
    agreeing = sum(1 for i in range(MAX_LABEL_PAIRS + 3_000) if i % 3 == 0) + 5
    assert labels.n == MAX_LABEL_PAIRS + 3_005
    assert labels.agreement() == pytest.approx(agreeing / labels.n)


def test_labels_longer_than_the_bound_are_counted_together_and_agreement_stays_exact() -> None:
    """1,000 records of 20 kB labels kept 20 MB in the window and sent 40 kB lines to every scrape."""
    from services.stats.distributions import DIFFERENT_LABELS, LONGEST_LABEL, OTHER_LABELS, PairedLabels

    labels = PairedLabels()
    long = ["x" * (LONGEST_LABEL + 1) + str(i) for i in range(50)]
    for i, label in enumerate(long):
        labels.add(label, label if i % 2 == 0 else "short")  # 25 agree, 25 do not
    labels.add("x" * LONGEST_LABEL, "x" * LONGEST_LABEL)  # at the bound: its own entry
    assert dict(labels.confusion) == {(OTHER_LABELS, OTHER_LABELS): 25, (OTHER_LABELS, DIFFERENT_LABELS): 25,
                                      ("x" * LONGEST_LABEL, "x" * LONGEST_LABEL): 1}
    assert labels.agreement() == pytest.approx(26 / 51)


def test_one_forged_record_of_many_names_does_not_count_every_model_as_other_for_good() -> None:
    """The label budget was first come, first served, for good: one record naming --max-models
    invented models made every later model 'other', the champion too, and no agreement or
    distance gauge was exported again (a review's experiment). Names no longer in the window give
    their places back at an export, when the budget is full."""
    svc = service(max_models=5)
    feed(svc, [record(BASE_MS, [output(f"forged-{i}") for i in range(5)], chosen=None, status="TIMEOUT")])
    svc.export()  # the budget full, every name in the window: nothing given back
    assert svc._labels.full and "forged-0" in svc._labels.admitted
    rng = np.random.default_rng(10)
    start = BASE_MS + 60_000
    for second in range(0, 130, 5):  # genuine traffic, exported every 5 s as the service does
        scores = rng.random(50)
        feed(svc, [record(start + second * 1_000 + i * 100, [output("champion", float(s)),
                                                             output("challenger", 1.0 - float(s))])
                   for i, s in enumerate(scores)])
        svc.export()
    assert svc.window.models() == {"champion", "challenger"}
    assert not any(name.startswith("forged") for name in svc._labels.admitted)
    assert m.WINDOW.value("rdv_cmp_champion_info", model="champion") == 1.0
    assert m.WINDOW.value("rdv_cmp_agreement_ratio", model="challenger", champion="champion") == 0.0


@pytest.mark.parametrize("how", ["rewound", "lost", "revoked, its commit failed"])
def test_records_read_again_from_the_committed_offsets_are_not_counted_twice(how: str) -> None:
    """After a rewind (a lost dead letter voids the work since the last commit), partitions lost
    uncommitted, or revoked when their commit failed (the skeleton logs it and goes on; a single
    instance gets them back), the same records come again: the window counted them twice (reviews)."""
    svc = service()
    records = [record(BASE_MS + i * 10, [output("champion", 0.9), output("challenger", 0.9)]) for i in range(100)]
    read(svc, records)
    if how == "rewound":
        svc.on_rewind()
    else:
        svc.on_released([TopicPartition("rdv.log", 0)], lost=how == "lost")
    read(svc, records)
    svc.export()
    assert m.WINDOW.value("rdv_cmp_window_records") == 100
    assert m.WINDOW.value("rdv_cmp_window_pairs", model="challenger", champion="champion") == 100


def test_a_partition_revoked_after_its_work_was_committed_keeps_the_window() -> None:
    """Committed, its records are not read again by this instance: what the window holds stays."""
    svc = service()
    read(svc, [record(BASE_MS + i * 10, [output("champion", 0.9), output("challenger", 0.9)]) for i in range(100)])
    svc.on_committed(svc.finished_offsets())
    svc.on_released([TopicPartition("rdv.log", 0)], lost=False)
    svc.export()
    assert m.WINDOW.value("rdv_cmp_window_records") == 100


@pytest.mark.parametrize("seed", range(5))
def test_a_model_with_a_few_distinct_scores_reads_no_drift_against_its_own_distribution(seed: int) -> None:
    """A canary of four leaves: the window's sketch, merged from small batches, spreads each pile
    of equal scores over centroids a few floating-point steps apart, and the sketches read KS
    0.40-0.46 and PSI 1.3-2.1 where the exact figures are below 0.03: its drift alert fired with
    nothing changed (a review)."""
    from functools import reduce

    from services.stats.distributions import QuantileSketch, ks_exact, ks_statistic, psi, psi_exact

    leaves, shares = np.array([0.0, 0.091, 0.276, 0.953]), [0.3, 0.05, 0.05, 0.6]
    rng = np.random.default_rng(seed)
    before, after = leaves[rng.choice(4, 5000, p=shares)], leaves[rng.choice(4, 3000, p=shares)]
    reference = QuantileSketch.of(before.tolist())
    window = reduce(QuantileSketch.merged, [QuantileSketch.of(after[k:k + 20].tolist()) for k in range(0, 3000, 20)])
    assert abs(ks_statistic(reference, window) - ks_exact(before, after)) < 0.01
    assert abs(psi(reference, window) - psi_exact(before, after)) < 0.01
    moved = np.where(after == 0.953, 0.276, after)  # a real drift still reads as one
    drifted = QuantileSketch.of(moved.tolist())
    assert abs(ks_statistic(reference, drifted) - ks_exact(before, moved)) < 0.01


def test_versions_idle_for_a_window_give_their_places_back_when_the_version_budget_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two models deploying version after version: from the ninth on (max_models 2, 8 places) every
    version was counted as 'other' for good, the models being still in the window; and names past
    the model budget took places as ('other', version) that nothing gave back (a review)."""
    from confluent_kafka import Message

    from services.comparison import service as service_module
    from services.core.codec import codec

    clock = [1_000.0]
    monkeypatch.setattr(service_module.time, "monotonic", lambda: clock[0])
    svc = service(max_models=2)
    encode = codec("comparison").encode
    offset = 0

    def batch(version: str, *extra: str) -> None:
        nonlocal offset
        records = [record(BASE_MS + offset + i, [output("champ", version=version), output("chal", version=version),
                                                 *(output(name, version=version) for name in extra)])
                   for i in range(3)]
        svc.on_batch([Message(topic="rdv.log", partition=0, offset=offset + i, value=encode(r))
                      for i, r in enumerate(records)])
        offset += len(records)
        svc.export()

    batch("v1", "junk1", "junk2")  # two names past the budget: counted as m.OTHER, taking no version place
    for v in range(2, 12):
        clock[0] += svc.settings.window_s + 1  # the last version's outputs a window ago
        batch(f"v{v}")
        assert sample("rdv_cmp_outputs_total", model="champ", version=f"v{v}", outcome="ok") == 3, v
    assert sample("rdv_cmp_outputs_total", model="champ", version=m.OTHER, outcome="ok") in (None, 0.0)
    assert (m.OTHER, "v1") not in svc._labels._versions


@pytest.mark.parametrize("how", ["rewind", "lost"])
def test_records_read_again_after_a_rewind_or_a_loss_are_counted_once(how: str) -> None:
    """The window was emptied so that re-read records were not counted twice there; the lifetime
    counters counted them twice (a review: 150 records read, rewound, read again: +300)."""
    from confluent_kafka import Message, TopicPartition

    from services.core.codec import codec

    svc = service()
    encode = codec("comparison").encode
    version = f"counted-once-{how}"
    records = [record(BASE_MS + i, [output("champ", version=version), output("chal")]) for i in range(150)]

    def read(first: int, last: int) -> None:
        svc.on_batch([Message(topic="rdv.log", partition=0, offset=i, value=encode(records[i]))
                      for i in range(first, last)])

    before = sample("rdv_cmp_records_total") or 0.0
    read(0, 100)  # read, not committed
    if how == "rewind":
        svc.on_rewind()
    else:
        svc.on_released([TopicPartition("rdv.log", 0)], lost=True)
    read(0, 60)  # again, in two batches, then on past where it was
    read(60, 150)
    svc.export()
    assert sample("rdv_cmp_records_total") - before == 150
    assert sample("rdv_cmp_outputs_total", model="champ", version=version, outcome="ok") == 150
    assert m.WINDOW.value("rdv_cmp_window_records") == 150  # every one in the window, once
    assert svc._counted_to == {}


def test_a_bad_record_read_again_after_a_rewind_is_dead_lettered_again_and_counted_once() -> None:
    """Its letter may have been lost with the position, so it is sent again; the decode-error
    counter counted it again too (a review)."""
    svc = service()
    letters: list[int] = []
    svc._dead = SimpleNamespace(send=lambda msg, err: letters.append(msg.offset()))  # type: ignore[assignment]
    encode = codec("comparison").encode
    values = [encode(record(BASE_MS + i, [output("champion")])) for i in range(5)]
    values[2] = b"\x00not a comparison record"
    labels = {"service": "comparison", "topic": "rdv.log-bad-again", "error": "DecodeFailed"}
    before = sample("rdv_decode_errors_total", **labels)

    def read() -> None:
        svc.on_batch([Message(topic="rdv.log-bad-again", partition=0, offset=i, value=v) for i, v in enumerate(values)])

    read()
    svc.on_rewind()
    read()
    assert letters == [2, 2]
    assert sample("rdv_decode_errors_total", **labels) - before == 1


def test_raw_values_between_compactions_are_bounded_by_outputs_not_records() -> None:
    """Compacted every so many records, a log of 300 models a record held 3 million raw values
    (~280 MB) before the first compaction (a review)."""
    from services.comparison.service import COMPACT_EVERY

    def raw_values(svc: ComparisonService) -> int:
        return sum(len(stats.new_latencies) + len(stats.new_scores) for bucket in svc.window._live.values()
                   for stats in bucket.models.values()) + sum(
            2 * len(pair.new_model_scores) for bucket in svc.window._live.values() for pair in bucket.pairs.values())

    svc, models, batch = service(), [f"m{k}" for k in range(100)], 10
    codec_ = codec("comparison")
    most = 0
    for start in range(0, 500, batch):  # 50,000 outputs: compacted at least once
        svc.on_batch([Message(topic="rdv.log", partition=0, offset=i, value=codec_.encode(
            record(BASE_MS + i, [output(name, 0.5) for name in models]))) for i in range(start, start + batch)])
        most = max(most, raw_values(svc))
    per_output = 4  # a latency and a score, and a pair's two scores
    assert 0 < most <= per_output * (COMPACT_EVERY + batch * len(models))


@pytest.mark.parametrize("scale", [1.0, 1e-9, 1e-12])
def test_drift_reads_the_same_whatever_the_scores_scale(scale: float) -> None:
    """The sketches' CDF was read 1e-9 away from each probe at least: scores below that read KS
    and PSI 0 whatever their drift, and a drift alert could never fire for them (a review)."""
    from services.stats.distributions import QuantileSketch, ks_exact, ks_statistic, psi, psi_exact

    rng = np.random.default_rng(3)
    before, after = rng.beta(2, 5, 5000) * scale, rng.beta(2.6, 5, 5000) * scale
    reference, current = QuantileSketch.of(before.tolist()), QuantileSketch.of(after.tolist())
    assert ks_exact(before, after) > 0.1
    assert abs(ks_statistic(reference, current) - ks_exact(before, after)) < 0.01
    assert abs(psi(reference, current) - psi_exact(before, after)) < 0.01


def test_large_scores_a_unit_apart_are_read_at_their_own_value() -> None:
    """Scores near 1e9, a unit apart: 1e-9 of the value is the next score (PSI read half the exact)."""
    rng = np.random.default_rng(5)
    before = 1e9 + rng.integers(0, 20, 4000).astype(float)
    after = 1e9 + rng.integers(3, 23, 4000).astype(float)
    exact = psi_exact(before, after)
    assert exact > 0.5
    assert abs(psi(QuantileSketch.of(before.tolist()), QuantileSketch.of(after.tolist())) - exact) < 0.05 * exact


def test_psi_reads_drift_when_every_reference_edge_is_zero() -> None:
    """Edges at 0 were nudged by 1e-10: scores of 1e-11 counted as 0, PSI 0 against an exact 1.3 (a review)."""
    rng = np.random.default_rng(11)
    before = np.concatenate([np.zeros(9500), rng.uniform(0, 1e-11, 500)])
    after = np.concatenate([np.zeros(5000), rng.uniform(0, 1e-11, 5000)])
    exact = psi_exact(before, after)
    assert exact > 1.0
    assert abs(psi(QuantileSketch.of(before.tolist()), QuantileSketch.of(after.tolist())) - exact) < 0.05 * exact


def test_two_folded_labels_that_differ_are_no_agreement_in_the_matrix() -> None:
    """Rare classes a model always swaps, and pairs counted as different labels already, were
    drawn in (other, other): no disagreement off the diagonal (a review)."""
    labels = PairedLabels()
    for i in range(10):
        labels.add(f"c{i}", f"c{i}", 100)
    labels.add("rare-a", "rare-b", 30)
    labels.add("rare-b", "rare-b", 5)
    labels.add("x" * 200, "y" * 200, 7)  # (OTHER_LABELS, DIFFERENT_LABELS) already
    names, counts = labels.matrix(10)
    assert names[-2:] == [OTHER_LABELS, DIFFERENT_LABELS] and counts.sum() == labels.n
    assert counts[-2, -2] == 5 and counts[-2, -1] == 37 and counts[-1].sum() == 0
    assert np.trace(counts) == labels.agreeing


def test_the_canary_is_exported_by_name_for_the_rules_whether_or_not_it_scored() -> None:
    """The rules named the canary 'canary': one named otherwise never drifted and was paged on as
    a challenger (a review). They read rdv_cmp_canary_info now; none without a canary."""
    svc = service(canary="fixed-v1")
    read(svc, [record(BASE_MS + i, [output("champion", 0.5), output("challenger", 0.5)]) for i in range(10)])
    svc.export()
    assert m.WINDOW.value("rdv_cmp_canary_info", model="fixed-v1") == 1.0
    assert m.WINDOW.value("rdv_cmp_canary_info", model="canary") is None
    none = service(canary="")
    read(none, [record(BASE_MS, [output("champion", 0.5)])])
    none.export()
    assert m.WINDOW.value("rdv_cmp_canary_info", model="fixed-v1") is None
