"""Per-model figures of a comparison report, computed from columns (services/compare_report/columns.py).

Every challenger is compared with the champion on the same requests (paired): label agreement
and confusion (`PairedLabels`), mean absolute score difference and correlation (`PairedScores`);
its whole score distribution against the champion's: KS statistic and PSI (`ks_exact`,
`psi_exact`, exact because the report holds every value). The math lives in
services/stats/distributions.py; this module only selects the values with numpy masks, so a million
records need no Python loop.

`summarize_records` builds a report from any iterable of Comparison-shaped dicts (a replay can
use it without Kafka); `summarize` from accumulated columns.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from services.compare_report.columns import STATUSES, Columns, Frame
from services.core.comparison_columns import repeating_a_model
from services.core.errors import ConfigError
from services.core.runtime import EARLIEST_PLAUSIBLE_MS, EARLIEST_PLAUSIBLE_YEAR, now_ms
from services.stats.deadline import champion_absent, met_deadline_array
from services.stats.distributions import PairedLabels, PairedScores, ks_exact, psi_exact

LATENCY_QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
CDF_PROBES = np.linspace(0.0, 1.0, 201)
QQ_PROBES = np.linspace(0.01, 0.99, 99)
TARGET_BUCKETS = 50
MAX_BUCKETS = 10_000
_NICE_BUCKETS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
_OK = STATUSES.index("OK")
_ERROR = STATUSES.index("ERROR")


class ChampionNotInRange(ConfigError):
    """The champion asked for has no output in the range (a gate says it in its own words)."""


@dataclass(frozen=True)
class ModelPlots:
    """What the HTML plots draw for one model (None where there is no champion to pair with)."""

    latency_cdf: tuple[np.ndarray, np.ndarray]  # latency (ms) at CDF_PROBES
    qq: tuple[np.ndarray, np.ndarray] | None = None  # (champion, model) score quantiles at QQ_PROBES
    agreement_over_time: np.ndarray | None = None  # per bucket of Report.bucket_starts; NaN = no pair
    confusion: tuple[list[str], np.ndarray] | None = None  # labels, counts[champion label][model label]


@dataclass(frozen=True)
class ModelSummary:
    """One table row. Paired figures are NaN for the champion itself and when nothing pairs."""

    name: str
    versions: tuple[str, ...]
    champion: bool
    n: int  # records with an output of this model
    errors: int
    late: int
    deadline_met: float  # share of n (+ absent): a usable score that arrived by the request's deadline
    latency_ms: dict[str, float]  # LATENCY_QUANTILES of created_at -> score arrived, error outputs not counted
    agreement: float  # of the requests the champion labelled and this model answered: the same label
    ks: float
    psi: float
    mad: float
    correlation: float
    paired: int  # records where both this model and the champion have a score
    plots: ModelPlots
    # For promotion gates (services/control/evidence.py), which must not pass on a sliver of the
    # traffic: the requests the champion answered from this model's first output on (the ones it
    # was expected to score too), how many of them it gave an output for at all, and how many it
    # scored by the deadline.
    expected: int = 0
    expected_output: int = 0
    expected_met: int = 0
    expected_champion_met: int = 0  # of `expected`, those the champion answered by the deadline
    # The champion's outputs and errors on the requests this model has an output for, for the
    # gate's default error clause.
    expected_champion_outputs: int = 0
    expected_champion_errors: int = 0
    labelled: int = 0  # requests the agreement is measured on (the champion labelled, this model answered)
    # Records answered (but ERROR) without an output of their champion, this model: each a deadline
    # it missed, as the live comparison counts them (`_absent_by_model`).
    absent: int = 0


@dataclass(frozen=True)
class Report:
    """A whole report: request-level counts and one summary per model (champion first)."""

    records: int
    champion: str | None
    champion_source: str
    models: tuple[ModelSummary, ...]
    statuses: dict[str, int]
    answered_by_deadline: float  # share of records answered (OK/FALLBACK) by their deadline
    first_ms: int | None  # created_at span of the records
    last_ms: int | None
    bucket_ms: int
    bucket_starts: np.ndarray
    source: str = ""  # where the records came from (topic and range), for titles
    notes: tuple[str, ...] = field(default=())  # e.g. records skipped, --max-records reached


def summarize_records(
    records: Iterable[Mapping[str, Any]], champion: str | None = None, bucket_ms: int | None = None, **extra: Any
) -> Report:
    """The report of Comparison-shaped dicts (e.g. produced by a replay instead of read from Kafka)."""
    return summarize(Columns.of(records).frame(), champion, bucket_ms, **extra)


def summarize(frame: Frame, champion: str | None = None, bucket_ms: int | None = None,
              only: Collection[str] | None = None, **extra: Any) -> Report:
    """The report of accumulated columns; `extra` fills `source` / `notes`. `only`: the models to
    give a row (a promotion gate needs two: every name in the log cost 0.5 ms, and one forged
    record naming 40,000 made a gate take 21 s; a review)."""
    frame, left_out = plausible(frame, now_ms())
    if left_out:
        extra["notes"] = (*extra.get("notes", ()), f"{left_out:,} records left out, as the live comparison leaves "
                          f"them out: created at no plausible time (before {EARLIEST_PLAUSIBLE_YEAR} or more than a "
                          "day ahead of this host's clock), a negative deadline, a latency that is negative or "
                          "not a finite number, or a model with two outputs in one record")
    champion_code, source = _champion(frame, champion)
    first, last = (int(frame.created_at.min()), int(frame.created_at.max())) if frame.records else (None, None)
    bucket = _bucket_ms(first, last, bucket_ms)
    starts = np.arange(first, last + 1, bucket, dtype=np.int64) if first is not None and last is not None else (
        np.zeros(0, dtype=np.int64))
    reference = _Reference.of(frame, champion_code)
    absent = _absent_by_model(frame, champion_code if source == "--champion" else None)
    if source != "--champion" and (frame.answered_at >= 0).any() and not (frame.status == _OK).any():
        extra["notes"] = (*extra.get("notes", ()), "no OK answer in the range, so no record has a champion to miss "
                          "it: name the champion with --champion to count the records without its output")
    # Each model's outputs by one sort, not one pass over every output per model: 16,000 forged
    # names took a report of 200,000 records 15 s, and `promote --require` with it (a review).
    order = np.argsort(frame.model, kind="stable")  # stable: each model's outputs in their order
    bounds = np.searchsorted(frame.model[order], np.arange(len(frame.models) + 1)).tolist()
    codes, notes = _rows(frame.models, bounds, reference.code, only)
    if notes:
        extra["notes"] = (*extra.get("notes", ()), *notes)
    models = [_model(frame, order[bounds[code] : bounds[code + 1]], code, reference, starts, bucket, int(absent[code]))
              for code in codes]
    models.sort(key=lambda m: (not m.champion, m.name))
    return Report(
        records=frame.records, champion=None if champion_code is None else frame.models[champion_code],
        champion_source=source, models=tuple(models), statuses=_statuses(frame),
        answered_by_deadline=_answered_by_deadline(frame), first_ms=first, last_ms=last, bucket_ms=bucket,
        bucket_starts=starts, **extra,
    )  # fmt: skip


# The models a report gives a row, at most: the log is anyone's to write, and every name in it cost
# its row's 0.5 ms and more (a forged record naming 40,000 models took a report 21 s; a review).
MAX_ROWS = 100


def _rows(models: tuple[str, ...], bounds: list[int], champion: int | None,
          only: Collection[str] | None) -> tuple[list[int], list[str]]:
    """The model codes to give a row (those in `only`, else the champion and the models with the
    most outputs, up to MAX_ROWS; `bounds`: where each model's outputs start in the sorted order)
    and a note of those left out."""
    if only is not None:
        return [code for code, name in enumerate(models) if name in only], []
    if len(models) <= MAX_ROWS:
        return list(range(len(models))), []
    counts = np.diff(np.asarray(bounds))
    rank = counts.copy()
    if champion is not None:
        rank[champion] = np.iinfo(rank.dtype).max  # always a row
    kept = np.argsort(-rank, kind="stable")[:MAX_ROWS]  # in any order: `summarize` sorts the rows
    return kept.tolist(), [f"{len(models) - len(kept):,} models with the fewest outputs "
                           f"({int(counts.sum() - counts[kept].sum()):,} in all) left out of the table: a report "
                           f"gives at most {MAX_ROWS} models a row"]


@dataclass(frozen=True)
class Answers:
    """What a report says of the answers alone (its answers line and its champion): `summarize`'s
    fields of these names, without the per-model figures."""

    records: int
    champion: str | None
    champion_source: str
    statuses: dict[str, int]
    answered_by_deadline: float


def answers(frame: Frame, champion: str | None = None) -> Answers:
    """`summarize(frame, champion)`'s answers and champion, computed alone (replay.py's answers
    line, from the logged requests only)."""
    frame, _left_out = plausible(frame, now_ms())
    code, source = _champion(frame, champion)
    return Answers(frame.records, None if code is None else frame.models[code], source, _statuses(frame),
                   _answered_by_deadline(frame))


# What a request's created_at may be: the rendezvous logs even a request it refused, with the
# created_at it was given (2^63 - 1 from a careless or hostile client), and no figure, bucket or
# date can be made of such a time.
_AHEAD_MS = 86_400_000


def plausible(frame: Frame, now: int) -> tuple[Frame, int]:
    """The frame without the records the live comparison service refuses (created at no
    plausible time, a negative deadline, an output whose latency is not a finite number, a model
    with two outputs), and how many those were; scores that are not finite (no model's score is
    bounded) count as not scored. The same log gives the same figures here and live."""
    keep = (frame.created_at >= EARLIEST_PLAUSIBLE_MS) & (frame.created_at <= now + _AHEAD_MS) & (frame.deadline >= 0)
    keep &= ~repeating_a_model(frame.row, frame.model, frame.records)
    broken_latency = ~np.isfinite(frame.latency_ms) | (frame.latency_ms < 0)
    if broken_latency.any():
        keep &= np.bincount(frame.row[broken_latency], minlength=frame.records) == 0
    score = np.where(np.isinf(frame.score), np.nan, frame.score) if np.isinf(frame.score).any() else frame.score
    # A model named only as chosen, with no output, is no model of the range either way: kept when
    # nothing was left out, it became a row of n=0 that could win the champion vote.
    if keep.all() and np.bincount(frame.model, minlength=len(frame.models)).all():
        return (frame if score is frame.score else replace(frame, score=score)), 0
    row_keep = keep[frame.row]
    renumbered = np.cumsum(keep) - 1
    # Models seen only in what was left out are no models of the range: their codes go too.
    present = np.unique(frame.model[row_keep])
    recode = np.full(len(frame.models) + 1, -1, dtype=np.int64)  # the last slot: -1 (no model) stays -1
    recode[present] = np.arange(len(present))
    model, version = recode[frame.model[row_keep]], frame.version[row_keep]
    return replace(
        frame, created_at=frame.created_at[keep], deadline=frame.deadline[keep],
        answered_at=frame.answered_at[keep], status=frame.status[keep], chosen=recode[frame.chosen[keep]],
        row=renumbered[frame.row[row_keep]], model=model, version=version, score=score[row_keep],
        label=frame.label[row_keep], error=frame.error[row_keep], latency_ms=frame.latency_ms[row_keep],
        late=frame.late[row_keep], models=tuple(frame.models[i] for i in present.tolist()),
        versions=_versions(model, version, len(present), frame.version_names),
    ), int((~keep).sum())  # fmt: skip


def _versions(
    model: np.ndarray, version: np.ndarray, models: int, names: tuple[str, ...]
) -> tuple[tuple[str, ...], ...]:
    """Per model code, the versions its outputs carry, in order of first appearance: those of the
    records kept only, so a version seen only in what was left out is named in no row (nor counted
    by a gate's `versions`)."""
    per_model: list[list[str]] = [[] for _ in range(models)]
    width = max(1, len(names))
    pairs, first = np.unique(model.astype(np.int64) * width + version, return_index=True)
    for pair in pairs[np.argsort(first, kind="stable")].tolist():
        code, name = divmod(pair, width)
        per_model[code].append(names[name])
    return tuple(tuple(v) for v in per_model)


def _champion(frame: Frame, given: str | None) -> tuple[int | None, str]:
    """The champion's model code and how it was chosen."""
    if given:
        if given not in frame.models:
            if not frame.records:
                return None, "--champion"
            raise ChampionNotInRange(f"--champion {given}: no such model in the range (models: "
                                     f"{', '.join(frame.models)})")
        return frame.models.index(given), "--champion"
    for mask, how in (((frame.status == _OK) & (frame.chosen >= 0), "chosen with status OK"),
                      (frame.chosen >= 0, "chosen most often (no OK answers)")):  # fmt: skip
        chosen = frame.chosen[mask]
        if len(chosen):
            counts = np.bincount(chosen)
            # A tie (a 50/50 traffic split) goes to the first name: codes follow the decoder's
            # order, which differs between its tiers and between reader processes (a review).
            tied = np.flatnonzero(counts == counts.max()).tolist()
            code = min(tied, key=lambda c: frame.models[c])
            tie = f", tied with {len(tied) - 1} other(s), the first by name" if len(tied) > 1 else ""
            return code, f"inferred: {how} in {counts[code] / frame.records:.1%} of records{tie}"
    return None, "none: no model was ever chosen"


def _bucket_ms(first: int | None, last: int | None, asked: int | None) -> int:
    """The agreement-over-time bucket: as asked (widened if it would give > MAX_BUCKETS), else a
    round width giving about TARGET_BUCKETS buckets."""
    span = 0 if first is None or last is None else last - first
    if asked:
        return max(asked, -(-span // MAX_BUCKETS))
    wanted_s = span / 1000 / TARGET_BUCKETS
    return 1000 * next((s for s in _NICE_BUCKETS_S if s >= wanted_s), 86400 * max(1, round(wanted_s / 86400)))


def _statuses(frame: Frame) -> dict[str, int]:
    counts = np.bincount(frame.status.astype(np.int64), minlength=len(STATUSES))
    return {name: int(counts[i]) for i, name in enumerate(STATUSES)}


def _answered_by_deadline(frame: Frame) -> float:
    if not frame.records:
        return float("nan")
    answered = (frame.answered_at >= 0) & (frame.answered_at <= frame.deadline) & (frame.status <= 1)
    return float(answered.mean())


@dataclass(frozen=True)
class _Reference:
    """The champion's score and label per record row (NaN / -1 where it has none)."""

    code: int | None
    score: np.ndarray
    label: np.ndarray
    scores: np.ndarray  # every score of the champion (for KS, PSI, q-q)

    # The created_at of the records the champion answered, sorted: how many a model was expected
    # to score is one search in it (`_expected`), not a pass over every record per model.
    answered_at: np.ndarray
    # Of those, the ones it answered by the deadline: its own share over the same requests as a
    # model's deadline_met, for the gate's default clause (services/control/gates.py).
    met_at: np.ndarray
    # Per record: whether it has an output of the champion, and whether that is an error. Its
    # error rate on the records a model has an output for, for the default error clause.
    has_output: np.ndarray
    has_error: np.ndarray

    @classmethod
    def of(cls, frame: Frame, code: int | None) -> _Reference:
        score = np.full(frame.records, np.nan)
        label = np.full(frame.records, -1, dtype=np.int64)
        if code is None:
            none, nothing = np.zeros(0, dtype=np.int64), np.zeros(frame.records, dtype=bool)
            return cls(None, score, label, np.zeros(0), none, none, nothing, nothing)
        own = frame.model == code
        mask = own & ~frame.error  # an error output is no answer to compare with
        rows = frame.row[mask]
        score[rows] = frame.score[mask]
        label[rows] = frame.label[mask]
        valid = frame.score[mask]
        scored = ~np.isnan(valid)
        budget = frame.deadline[rows] - frame.created_at[rows]
        on_time = met_deadline_array(scored, frame.latency_ms[mask], budget)
        has_output, has_error = np.zeros(frame.records, dtype=bool), np.zeros(frame.records, dtype=bool)
        has_output[frame.row[own]] = True
        has_error[frame.row[own & frame.error]] = True
        return cls(code, score, label, valid[scored], np.sort(frame.created_at[~np.isnan(score)]),
                   np.sort(frame.created_at[rows[on_time]]), has_output, has_error)


@dataclass(frozen=True)
class _Outputs:
    """One model's outputs (aligned arrays) and the record row of each."""

    rows: np.ndarray
    score: np.ndarray
    label: np.ndarray
    error: np.ndarray
    latency: np.ndarray
    late: np.ndarray

    @classmethod
    def of(cls, frame: Frame, at: np.ndarray) -> _Outputs:
        """The outputs at the indices `at` (one model's, in order). An error output's score and
        label are left out (NaN, -1): a Score may carry both with its error, and it is no answer
        to pair with the champion's (nor is it live)."""
        error = frame.error[at]
        score = np.where(error, np.nan, frame.score[at]) if error.any() else frame.score[at]
        label = np.where(error, -1, frame.label[at]) if error.any() else frame.label[at]
        return cls(frame.row[at], score, label, error, frame.latency_ms[at], frame.late[at])

    @property
    def usable(self) -> np.ndarray:
        return ~self.error & np.isfinite(self.score)  # NaN: no score; infinite: no answer either


@dataclass(frozen=True)
class _Paired:
    scores: PairedScores
    labels: PairedLabels | None  # None for the champion itself / without a champion
    agreement: float = float("nan")  # see `_agreement`
    labelled: int = 0  # what it is measured on


def _model(
    frame: Frame, at: np.ndarray, code: int, ref: _Reference, starts: np.ndarray, bucket_ms: int, absent: int
) -> ModelSummary:
    """The summary of model `code`, whose outputs are at the indices `at` (`absent`: records of
    which it was the champion without an output of it)."""
    out = _Outputs.of(frame, at)
    compared = ref.code is not None and code != ref.code
    paired = _paired(ref, out, frame.labels) if compared else _Paired(PairedScores(), None)
    # The distributions are compared on the same requests, as the table says: against every score
    # of the champion's in the range, a candidate deployed halfway through a drifting traffic read
    # KS 0.44 though it scored each of its requests as the champion did (a review).
    champion_same, model_same = _same_requests(ref, out)
    budget = frame.deadline[out.rows] - frame.created_at[out.rows]  # both plausible times (`plausible`)
    on_time = met_deadline_array(out.usable, out.latency, budget)
    judged = len(on_time) + absent
    # Latency is that of answers: an error output's time (a fast refusal, a model given up on after
    # a minute) is no figure of how fast the model answers; errors are counted on their own.
    answered = out.latency[~out.error]
    latency = _quantiles(answered, [q for _, q in LATENCY_QUANTILES])
    expected = _expected(frame, ref, out) if compared else _Expected.none(len(out.rows))
    own_expected = expected.own
    return ModelSummary(
        name=frame.models[code], versions=frame.versions[code], champion=code == ref.code, n=len(out.rows),
        errors=int(out.error.sum()), late=int(out.late.sum()),
        deadline_met=float(on_time.sum()) / judged if judged else float("nan"), absent=absent,
        latency_ms={name: float(v) for (name, _), v in zip(LATENCY_QUANTILES, latency, strict=True)},
        agreement=paired.agreement,
        ks=ks_exact(champion_same, model_same) if compared else float("nan"),
        psi=psi_exact(champion_same, model_same) if compared else float("nan"),
        mad=paired.scores.mad(), correlation=paired.scores.correlation(), paired=paired.scores.n,
        plots=ModelPlots(
            latency_cdf=(_quantiles(answered, CDF_PROBES), CDF_PROBES),
            qq=(_quantiles(champion_same, QQ_PROBES), _quantiles(model_same, QQ_PROBES)) if compared else None,
            agreement_over_time=_agreement_series(frame, ref, out, starts, bucket_ms) if compared else None,
            confusion=paired.labels.matrix() if paired.labels is not None and paired.labels.n else None,
        ),
        # An output with neither a usable score nor an error (a label alone) answers nothing: counted
        # as output, a candidate that gave no score on half the requests passed coverage (a review).
        expected=expected.records, expected_output=int(own_expected[out.usable | out.error].sum()),
        expected_met=int(own_expected[on_time].sum()), expected_champion_met=expected.champion_met,
        expected_champion_outputs=expected.champion_outputs, expected_champion_errors=expected.champion_errors,
        labelled=paired.labelled,
    )  # fmt: skip


def _champions_by_record(frame: Frame, named: int | None) -> np.ndarray:
    """Each record's champion, as the live comparison follows it when it reads no schedule: the
    model named (`--champion`), else the chosen model of the latest OK answer created at or
    before the record (the first OK answer's for those before it: an outage the range starts in
    is the champion's of then); -1 without any OK answer."""
    if named is not None:
        return np.full(frame.records, named, dtype=np.int64)
    order = np.argsort(frame.created_at, kind="stable")
    chosen = frame.chosen[order].astype(np.int64)
    ok = (frame.status[order] == _OK) & (chosen >= 0)
    if not ok.any():
        return np.full(frame.records, -1, dtype=np.int64)
    latest = np.maximum.accumulate(np.where(ok, np.arange(len(order)), -1))
    latest[latest < 0] = int(np.flatnonzero(ok)[0])
    champions = np.empty(frame.records, dtype=np.int64)
    champions[order] = chosen[latest]
    return champions


def _absent_by_model(frame: Frame, named: int | None) -> np.ndarray:
    """Per model code, the records answered (but ERROR) without an output of their champion, that
    model (`_champions_by_record`). Counted by outputs alone, a champion stuck past its deadline
    and the linger (in no record then) read 100% met, where the live counter counts each such
    record as a miss. A record answered at no time is no rendezvous': one a replay made for a
    request not in the log (its champion never saw it)."""
    champions = _champions_by_record(frame, named)
    absent = champion_absent(frame.row, frame.model, champions, frame.status == _ERROR)
    absent &= (champions >= 0) & (frame.answered_at >= 0)
    return np.bincount(champions[absent], minlength=len(frame.models))


def _same_requests(ref: _Reference, out: _Outputs) -> tuple[np.ndarray, np.ndarray]:
    """The champion's and this model's scores on the requests where both have a usable one."""
    champion = ref.score[out.rows]
    both = out.usable & np.isfinite(champion)
    return champion[both], out.score[both]


class _Expected(NamedTuple):
    """What a model was expected to score, and the champion's figures over the same requests."""

    records: int  # the records the champion answered, created at or after the model's first output
    own: np.ndarray  # which of the model's own outputs are on such records
    champion_met: int  # of `records`, those the champion answered by the deadline
    champion_outputs: int  # the champion's outputs (errors included) on the records the model has one for
    champion_errors: int  # of those, its errors

    @classmethod
    def none(cls, outputs: int) -> _Expected:
        return cls(0, np.zeros(outputs, dtype=bool), 0, 0, 0)


def _expected(frame: Frame, ref: _Reference, out: _Outputs) -> _Expected:
    """How many records the model was expected to score: those the champion answered, created at
    or after this model's first output (before that the model may not have been deployed); the
    champion's deadlines met over the same records; and its outputs and errors on the records the
    model has an output for, as the model's error rate is measured (over all of its outputs, a
    champion faster before the candidate came failed an identical candidate, and its outage before
    the candidate came, or while the candidate was away, passed a candidate failing 8% against
    its 0%; reviews)."""
    if not len(out.rows):
        return _Expected.none(0)
    first = frame.created_at[out.rows].min()
    own: np.ndarray = ~np.isnan(ref.score[out.rows])  # created at `first` or after, as every one of its own
    return _Expected(_from(ref.answered_at, first), own, _from(ref.met_at, first),
                     int(ref.has_output[out.rows].sum()), int(ref.has_error[out.rows].sum()))


def _from(created_at: np.ndarray, first: int) -> int:
    """How many of the sorted `created_at` are at or after `first`."""
    return len(created_at) - int(np.searchsorted(created_at, first, side="left"))


def _paired(ref: _Reference, out: _Outputs, names: tuple[str, ...]) -> _Paired:
    """Paired measures against the champion on the records where both have a value."""
    champion_score = ref.score[out.rows]
    both = ~np.isnan(champion_score) & ~np.isnan(out.score)
    scores = PairedScores()
    scores.add_many(champion_score[both], out.score[both])
    agreement, labelled = _agreement(ref, out)
    return _Paired(scores, _paired_labels(ref.label[out.rows], out.label, names), agreement, labelled)


def _agreement(ref: _Reference, out: _Outputs) -> tuple[float, int]:
    """Of the requests the champion labelled and this model answered without error, the share it
    gave the same label (NaN if none): a model leaving a label out disagrees, so one that labels
    2 requests of 200 does not show 100% (the live gauge and the promote gate count the same)."""
    champion = ref.label[out.rows]
    compared = (champion >= 0) & ~out.error
    total = int(compared.sum())
    return (int((compared & (out.label == champion)).sum()) / total if total else float("nan")), total


DENSE_LABELS = 1024  # distinct labels up to which the confusion counts are one dense array (8 MB)


def _paired_labels(champion: np.ndarray, model: np.ndarray, names: tuple[str, ...]) -> PairedLabels:
    """Confusion counts of (champion label, model label) over the records where both have one."""
    both = (champion >= 0) & (model >= 0)
    size = len(names)
    pairs = champion[both].astype(np.int64) * size + model[both]
    labels = PairedLabels()
    if size <= DENSE_LABELS and size * size <= 64 * len(pairs):  # a dense count is O(n), no sort
        counts = np.bincount(pairs, minlength=size * size)
        found, counts = np.flatnonzero(counts), counts[counts > 0]
    else:  # labels x labels would not fit in memory (a model that puts an id in its label)
        found, counts = np.unique(pairs, return_counts=True)
    for pair, count in zip(found.tolist(), counts.tolist(), strict=True):
        labels.confusion[(names[pair // size], names[pair % size])] = int(count)
    return labels


def _agreement_series(frame: Frame, ref: _Reference, out: _Outputs, starts: np.ndarray, bucket_ms: int) -> np.ndarray:
    """`_agreement` per created_at bucket (NaN = nothing to compare)."""
    if not len(starts):
        return np.zeros(0)
    champion = ref.label[out.rows]
    compared = (champion >= 0) & ~out.error
    bucket = (frame.created_at[out.rows[compared]] - starts[0]) // bucket_ms
    total = np.bincount(bucket, minlength=len(starts))[: len(starts)]
    same = champion[compared] == out.label[compared]
    agree = np.bincount(bucket, weights=same, minlength=len(starts))[: len(starts)]
    return np.where(total > 0, agree / np.maximum(total, 1), np.nan)


def _quantiles(values: np.ndarray, probes: Any) -> np.ndarray:
    if not len(values):
        return np.full(len(probes), np.nan)
    return np.quantile(values, probes)
