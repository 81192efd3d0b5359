"""The once-per-period limiter of log lines (services/core/rate_limit.py), on a clock of its own."""

from __future__ import annotations

import pytest

from services.core.rate_limit import Held, OncePerPeriod, PerSecond
from tests.unit.test_kafka_logs import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_the_first_line_passes_then_the_next_after_the_period_with_the_count(clock: Clock) -> None:
    limit: OncePerPeriod[str] = OncePerPeriod(30.0, clock)
    assert limit.passes("refused") == Held(0, 0.0)
    for _ in range(5):
        clock.now += 1
        assert limit.passes("refused") is None
    clock.now = 1029.9
    assert limit.passes("refused") is None, "the period runs from the line that passed"
    clock.now = 1030.0
    assert limit.passes("refused") == Held(6, 30.0)
    assert limit.passes("refused") is None, "the count and the period start over"
    clock.now += 30
    assert limit.passes("refused") == Held(1, 30.0)


def test_keys_are_limited_apart(clock: Clock) -> None:
    limit: OncePerPeriod[str] = OncePerPeriod(60.0, clock)
    assert limit.passes("a") is not None and limit.passes("b") is not None
    assert limit.passes("a") is None and limit.passes("a") is None and limit.passes("b") is None
    clock.now += 60
    assert limit.passes("a") == Held(2, 60.0) and limit.passes("b") == Held(1, 60.0)


def test_a_line_that_always_passes_says_the_count_and_restarts_the_period(clock: Clock) -> None:
    limit: OncePerPeriod[str] = OncePerPeriod(30.0, clock)
    limit.passes("k")
    limit.passes("k")
    clock.now += 10
    assert limit.passes("k", always=True) == Held(1, 10.0)
    clock.now += 25
    assert limit.passes("k") is None, "25 s after the line that always passed"


def test_sources_reporting_the_same_events_count_once(clock: Clock) -> None:
    limit: OncePerPeriod[str] = OncePerPeriod(30.0, clock)
    limit.passes("k", source="log")
    for _ in range(4):
        limit.passes("k", source="log")
        limit.passes("k", source="error")
    limit.passes("k", source="error")
    clock.now += 30
    assert limit.passes("k", source="log") == Held(5, 30.0), "the largest count, not the sum"


def test_the_given_time_is_used_instead_of_the_clock(clock: Clock) -> None:
    limit: OncePerPeriod[str] = OncePerPeriod(30.0, clock)
    limit.passes("k", now=0.0)
    assert limit.passes("k", now=10.0) is None
    assert limit.passes("k", now=31.0) == Held(1, 31.0)


def test_due_says_the_keys_held_back_a_whole_period_and_restarts_them(clock: Clock) -> None:
    limit: OncePerPeriod[str] = OncePerPeriod(30.0, clock)
    for key in ("quiet", "held", "skipped"):
        limit.passes(key)
    limit.passes("held")
    limit.passes("held")
    limit.passes("skipped")
    clock.now += 20
    assert limit.due() == [], "not a whole period yet"
    clock.now += 10
    assert limit.due(skip="skipped") == [("held", Held(2, 30.0))], "nothing held back of 'quiet': nothing to say"
    assert limit.due() == [("skipped", Held(1, 30.0))], "'held' was said and restarted"
    clock.now += 5
    assert limit.passes("held") is None, "its period restarted when its count was said"


def test_oldest_and_forget(clock: Clock) -> None:
    limit: OncePerPeriod[int] = OncePerPeriod(30.0, clock)
    with pytest.raises(KeyError):
        limit.oldest()
    limit.passes(1)
    clock.now += 1
    limit.passes(2)
    limit.passes(1)
    assert len(limit) == 2 and 1 in limit and limit.oldest() == 1
    clock.now += 3
    assert limit.forget(1) == Held(1, 4.0)
    assert 1 not in limit and limit.oldest() == 2
    assert limit.passes(1) == Held(0, 0.0), "a forgotten key's next line is a first one"


def test_drain_says_every_count_and_forgets_every_key(clock: Clock) -> None:
    limit: OncePerPeriod[str] = OncePerPeriod(30.0, clock)
    limit.passes("a")
    limit.passes("b")
    limit.passes("b")
    clock.now += 7
    assert limit.drain() == [("b", Held(1, 7.0))]
    assert len(limit) == 0
    assert limit.drain() == []
    assert limit.passes("b") == Held(0, 0.0)


def test_per_second_allows_so_many_uses_in_each_second_of_its_clock() -> None:
    now = [100.2]
    budget = PerSecond(2, clock=lambda: now[0])
    assert [budget.spend() for _ in range(3)] == [True, True, False]
    now[0] = 100.9  # the same second
    assert not budget.spend()
    now[0] = 101.0  # the next one starts afresh
    assert [budget.spend() for _ in range(3)] == [True, True, False]
