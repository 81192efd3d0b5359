"""The log's clock per partition: timers in log time, and when a quiet partition needs a clock record."""

from __future__ import annotations

from services.rendezvous.clock import LogClocks


def test_timers_fire_once_the_clock_passes_them_earliest_first() -> None:
    clocks: LogClocks[str] = LogClocks()
    for at, item in [(30, "c"), (10, "a"), (20, "b"), (10, "a2"), (50, "e")]:
        clocks.wake(0, at, item)
    assert clocks.earliest() == 10
    assert clocks.advance(0, 10) == []  # at 10: not past 10 yet
    assert clocks.advance(0, 25) == ["a", "a2", "b"]
    assert clocks.advance(0, 20) == []  # an older append time never moves a clock back
    assert clocks.now(0) == 25 and clocks.pending() == 2
    assert clocks.advance(1, 100) == []  # partitions have clocks of their own


def test_a_quiet_partition_with_a_due_timer_asks_for_one_clock_record_at_a_time() -> None:
    clocks: LogClocks[str] = LogClocks()
    clocks.wake(0, 1_000, "x")
    clocks.wake(1, 5_000, "y")
    assert clocks.markers_due(wall_ms=1_002, delay_ms=3, resend_s=0.5, wall_s=10.0) == []
    assert clocks.markers_due(wall_ms=1_003, delay_ms=3, resend_s=0.5, wall_s=10.0) == [0]
    assert clocks.markers_due(wall_ms=1_010, delay_ms=3, resend_s=0.5, wall_s=10.2) == []  # one is on its way
    assert clocks.markers_due(wall_ms=1_600, delay_ms=3, resend_s=0.5, wall_s=10.6) == [0]  # it got lost: again
    assert clocks.advance(0, 1_001) == ["x"]
    assert clocks.markers_due(wall_ms=1_700, delay_ms=3, resend_s=0.5, wall_s=10.7) == []


def test_timers_that_no_longer_matter_ask_for_no_clock_record_and_wake_nobody() -> None:
    finished = {"closed"}
    clocks: LogClocks[str] = LogClocks(lambda _at, item: item not in finished)
    clocks.wake(0, 1_000, "closed")
    clocks.wake(0, 2_000, "open")
    assert clocks.earliest() == 2_000
    assert clocks.markers_due(wall_ms=1_500, delay_ms=3, resend_s=0.5, wall_s=10.0) == []
    assert clocks.markers_due(wall_ms=2_003, delay_ms=3, resend_s=0.5, wall_s=10.1) == [0]
    finished.add("open")
    assert clocks.earliest() is None and clocks.pending() == 0
