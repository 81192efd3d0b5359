"""The comparison service's batch fold (fold.py) against its record-by-record fold (no Kafka).

Both folds get the same batches of random Comparison records — up to four models per record
(none, now and then twice the same), errors, null / NaN / infinite scores, null labels, late
outputs, every status, a champion that changes, records the window already slid past, jumps
forward, a batch without a single output — and must
leave exactly the same state: counters, champion, references, window (its raw value lists in
order, before they are folded into sketches), label series.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.comparison import fold
from services.comparison import metrics as m
from services.comparison.service import ComparisonService, validate
from services.comparison.settings import ComparisonSettings
from services.comparison.window import PairStats, References, SlidingWindow
from services.core.codec import codec
from services.core.compiled_decode import decode
from services.core.errors import DecodeFailed

BASE_MS = 1_700_000_000_000
MODELS = ("champion", "challenger", "canary", "shadow")


def random_record(rng: np.random.Generator, created: int) -> dict[str, Any]:
    outputs = []
    # None, or up to all of them, each once (a record repeating a model is refused: the last test).
    for model in rng.choice(MODELS, size=int(rng.integers(0, 5)), replace=False).tolist():
        error = "ValueError: x" if rng.random() < 0.1 else None
        score = None if error or rng.random() < 0.05 else float(rng.choice([rng.random(), np.nan, np.inf],
                                                                             p=[0.94, 0.03, 0.03]))
        label = None if error or rng.random() < 0.3 else str(rng.choice(["a", "b", "c"]))
        outputs.append({"model": model, "version": str(rng.choice(["v1", "v2"])), "score": score, "label": label,
                        "error": error, "latency_ms": float(rng.uniform(0, 400)), "compute_ms": 1.0,
                        "late": bool(rng.random() < 0.2)})
    # As the rendezvous writes them: the chosen model is one of the record's outputs, or none.
    chosen = str(rng.choice([o["model"] for o in outputs])) if outputs and rng.random() < 0.8 else None
    return {"request_id": f"r{created}", "created_at": created, "deadline": created + int(rng.integers(50, 300)),
            "answered_at": created + 5, "status": str(rng.choice(["OK", "FALLBACK", "TIMEOUT", "ERROR"])),
            "chosen_model": chosen, "reason": "", "schedule": "s", "schedule_version": 1, "outputs": outputs}


def random_batches(seed: int, batches: int = 6, size: int = 80) -> list[list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    created, result = BASE_MS, []
    for _ in range(batches):
        batch = []
        for _ in range(size):
            step = int(rng.choice([0, 3, 40, -900, 700], p=[0.2, 0.6, 0.14, 0.03, 0.03]))
            created = max(BASE_MS, created + step)  # now and then far back (stale) or far ahead
            batch.append(random_record(rng, created))
        result.append(batch)
    return result


def service(override: str, max_models: int) -> ComparisonService:
    settings = ComparisonSettings(bootstrap="unused:1", champion=override, max_models=max_models)
    settings.validate()
    svc = ComparisonService(settings)
    svc.window = SlidingWindow(bucket_ms=100, buckets=4)  # small, so the batches slide it often
    svc.references = References(size=40)  # fills up within the run
    return svc


def sums(pair: PairStats) -> tuple[Any, ...]:
    """A pair's paired-score sums, to 10 significant digits (the batch fold adds them in
    another order than the record path: the last bits may differ)."""
    pair.compact()
    scores = pair.scores
    return (scores.n, *(float(f"{x:.10g}") for x in (scores.sum_abs_diff, scores.mean_a, scores.mean_b,
                                                   scores.m2_a, scores.m2_b, scores.c_ab)))


def state(svc: ComparisonService, tallies: list[m.Tally]) -> dict[str, Any]:
    window = svc.window
    buckets = {
        key: (b.records, dict(b.statuses),
              {name: (s.errors, s.late, s.met, s.missed, s.new_latencies, s.new_scores)
               for name, s in b.models.items()},
              {key: (p.n, sums(p), dict(p.labels.confusion))
               for key, p in b.pairs.items()})
        for key, b in window._live.items()
    }  # fmt: skip
    return {
        "tallies": [(t.records, t.stale, dict(t.answers), t.outputs) for t in tallies],
        "champion": svc.champion.current,
        "references": (dict(svc.references._filling), sorted(svc.references.frozen)),
        "window": (window.newest_ms, window.stale, window._newest_key, buckets),
        "series": (dict(svc._series), sorted(svc._touched)),
    }


@pytest.mark.parametrize("override", ["", "challenger"])
@pytest.mark.parametrize("max_models", [10, 2])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batch_fold_leaves_the_state_one_record_at_a_time_leaves(seed: int, max_models: int, override: str) -> None:
    batches = random_batches(seed)
    batches.insert(3, [{**r, "outputs": [], "chosen_model": None} for r in batches[3]])
    expected = assert_same_state(batches, override, max_models)
    assert expected["window"][1] > 0, "the records should include some the window had slid past"
    assert expected["references"][1], "a reference should have frozen"


def test_a_batch_of_many_names_folds_as_record_by_record() -> None:
    """Hundreds of model, version and label names in one batch: their codes span a range far wider
    than the batch (kernels.dense makes them dense before the one-pass tables)."""
    renamed = []
    for i, record in enumerate(random_batches(4, batches=1, size=300)[0]):
        outputs = [{**o, "model": f"{o['model']}-{i}", "version": f"v{i}",
                    "label": None if o["label"] is None else f"{o['label']}{i}"} for o in record["outputs"]]
        chosen = outputs[0]["model"] if outputs and record["chosen_model"] else None
        renamed.append({**record, "outputs": outputs, "chosen_model": chosen})
    for override in ("", "champion-0"):
        assert_same_state([renamed], override, max_models=500)


def test_past_the_bound_of_label_pairs_the_same_pairs_keep_an_entry_of_their_own_batch_or_record() -> None:
    """The batch fold added a bucket's label pairs in code order, the record path in record order:
    past MAX_LABEL_PAIRS each kept different ones (a review)."""
    from services.stats.distributions import MAX_LABEL_PAIRS

    records = []
    for i in range(MAX_LABEL_PAIRS + 900):
        outputs = [{"model": model, "version": "v1", "score": 0.5, "label": label, "error": None,
                    "latency_ms": 5.0, "compute_ms": 1.0, "late": False}
                   for model, label in (("champion", "A" if i % 2 else "B"), ("challenger", f"m{i}"))]
        records.append({"request_id": f"r{i}", "created_at": BASE_MS, "deadline": BASE_MS + 100,
                        "answered_at": BASE_MS + 5, "status": "OK", "chosen_model": "champion", "reason": "",
                        "schedule": "s", "schedule_version": 1, "outputs": outputs})
    half = len(records) // 2
    assert_same_state([records[:half], records[half:]], "", 10)


def assert_same_state(batches: list[list[dict[str, Any]]], override: str, max_models: int) -> dict[str, Any]:
    """Folds `batches` record by record and batch by batch; asserts the same state; returns it."""
    comparisons = codec("comparison")
    one_by_one, at_once = service(override, max_models), service(override, max_models)
    tallies_one, tallies_all = [], []
    for records in batches:
        tally = m.Tally()
        for record in records:
            one_by_one.observe(comparisons.decode(comparisons.encode(record)), tally)
        tallies_one.append(tally)
        batch = decode([comparisons.encode(r) for r in records], comparisons.header)
        assert fold.valid(batch, BASE_MS * 2)
        tally = m.Tally()
        fold.fold(batch, at_once._series_labels, at_once._labels.model, at_once.champion, at_once.references,
                  at_once.window, tally)  # fmt: skip
        tallies_all.append(tally)
    expected, got = state(one_by_one, tallies_one), state(at_once, tallies_all)
    for part in expected:  # one part at a time, for a readable failure
        assert _nan_safe(got[part]) == _nan_safe(expected[part]), part
    return expected


def _nan_safe(value: Any) -> Any:
    """NaN != NaN: compare NaN scores by name."""
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, dict):
        return {_nan_safe(k): _nan_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_nan_safe(v) for v in value)
    return value


@pytest.mark.parametrize("fault", ["created_at 0", "created_at 1970", "created_at ahead", "latency NaN",
                                   "latency negative"])
def test_a_batch_with_a_record_the_record_path_rejects_is_not_folded_at_once(fault: str) -> None:
    comparisons = codec("comparison")
    records = random_batches(7, batches=1, size=40)[0]
    victim = records[17]
    if fault == "created_at 0":
        victim["created_at"] = 0
    elif fault == "created_at 1970":  # a client whose clock was never set
        victim["created_at"] = 1000
    elif fault == "created_at ahead":
        victim["created_at"] = BASE_MS * 3
    elif fault == "latency negative":  # would count as a deadline met
        victim["outputs"][0]["latency_ms"] = -1.7e308
    else:
        victim["outputs"][0]["latency_ms"] = float("nan")
    batch = decode([comparisons.encode(r) for r in records], comparisons.header)
    assert not fold.valid(batch, BASE_MS * 2)


@pytest.mark.parametrize("batch", ["valid", "too small", "a garbage value", "a truncated value", "a null value",
                                   "created_at 0", "a negative deadline"])
def test_only_large_valid_batches_are_folded_at_once_and_others_are_left_untouched(batch: str) -> None:
    comparisons = codec("comparison")
    records = random_batches(11, batches=1, size=fold.MIN_RECORDS + 20)[0]
    if batch == "too small":
        records = records[: fold.MIN_RECORDS - 1]
    if batch == "created_at 0":
        records[5]["created_at"] = 0
    if batch == "a negative deadline":  # deadline - created_at would wrap: counted as met
        records[5]["deadline"] = -(2**63) + 5
    values: list[bytes | None] = [comparisons.encode(r) for r in records]
    if batch == "a garbage value":
        values[7] = b"\x00 not a comparison record"
    elif batch == "a truncated value":
        values[7] = values[7][:-3]  # type: ignore[index]
    elif batch == "a null value":
        values[7] = None
    svc = service("", 10)
    tally = svc._fold_at_once(values, BASE_MS * 2)
    assert (tally is not None) == (batch == "valid")
    assert tally is None or tally.records == len(records)
    assert (svc.window.newest_ms > 0) == (batch == "valid")


def test_a_failure_inside_the_batch_fold_leaves_the_batch_to_the_record_path(monkeypatch: pytest.MonkeyPatch) -> None:
    comparisons = codec("comparison")
    records = random_batches(12, batches=1, size=fold.MIN_RECORDS)[0]
    values: list[bytes | None] = [comparisons.encode(r) for r in records]

    def broken(*_args: Any) -> None:
        raise IndexError("a bug")

    monkeypatch.setattr(fold, "fold", broken)
    assert service("", 10)._fold_at_once(values, BASE_MS * 2) is None


def test_a_batch_with_a_record_that_repeats_a_model_is_left_to_the_record_path_which_refuses_that_record() -> None:
    """One record listing the candidate 200 times counted 200 pairs and 200 deadlines met."""
    rng = np.random.default_rng(5)
    records = [random_record(rng, BASE_MS + i) for i in range(fold.MIN_RECORDS + 20)]
    output = {"model": "challenger", "version": "v1", "score": 0.5, "label": "a", "error": None,
              "latency_ms": 3.0, "compute_ms": 1.0, "late": False}
    repeated = {**records[7], "outputs": [output] * 200}
    records[7] = repeated
    values: list[bytes | None] = [codec("comparison").encode(r) for r in records]
    svc = service("", 10)
    assert svc._fold_at_once(values, BASE_MS * 2) is None  # not valid as a batch
    with pytest.raises(DecodeFailed, match="'challenger' has more than one output"):
        validate(repeated, BASE_MS * 2)
    validate(records[6], BASE_MS * 2)  # its neighbours are valid


def test_names_too_long_to_be_labels_are_not_kept_as_keys() -> None:
    """The cache of (model, version) -> labels kept every raw name, 200 kB ones too, until the label
    budget was full, which a few real models never fill: 300 records held 60 MB for good (a review)."""
    svc = service("", 50)
    long_name = "x" * 200_000
    svc._series_labels("champion", "v1")
    assert svc._series_labels(long_name, "v1") == (m.OTHER, m.OTHER)
    assert svc._series_labels("challenger", "y" * 200_000) == ("challenger", m.OTHER)
    assert list(svc._series) == [("champion", "v1")]


def test_the_champion_and_canary_named_at_start_keep_their_labels_past_a_flood_of_names() -> None:
    """First come, first labelled: forged names right after a start took every place, and the
    --champion the service was told of was counted as 'other' until places were given back."""
    budget = m.LabelBudget(2, ("champion", "canary"))
    assert [budget.model(name) for name in ("forged-1", "forged-2", "forged-3")] == ["forged-1", "forged-2", m.OTHER]
    assert budget.model("champion") == "champion" and budget.model("canary") == "canary"
    assert budget.model("forged-4") == m.OTHER and budget.full


def test_a_model_named_other_keeps_its_own_label_apart_from_the_names_past_the_budget() -> None:
    """'other' is a name a model may have: it was also the label of every name past the budget,
    so a model named so was counted as them, and they as it (a review)."""
    budget = m.LabelBudget(1)
    assert budget.model("other") == "other"
    assert budget.model("one-too-many") == m.OTHER != "other"
    assert budget.version("other", "v1") == "v1"
