"""The comparison service's path for large batches: every record of a batch folded in at once.

Why: one record at a time, fastavro's decode of a Comparison record (a dict per record and per
output) and the fold of that dict cost ≈ 60 µs per record, twelve times a bare consume. Here
`services/core/compiled_decode.py` turns the batch's bytes into columns and numpy folds the columns
into the same counters, champion, references and window — the same state as
`ComparisonService.observe` record by record (tests/unit/test_comparison_fold.py holds the two to
it). Small batches (a live log at a few hundred records per second) stay on the record path:
numpy's fixed cost per call is larger than a few records' decode.

Order matters where the record-by-record fold keeps it, and is kept here: values reach the
window's lists and the references in record order, the champion of a record is the chosen model
of the latest OK answer at or before it, names are admitted to the label budget in order of
first appearance.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from services.comparison.kernels import dense, first_seen, grouped, last_per_row
from services.comparison.metrics import OTHER, Tally
from services.comparison.window import STATUSES, ChampionTracker, ModelStats, References, SlidingWindow
from services.core.comparison_columns import DecodedBatch, repeating_a_model
from services.core.runtime import EARLIEST_PLAUSIBLE_MS
from services.stats.deadline import champion_absent, met_deadline_array

# Decode + fold cost, µs per record, at a batch of 8 / 32 / 128 / 500 / 2,000 records: 202-214 / 49 /
# 16-17 / 8-9 / 6-7 (record by record: 30-33, the same records and machine).
MIN_RECORDS = 100
KINDS = ("ok", "late", "error")  # an output's outcome, as the outputs counter names it


class Names:
    """Model label values of one batch, each with a small index."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def index(self, name: str) -> int:
        found = self._index.get(name)
        if found is None:
            found = self._index[name] = len(self.values)
            self.values.append(name)
        return found

    def find(self, name: str | None) -> int:
        """The index of a name already here, else -1."""
        return -1 if name is None else self._index.get(name, -1)


@dataclass(frozen=True)
class Outputs:
    """The batch's model outputs in record order; model names as indexes into a `Names`."""

    row: np.ndarray
    name: np.ndarray
    series: np.ndarray  # index into the batch's (model, version) label pairs
    score: np.ndarray
    scored: np.ndarray
    error: np.ndarray
    latency: np.ndarray
    late: np.ndarray
    label: np.ndarray  # index into the batch's label strings, -1 = null
    usable_score: np.ndarray  # a score that can enter a sketch or a sum (not null, NaN or infinite)


def valid(batch: DecodedBatch, latest_ok_ms: int) -> bool:
    """What `service.validate` checks, for the whole batch at once."""
    created = batch.created_at
    latency = batch.latency_ms
    return bool((created >= EARLIEST_PLAUSIBLE_MS).all() and (created <= latest_ok_ms).all()
                and (batch.deadline >= 0).all() and np.isfinite(latency).all() and (latency >= 0).all()
                and not repeating_a_model(batch.row, batch.model.ids, batch.records).any())


def fold(
    batch: DecodedBatch,
    series_labels: Callable[[str, str], tuple[str, str]],
    chosen_label: Callable[[str], str],
    champion: ChampionTracker,
    references: References,
    window: SlidingWindow,
    tally: Tally,
    labelled: Container[str] = (),
) -> None:
    """`ComparisonService.observe` of every record of a valid batch, in order. `labelled`: the
    names with a label of their own before the batch (`LabelBudget.labelled`)."""
    names = Names()
    out, pairs = _outputs(batch, series_labels, names)
    chosen = _chosen(batch, chosen_label, names, labelled)
    before = champion.current  # the champion of records before the batch's first OK answer
    champions = _champions(batch.status, chosen, champion, names)
    window.champion = champion.current  # as the record path leaves it
    met = _met(batch, out)
    _count(batch, out, pairs, met, tally)
    _count_absent(batch, out, champions, names, before, tally)
    _fill_references(out, names, references)
    stale_before = window.stale
    keys, live = window.admit(batch.created_at)
    tally.stale += window.stale - stale_before
    _fill_buckets(batch, keys, live, window)
    _fill_models(out, met, keys, live, names, window)
    _fill_pairs(batch, out, keys, live, champions, names, window)


def _outputs(
    batch: DecodedBatch, series_labels: Callable[[str, str], tuple[str, str]], names: Names
) -> tuple[Outputs, list[tuple[str, str]]]:
    # The compiled decoder gives outputs in record order; a stable sort by record keeps any
    # other maker of a DecodedBatch correct.
    row = batch.row
    order = slice(None) if len(row) < 2 or bool((row[1:] >= row[:-1]).all()) else np.argsort(row, kind="stable")
    width = max(1, len(batch.version.values))
    # Each (model, version) as a series, numbered in order of first appearance (the order the
    # label budget admits them in, as record by record).
    values, codes = dense(batch.model.ids[order] * width + batch.version.ids[order])
    distinct, series = first_seen(codes)
    pairs: list[tuple[str, str]] = []
    for code in values[distinct].tolist():
        model, version = divmod(code, width)
        pairs.append(series_labels(batch.model.values[model], batch.version.values[version]))
    name_of_series = np.array([names.index(model) for model, _version in pairs], dtype=np.int64)
    score, scored = batch.score[order], batch.scored[order]
    outputs = Outputs(
        row=batch.row[order], name=name_of_series[series], series=series, score=score, scored=scored,
        error=batch.error[order], latency=batch.latency_ms[order], late=batch.late[order],
        label=batch.label.ids[order], usable_score=scored & np.isfinite(score),
    )  # fmt: skip
    return outputs, pairs


def _chosen(batch: DecodedBatch, chosen_label: Callable[[str], str], names: Names,
            labelled: Container[str]) -> np.ndarray:
    """Each record's chosen model as a label index, -1 for none. (Labelled after the outputs'
    names were admitted, taking no place itself: a chosen model is one of its record's outputs in
    every record the rendezvous writes, `LabelBudget.chosen`.) A name given its place in this
    batch is its label from its first output on, as record by record; before, '_other': in a
    record naming it without an output of it (forged), the two paths labelled it apart (a review)."""
    values = batch.chosen.values
    labels = np.array([names.index(chosen_label(value)) if value else -1 for value in values] + [-1],
                      dtype=np.int64)  # fmt: skip
    ids: np.ndarray = labels[batch.chosen.ids]  # id -1 (null) takes the -1 at the end
    other = names.find(OTHER)
    given = [bool(value) and value not in labelled and label >= 0 and label != other
             for value, label in zip(values, labels.tolist(), strict=False)]
    if any(given):
        chosen_ids = batch.chosen.ids  # -1 (null) takes the last of each: not given, the record count
        first = _first_output_rows(batch, values)
        early = np.array([*given, False])[chosen_ids] & (np.arange(batch.records) < first[chosen_ids])
        if early.any():
            ids[early] = names.index(OTHER)
    return ids


def _first_output_rows(batch: DecodedBatch, values: list[str]) -> np.ndarray:
    """For each of `values` (model names), the first record of the batch with an output of it (the
    record count if none), and the record count at the end (for id -1)."""
    by_model = np.full(len(batch.model.values), batch.records, dtype=np.int64)
    np.minimum.at(by_model, batch.model.ids, batch.row)
    model_id = {name: i for i, name in enumerate(batch.model.values)}
    return np.array([by_model[model_id[value]] if value in model_id else batch.records for value in values]
                    + [batch.records], dtype=np.int64)


def _champions(status: np.ndarray, chosen: np.ndarray, tracker: ChampionTracker, names: Names) -> np.ndarray:
    """The champion each record's pairs compare against, as a label index (-1: none in this batch)."""
    fixed = tracker.fixed
    if fixed:
        return np.full(len(status), names.find(fixed), dtype=np.int64)
    sets = (status == STATUSES.index("OK")) & (chosen >= 0)
    latest = np.maximum.accumulate(np.where(sets, np.arange(len(status)), -1))
    champions: np.ndarray = np.where(latest >= 0, chosen[np.maximum(latest, 0)], names.find(tracker.current))
    if sets.any():
        tracker.track(names.values[int(champions[-1])])
    return champions


def _count(batch: DecodedBatch, out: Outputs, pairs: list[tuple[str, str]], met: np.ndarray, tally: Tally) -> None:
    """The batch's counter increments: records, answers by status, outputs by outcome."""
    tally.records += batch.records
    for status, n in enumerate(np.bincount(batch.status, minlength=len(STATUSES)).tolist()):
        if n:
            tally.answers[STATUSES[status]] += n
    kind = np.where(out.error, KINDS.index("error"), np.where(out.late, KINDS.index("late"), KINDS.index("ok")))
    counts = np.bincount((out.series * len(KINDS) + kind) * 2 + met)  # a few codes: counted, not sorted
    codes = np.flatnonzero(counts)
    for code, n in zip(codes.tolist(), counts[codes].tolist(), strict=True):
        series, rest = divmod(code, 2 * len(KINDS))
        key = (pairs[series], KINDS[rest // 2], bool(rest % 2))
        tally.outputs[key] = tally.outputs.get(key, 0) + n


def _count_absent(
    batch: DecodedBatch, out: Outputs, champions: np.ndarray, names: Names, before: str | None, tally: Tally
) -> None:
    """`Tally.absent`: records (but ERROR answers) without an output of their champion, by name.
    A champion -1 is `before`, which no output of the batch names (`_champions`)."""
    absent = champion_absent(out.row, out.name, champions, batch.status == STATUSES.index("ERROR"))
    if not absent.any():
        return
    codes = champions[absent]
    unnamed = int((codes < 0).sum())
    if unnamed and before:
        tally.absent[before] += unnamed
    named = codes[codes >= 0]
    for code, n in enumerate(np.bincount(named).tolist() if len(named) else []):
        if n:
            tally.absent[names.values[code]] += n


def _met(batch: DecodedBatch, out: Outputs) -> np.ndarray:
    """Whether each output met its request's deadline (the one definition, services/stats/deadline.py)."""
    return met_deadline_array(~out.error & out.usable_score, out.latency, (batch.deadline - batch.created_at)[out.row])


def _fill_references(out: Outputs, names: Names, references: References) -> None:
    """Each model's scores without error, in order, to its reference until it is frozen."""
    usable = None
    for index, name in enumerate(names.values):
        if name not in references.frozen:  # soon every one: then nothing here costs a pass over the batch
            usable = ~out.error & out.usable_score if usable is None else usable
            references.add_many(name, out.score[usable & (out.name == index)].tolist())


def _fill_buckets(batch: DecodedBatch, keys: np.ndarray, live: np.ndarray, window: SlidingWindow) -> None:
    if not live.any():
        return
    low = int(keys[live].min())  # live keys lie within the window: a few buckets apart at most
    for key in (np.flatnonzero(np.bincount(keys[live] - low)) + low).tolist():
        mine = live & (keys == key)
        bucket = window.bucket(key)
        bucket.records += int(mine.sum())
        for status, n in enumerate(np.bincount(batch.status[mine], minlength=len(STATUSES)).tolist()):
            if n:
                bucket.statuses[STATUSES[status]] += n


def _fill_models(
    out: Outputs, met: np.ndarray, keys: np.ndarray, live: np.ndarray, names: Names, window: SlidingWindow
) -> None:
    usable = out.usable_score
    for (key, name), at in _groups(keys[out.row], out.name, where=live[out.row]):
        models = window.bucket(key).models
        stats = models.get(names.values[name])
        if stats is None:
            stats = models[names.values[name]] = ModelStats()
        error = out.error[at]
        errors = int(error.sum())
        stats.new_latencies.extend(out.latency[at[~error]].tolist())  # answers' latency: errors are counted apart
        stats.late += int(out.late[at].sum())
        stats.errors += errors
        stats.met += int(met[at].sum())
        stats.missed += errors + int((~met[at] & ~error).sum())
        stats.new_scores.extend(out.score[at[~error & usable[at]]].tolist())


def _count_led(
    paired: np.ndarray, keys: np.ndarray, lead: np.ndarray, name: np.ndarray, names: Names, window: SlidingWindow
) -> None:
    """`Bucket.led`: each record with pairs (`paired`, by record; its champion's output at `lead`)
    once, for its bucket and champion."""
    if not paired.any():
        return
    for (key, champion), at in _groups(keys, name[np.maximum(lead, 0)], where=paired):
        window.bucket(key).led[names.values[champion]] += len(at)


def _fill_pairs(
    batch: DecodedBatch, out: Outputs, keys: np.ndarray, live: np.ndarray, champions: np.ndarray,
    names: Names, window: SlidingWindow,
) -> None:  # fmt: skip
    """Every other output without error against the champion's (its last one without error) on
    the same request, in records with two outputs or more."""
    position = np.arange(len(out.row))
    candidate = live[out.row] & ~out.error & (out.name == champions[out.row])
    lead = last_per_row(out.row, candidate, batch.records)
    paired = (lead >= 0) & (np.bincount(out.row, minlength=batch.records) >= 2)
    lead_of = np.maximum(lead[out.row], 0)
    pairable = paired[out.row] & ~out.error & (position != lead[out.row])
    _count_led(paired, keys, lead, out.name, names, window)
    usable = out.usable_score
    both_scored = usable & usable[lead_of]
    for (key, name, lead_name), at in _groups(keys[out.row], out.name, out.name[lead_of], where=pairable):
        pair = window.bucket(key).pair(names.values[name], names.values[lead_name])
        pair.n += len(at)
        scored = at[both_scored[at]]
        if len(scored):
            pair.new_model_scores.extend(out.score[scored].tolist())  # compacted as the record path's
            pair.new_champion_scores.extend(out.score[lead_of[scored]].tolist())
        lead_labelled = out.label[lead_of[at]] >= 0
        pair.lead_labelled += int(lead_labelled.sum())
        labelled = at[(out.label[at] >= 0) & lead_labelled]
        width = len(batch.label.values)
        values, codes = dense(out.label[lead_of[labelled]] * width + out.label[labelled])
        # In order of first appearance, as the record path adds them: past MAX_LABEL_PAIRS the
        # same pairs keep an entry of their own whatever the batch size.
        distinct, ids = first_seen(codes)
        counts = np.bincount(ids, minlength=len(distinct))  # few labels: counted, not sorted
        for code, count in zip(distinct.tolist(), counts.tolist(), strict=True):
            lead_label, label = divmod(int(values[code]), width)
            pair.labels.add(batch.label.values[lead_label], batch.label.values[label], count)


def _groups(*columns: np.ndarray, where: np.ndarray) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Positions where `where` holds, grouped by their values in `columns` (ints in a small range:
    bucket keys of one batch, name indexes): each group's values and its positions in order; the
    groups in order of first appearance."""
    positions = np.flatnonzero(where)
    if not len(positions):
        return []
    combined = np.zeros(len(positions), dtype=np.int64)
    for column in columns:  # one int per combination, in a small range
        values = column[positions]
        low = int(values.min())
        combined = combined * (int(values.max()) - low + 1) + (values - low)
    code = np.zeros(len(where), dtype=np.int64)
    code[positions] = dense(combined)[1]
    at, starts, _codes = grouped(code, where)
    bounds = starts.tolist()
    groups = [at[start:end] for start, end in pairwise(bounds)]
    return [(tuple(int(column[group[0]]) for column in columns), group) for group in groups]
