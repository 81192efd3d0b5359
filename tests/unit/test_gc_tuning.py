"""The collector settings every streaming service applies once started (services/core/runtime.py)."""

from __future__ import annotations

import gc

import pytest

from services.core.runtime import GC_YOUNG_THRESHOLD, tune_gc


def test_tune_gc_raises_the_young_threshold_and_freezes_start_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The freeze count is no measure of the calls: a frozen object freed later leaves the frozen
    # generation, and in an xdist worker other threads (execnet's, servers earlier tests left) free
    # some between two reads (two of three local -n 2 runs: 447409 == 447411). The calls to
    # gc.freeze are counted instead.
    freezes: list[None] = []
    real_freeze = gc.freeze
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(real_freeze()))
    tune_gc.cache_clear()  # the first call of this process, whatever other tests here called it before
    older = gc.get_threshold()[1:]
    tune_gc()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *older)
    frozen = gc.get_freeze_count()
    assert frozen > 0 and len(freezes) == 1  # this process's modules, at least
    made_since = [[n] for n in range(1000)]  # containers made after the first call
    tune_gc()  # a second service in the same process
    assert len(freezes) == 1, "only the first call freezes"
    assert gc.get_freeze_count() <= frozen, "what was made since is not frozen"
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *older)
    del made_since
