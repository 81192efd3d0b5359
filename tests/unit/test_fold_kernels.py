"""The batch fold's compiled loops (services/comparison/kernels.py) against plain Python."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from services.comparison.kernels import first_seen, grouped, last_per_row


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_first_seen_numbers_codes_in_order_of_appearance(seed: int) -> None:
    codes = np.random.default_rng(seed).integers(0, 12, size=200)
    distinct, ids = first_seen(codes)
    expected = list(dict.fromkeys(codes.tolist()))
    assert distinct.tolist() == expected
    assert ids.tolist() == [expected.index(code) for code in codes.tolist()]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_grouped_keeps_first_appearance_and_order_within_groups(seed: int) -> None:
    rng = np.random.default_rng(seed)
    codes, where = rng.integers(0, 9, size=300), rng.random(300) < 0.7
    positions, starts, keys = grouped(codes, where)
    expected: dict[int, list[int]] = {}
    for i in np.flatnonzero(where).tolist():
        expected.setdefault(int(codes[i]), []).append(i)
    assert keys.tolist() == list(expected)
    assert [positions[a:b].tolist() for a, b in pairwise(starts.tolist())] == list(expected.values())


def test_nothing_to_group_or_number() -> None:
    empty = np.zeros(0, dtype=np.int64)
    assert [len(part) for part in first_seen(empty)] == [0, 0]
    positions, starts, keys = grouped(np.array([3, 1]), np.array([False, False]))
    assert (len(positions), starts.tolist(), len(keys)) == (0, [0], 0)


def test_last_per_row_is_the_last_chosen_output_of_each_record() -> None:
    rows = np.array([0, 0, 0, 1, 1, 3])
    chosen = np.array([True, False, True, False, False, True])
    assert last_per_row(rows, chosen, 4).tolist() == [2, -1, -1, 5]
