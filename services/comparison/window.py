"""A sliding window over the comparison log, in event time, made of mergeable buckets.

Why buckets: a sliding window of raw values would need every value kept and re-sorted; a
bucket instead holds *mergeable* aggregates (t-digest sketches, counts, paired running sums),
so sliding is "drop the oldest bucket" and the window's view is "merge the live buckets".

Why event time: a record lands in the bucket of its request's `created_at`, and the window
ends at the newest `created_at` seen (not at the wall clock), so replaying an old log shows
that log's own past. One end for all partitions: a consumer catching up on several reads each
partition in chunks (up to a fetch, up to a batch, of one partition), so one may be read
minutes of log time ahead of another, the window slides to it, and records of the one behind
come older than the window's start. Those are counted as stale and left out of the window, as
late ones are; the window holds all of the last `window_s` again once every partition is caught
up (a review measured 687 records of a 1,200 s backlog of 3,436 stale, 3,436 of 3,436 in the
window at the end). The window covers
between (buckets - 1) and `buckets` bucket widths: the newest bucket is still filling up.

Hot path: `add` touches each output once and only appends raw values to plain lists; the
lists are folded into the sketches and paired sums in bulk (`compact`) every few batches and
before a view is taken, which is several times cheaper than one sketch call per value.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.stats.deadline import met_deadline
from services.stats.distributions import PairedLabels, PairedScores, QuantileSketch

# Answer statuses of the comparison schema (schemas/comparison.avsc, AnswerStatus).
STATUSES = ("OK", "FALLBACK", "TIMEOUT", "ERROR")


def usable_score(value: float | None) -> float | None:
    """A score that can enter a sketch or a sum (None for missing, NaN or infinite ones)."""
    return value if value is not None and math.isfinite(value) else None


@dataclass(slots=True)
class ModelStats:
    """One model's outputs in one bucket (or merged over the window). Every output either met
    or missed the deadline, so `outputs` is their sum."""

    errors: int = 0
    late: int = 0
    met: int = 0
    missed: int = 0
    latency_ms: QuantileSketch = field(default_factory=QuantileSketch)
    scores: QuantileSketch = field(default_factory=QuantileSketch)
    new_latencies: list[float] = field(default_factory=list)
    new_scores: list[float] = field(default_factory=list)

    @property
    def outputs(self) -> int:
        return self.met + self.missed

    def compact(self) -> None:
        """Fold the raw values appended since the last compaction into the sketches."""
        if self.new_latencies:
            self.latency_ms.add_many(self.new_latencies)
            self.new_latencies = []
        if self.new_scores:
            self.scores.add_many(self.new_scores)
            self.new_scores = []

    def merge(self, other: ModelStats) -> None:
        self.compact()
        other.compact()
        self.errors += other.errors
        self.late += other.late
        self.met += other.met
        self.missed += other.missed
        self.latency_ms = self.latency_ms.merged(other.latency_ms)
        self.scores = self.scores.merged(other.scores)


@dataclass(slots=True)
class PairStats:
    """A model against the champion on the same requests (both answered without error)."""

    n: int = 0
    lead_labelled: int = 0  # of the n, those the champion labelled: agreement's denominator
    scores: PairedScores = field(default_factory=PairedScores)
    labels: PairedLabels = field(default_factory=PairedLabels)
    # Both sides' scores on these requests alone: the distributions KS and PSI against the champion
    # compare, as the report and the gates do. Against every score of the champion's in the window,
    # a model deployed halfway through drifting traffic read KS 0.44 though it scored each of its
    # requests as the champion did (a review).
    model_scores: QuantileSketch = field(default_factory=QuantileSketch)
    champion_scores: QuantileSketch = field(default_factory=QuantileSketch)
    new_model_scores: list[float] = field(default_factory=list)
    new_champion_scores: list[float] = field(default_factory=list)

    def compact(self) -> None:
        """Fold the scores of the model and the champion appended since the last compaction, pair
        by pair (all finite), into the figures."""
        if self.new_model_scores:
            self.scores.add_many(self.new_model_scores, self.new_champion_scores)
            self.model_scores.add_many(self.new_model_scores)
            self.champion_scores.add_many(self.new_champion_scores)
            self.new_model_scores, self.new_champion_scores = [], []

    def merge(self, other: PairStats) -> None:
        self.compact()
        other.compact()
        self.n += other.n
        self.lead_labelled += other.lead_labelled
        self.scores.merge(other.scores)
        self.labels.merge(other.labels)
        self.model_scores = self.model_scores.merged(other.model_scores)
        self.champion_scores = self.champion_scores.merged(other.champion_scores)


# Champions a bucket keeps pair tables against: the one of its time, one before a promotion or
# two, and a rollback's (`Bucket.keep_champions`); and how many it may hold a compaction apart.
MAX_CHAMPIONS = 4
HELD_CHAMPIONS = 16


@dataclass(slots=True)
class Bucket:
    """Everything the window knows about the requests created in one time slice."""

    records: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    models: dict[str, ModelStats] = field(default_factory=dict)
    pairs: dict[tuple[str, str], PairStats] = field(default_factory=dict)  # (model, champion)
    # Records each champion led (its output paired with others'), once a record: at most one per
    # label value, as chosen models are labelled (the service's LabelBudget).
    led: Counter[str] = field(default_factory=Counter)

    def pair(self, model: str, champion: str) -> PairStats:
        """The pair table of `model` against `champion`, new if need be. Between two compactions
        a bucket holds tables against HELD_CHAMPIONS champions at most: one more keeps those of the
        MAX_CHAMPIONS that led the most records so far (thousands of tables a compaction apart
        took hundreds of MB)."""
        table = self.pairs.get((model, champion))
        if table is None:  # rare: a model and a champion not paired in this bucket before
            paired = self._paired()
            if champion not in paired and len(paired) >= HELD_CHAMPIONS:
                self.keep_champions(champion)
            table = self.pairs[(model, champion)] = PairStats()
        return table

    def _paired(self) -> set[str]:
        """The champions of `pairs`."""
        return {champion for _model, champion in self.pairs}

    def keep_champions(self, current: str | None) -> None:
        """Keep the pair tables of the `current` champion (the one records are paired against now:
        its figures are the ones exported) and of those that led the most records, MAX_CHAMPIONS
        in all. A champion changes at a promotion; forged OK records naming another chosen model
        each made a table for every model against each of them: about --max-models times the
        memory and the export's time (a review: 439 MiB and 1.7 s for one bucket of 25,600
        records, against 46 MiB and 0.1 s). Done where the window compacts, at the same records
        whether they were folded one by one or in a batch (past HELD_CHAMPIONS a compaction apart,
        only forged records make, the two paths may keep different ones)."""
        paired = self._paired()
        if len(paired) <= MAX_CHAMPIONS:
            return
        kept: set[str] = {current} & paired if current is not None else set()
        others = sorted(paired - kept, key=lambda name: (-self.led[name], name))
        kept.update(others[: MAX_CHAMPIONS - len(kept)])
        for dropped in paired - kept:
            del self.led[dropped]  # its tables are gone: back, it starts again, as they do
        self.pairs = {key: table for key, table in self.pairs.items() if key[1] in kept}

    def compact(self) -> None:
        for stats in self.models.values():
            stats.compact()
        for pair in self.pairs.values():
            pair.compact()

    def fold_into(self, other: str, keep: Container[str]) -> None:
        """Count every model name not in `keep` as `other` (its outputs, pairs and records led,
        merged into `other`'s): for a view, whose label values must stay within the budget."""
        for name in [name for name in self.models if name not in keep]:
            stats = self.models.pop(name)
            self.models.setdefault(other, ModelStats()).merge(stats)
        for key in [key for key in self.pairs if key[0] not in keep or key[1] not in keep]:
            table = self.pairs.pop(key)
            model, champion = (name if name in keep else other for name in key)
            self.pairs.setdefault((model, champion), PairStats()).merge(table)
        for name in [name for name in self.led if name not in keep]:
            self.led[other] += self.led.pop(name)

    def merge(self, other: Bucket) -> None:
        self.records += other.records
        self.statuses.update(other.statuses)
        for name, stats in other.models.items():
            self.models.setdefault(name, ModelStats()).merge(stats)
        for key, pair in other.pairs.items():
            self.pairs.setdefault(key, PairStats()).merge(pair)
        self.led.update(other.led)


@dataclass(frozen=True, slots=True)
class WindowView:
    """The window merged into one bucket, with where it ends (epoch ms of the newest record)."""

    totals: Bucket
    newest_ms: int
    buckets: int


class SlidingWindow:
    """Buckets of `bucket_ms` keyed by created_at // bucket_ms; the last `buckets` of them live."""

    def __init__(self, bucket_ms: int, buckets: int):
        if bucket_ms < 1 or buckets < 1:
            raise ValueError("bucket_ms and buckets must be >= 1")
        self.bucket_ms = bucket_ms
        self.buckets = buckets
        self.newest_ms = 0
        self.stale = 0
        self.champion: str | None = None  # the one records were last paired against
        self._newest_key: int | None = None
        self._live: dict[int, Bucket] = {}

    def add(self, record: Mapping[str, Any], champion: str | None) -> bool:
        """Fold one Comparison record in; False (and counted as stale) if older than the window.

        Pairs are formed against `champion`'s output in the same record when it has one
        without error: every other output without error is paired with it.
        """
        self.champion = champion
        created = record["created_at"]
        key = created // self.bucket_ms
        newest = self._newest_key
        if newest is None or key > newest:
            self._slide(key)
        elif key <= newest - self.buckets:
            self.stale += 1
            return False
        if created > self.newest_ms:
            self.newest_ms = created
        bucket = self.bucket(key)
        bucket.records += 1
        bucket.statuses[record["status"]] += 1

        budget = record["deadline"] - created
        models = bucket.models
        outputs = record["outputs"]
        lead = None
        isfinite = math.isfinite
        for out in outputs:
            name = out["model"]
            stats = models.get(name)
            if stats is None:
                stats = models[name] = ModelStats()
            if out["late"]:
                stats.late += 1
            if out["error"] is not None:  # counted as an error, not as a latency: see fold._fill_models
                stats.errors += 1
                stats.missed += 1
                continue
            latency = out["latency_ms"]
            stats.new_latencies.append(latency)
            score = out["score"]
            if met_deadline(None, score, latency, budget):
                stats.met += 1
            else:
                stats.missed += 1
            if score is not None and isfinite(score):
                stats.new_scores.append(score)
            if name == champion:
                lead = out
        if lead is None or len(outputs) < 2:
            return True
        # Pairs: every other output without error against the champion's, on this request.
        lead_name, lead_score, lead_label = lead["model"], usable_score(lead["score"]), lead["label"]
        bucket.led[lead_name] += 1
        for out in outputs:
            if out is lead or out["error"] is not None:
                continue
            pair = bucket.pair(out["model"], lead_name)
            pair.n += 1
            score = out["score"]
            if lead_score is not None and score is not None and isfinite(score):
                pair.new_model_scores.append(score)
                pair.new_champion_scores.append(lead_score)
            if lead_label is not None:
                pair.lead_labelled += 1
                label = out["label"]
                if label is not None:
                    pair.labels.add(lead_label, label)
        return True

    def admit(self, created: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`add`'s sliding for a batch of records (in order): the window slides past all of them;
        returns their bucket keys and which of them are in the window at its new end. Those
        older than the window when they came are counted as stale; those the window slid past
        later in the batch are not (one at a time, they would have been added, then dropped)."""
        keys = created // self.bucket_ms
        if not len(keys):
            return keys, np.zeros(0, dtype=bool)
        first = int(keys[0]) if self._newest_key is None else self._newest_key
        newest_before = np.maximum.accumulate(np.concatenate(([first], keys[:-1])))
        fresh = keys > newest_before - self.buckets
        self.stale += int(len(keys) - fresh.sum())
        if fresh.any():
            self.newest_ms = max(self.newest_ms, int(created[fresh].max()))
        newest = int(max(first, keys.max()))
        if self._newest_key is None or newest > self._newest_key:
            self._slide(newest)
        return keys, fresh & (keys > newest - self.buckets)

    def bucket(self, key: int) -> Bucket:
        """The live bucket of `key` (made when it has none yet)."""
        bucket = self._live.get(key)
        if bucket is None:
            bucket = self._live[key] = Bucket()
        return bucket

    def _slide(self, key: int) -> None:
        """Make `key` the newest bucket; drop buckets that fell out of the window."""
        self._newest_key = key
        oldest_live = key - self.buckets + 1
        for old in [k for k in self._live if k < oldest_live]:
            del self._live[old]

    def compact(self) -> None:
        """Fold raw values into sketches (bounds memory; call every few batches)."""
        for bucket in self._live.values():
            if any(stats.new_latencies for stats in bucket.models.values()):
                bucket.compact()
            bucket.keep_champions(self.champion)

    def models(self) -> set[str]:
        """The model names in the live buckets."""
        return set().union(*(bucket.models.keys() for bucket in self._live.values()))

    def outputs_by_model(self) -> dict[str, int]:
        """Each model's outputs in the live buckets."""
        outputs: dict[str, int] = {}
        for bucket in self._live.values():
            for name, stats in bucket.models.items():
                outputs[name] = outputs.get(name, 0) + stats.outputs
        return outputs

    def view(self) -> WindowView:
        """The live buckets merged (a new object; the window keeps sliding independently)."""
        totals = Bucket()
        for key in sorted(self._live):
            self._live[key].keep_champions(self.champion)
            totals.merge(self._live[key])
        return WindowView(totals, self.newest_ms, len(self._live))


class ChampionTracker:
    """Who the pairs compare against: a name given (`override`), else the preferred model of the
    schedule in force (`preferred`, followed on the control topic), else the chosen model of the
    latest OK answer.

    An answer with status OK came from the schedule's preferred model (a fallback would say
    FALLBACK), so its chosen model is the champion; but anyone who may write the log may write an
    OK answer, and after a restart in a champion's outage there is none (a review: no champion,
    so no ChampionDeadlineMisses page). The schedule says it from the first record.
    """

    def __init__(self, override: str = "", preferred: Callable[[], str | None] | None = None):
        self.override = override
        self._preferred = preferred
        self.fixed: str | None = override or None  # the champion named outright (`refresh`)
        self._tracked: str | None = None

    def refresh(self) -> None:
        """Ask the schedule's preferred model again: once a batch, for the record path as for the
        batch fold (not a schedule lookup a record)."""
        if not self.override and self._preferred is not None:
            self.fixed = self._preferred()

    @property
    def current(self) -> str | None:
        return self.fixed or self._tracked

    def track(self, chosen: str) -> None:
        """The chosen model of an OK answer: the champion, when none is named outright."""
        self._tracked = chosen

    def observe(self, record: Mapping[str, Any]) -> str | None:
        fixed = self.fixed
        if fixed:
            return fixed
        if record["status"] == "OK" and record["chosen_model"]:
            self._tracked = record["chosen_model"]
        return self._tracked


class References:
    """Each model's first `size` scores, frozen: the "self" reference its window is compared to.

    A model compared with its own earlier behaviour shows drift of its *inputs* (the canary's
    job, docs/architecture.md) even when no other model is there to disagree with.
    """

    def __init__(self, size: int):
        self.size = size
        self._filling: dict[str, list[float]] = {}
        self.frozen: dict[str, QuantileSketch] = {}

    def add(self, model: str, score: float | None) -> None:
        """One score of `model` (ignored once its reference is frozen, or when unusable)."""
        if score is not None and math.isfinite(score):
            self.add_many(model, [score])

    def add_many(self, model: str, scores: list[float]) -> None:
        """`add` of each of `scores` in turn; every one of them must be finite."""
        if model in self.frozen or not scores:
            return
        values = self._filling.setdefault(model, [])
        values.extend(scores[: self.size - len(values)])
        if len(values) >= self.size:
            self.frozen[model] = QuantileSketch.of(self._filling.pop(model))

    def forget(self, model: str) -> None:
        self._filling.pop(model, None)
        self.frozen.pop(model, None)

    def count(self, model: str) -> int:
        """Scores in the model's reference so far (== size once frozen)."""
        return self.size if model in self.frozen else len(self._filling.get(model, ()))
