"""The benches' open-loop sender (bench/common.py `drive`): latency counts from when a request
was due, so a stall of the sending process is not left out of the figures."""

from __future__ import annotations

import math
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest

from bench import common
from bench.common import drive


class Clock:
    """time.monotonic / time.time / time.sleep of the sender, on one clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_each_request_is_handed_the_time_it_was_due_whatever_the_sender_was_doing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stall of 50 ms at 1,000 req/s: the 50 requests sent late in a burst after it were
    stamped when sent, so their latency and deadlines left the stall out (a review)."""
    clock = Clock()
    monkeypatch.setattr(common, "time", clock)
    dues: list[float] = []

    def submit(due: float) -> Future[None]:
        dues.append(due)
        if len(dues) == 1:
            clock.now += 0.05  # the sender's stall
        done: Future[None] = Future()
        done.set_result(None)
        return done

    load = drive(submit, rate=1000.0, seconds=0.1)
    assert len(load.futures) == len(dues) == 100
    assert dues == pytest.approx([1_700_000_000.0 + i / 1000 for i in range(100)], abs=1e-6)
    assert load.behind_max_ms == pytest.approx(49.0)  # the second was due at 1 ms, sent at 50


def test_percentiles_count_requests_never_answered_as_slower_than_any() -> None:
    """2% unanswered left out: p99 read 10 ms, as if every request had been answered (a review)."""
    from bench.common import summarize

    answered = [10.0] * 980
    figures = summarize(answered, missing=20)
    assert figures["p50"] == 10.0 and figures["p99"] == math.inf and figures["max"] == math.inf
    assert summarize(answered, missing=0)["p99"] == 10.0
    assert summarize([], missing=3)["p50"] == math.inf and math.isnan(summarize([])["p50"])
    values = list(range(1, 101))  # numpy's linear percentile, where no missing one is reached
    assert summarize(values, missing=1)["p50"] == pytest.approx(float(np.percentile([*values, 1e9], 50)))


def test_the_highest_rate_meeting_the_deadlines_is_one_the_sender_kept() -> None:
    """A rate the sender fell short of could be the headline (a review)."""
    from bench.latency_curve import highest_rate

    def point(rate: float, kept: bool) -> dict[str, Any]:
        return {"rate": rate, "sender_kept": kept, "rendezvous": {"by_deadline_pct": 100.0}}

    assert highest_rate([point(1000, True), point(2000, False)], "by_deadline_pct") == 1000
    assert highest_rate([point(1000, True), point(2000, True)], "by_deadline_pct") == 2000
