"""Compiled loops of the batch fold (fold.py): grouping a batch's outputs in one pass each.

Why compiled: numpy groups by sorting (`np.unique`, `argsort`), a few hundred nanoseconds per
output on two cores, for codes that take a handful of values (a batch's models, buckets, pairs);
one pass with a table per code does the same work in a few nanoseconds per output. Compiled by
numba and cached on disk (services/core/compiled.py).
"""

from __future__ import annotations

import numpy as np

from services.core.compiled import compiled


@compiled(allocates=True)
def first_seen(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of `codes` (non-negative, in a narrow range: `dense`) in order of first
    appearance, and each code's index among them."""
    span = codes.max() + 1 if len(codes) else 0
    index = np.full(span, -1, dtype=np.int64)
    distinct = np.empty(len(codes), dtype=np.int64)
    ids = np.empty(len(codes), dtype=np.int64)
    found = 0
    for i in range(len(codes)):
        code = codes[i]
        if index[code] < 0:
            index[code] = found
            distinct[found] = code
            found += 1
        ids[i] = index[code]
    return distinct[:found], ids


@compiled(allocates=True)
def grouped(codes: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions where `where` holds, grouped by their code (non-negative, in a narrow range:
    `dense`): (positions, group starts with the end appended, each group's code); groups in order
    of first appearance, positions in order within each."""
    span = codes.max() + 1 if len(codes) else 0
    index = np.full(span, -1, dtype=np.int64)
    keys = np.empty(len(codes), dtype=np.int64)
    counts = np.zeros(len(codes) + 1, dtype=np.int64)
    groups = 0
    for i in range(len(codes)):
        if where[i]:
            code = codes[i]
            if index[code] < 0:
                index[code] = groups
                keys[groups] = code
                groups += 1
            counts[index[code] + 1] += 1
    starts = np.cumsum(counts[: groups + 1])
    fill = starts[:groups].copy()
    positions = np.empty(starts[groups], dtype=np.int64)
    for i in range(len(codes)):
        if where[i]:
            group = index[codes[i]]
            positions[fill[group]] = i
            fill[group] += 1
    return positions, starts, keys[:groups]


@compiled(allocates=True)
def last_per_row(rows: np.ndarray, chosen: np.ndarray, records: int) -> np.ndarray:
    """Per record, the position of its last output where `chosen` holds (-1: none)."""
    last = np.full(records, -1, dtype=np.int64)
    for i in range(len(rows)):
        if chosen[i]:
            last[rows[i]] = i
    return last


# Codes up to this many times a batch's outputs are counted in a table that wide; wider ones (a
# log with thousands of model or label names) are made dense first, with a sort.
TABLE_PER_OUTPUT = 4


def dense(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, codes) where codes index values: `codes` itself and an identity when their range
    is narrow enough for `first_seen` / `grouped`'s tables, else made dense (np.unique)."""
    if not len(codes) or int(codes.max()) < TABLE_PER_OUTPUT * len(codes) + 1024:
        return np.arange(int(codes.max()) + 1 if len(codes) else 0), codes
    values, inverse = np.unique(codes, return_inverse=True)
    return values, inverse.ravel()


def warm_up() -> None:
    """Compile (or load from the cache) every loop here now, so that no batch waits for it."""
    codes = np.zeros(1, dtype=np.int64)
    first_seen(codes)
    grouped(codes, np.ones(1, dtype=bool))
    last_per_row(codes, np.ones(1, dtype=bool), 1)
