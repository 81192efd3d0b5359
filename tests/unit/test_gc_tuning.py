"""The collector settings every streaming service applies once started (services/core/runtime.py)."""

from __future__ import annotations

import gc

from services.core.runtime import GC_YOUNG_THRESHOLD, tune_gc


def test_tune_gc_raises_the_young_threshold_and_freezes_start_up_once() -> None:
    older = gc.get_threshold()[1:]
    tune_gc()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *older)
    frozen = gc.get_freeze_count()
    assert frozen > 0  # this process's modules, at least
    made_since = [[n] for n in range(1000)]  # containers made after the first call
    tune_gc()  # a second service in the same process
    assert gc.get_freeze_count() == frozen, "only the first call freezes"
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *older)
    del made_since
