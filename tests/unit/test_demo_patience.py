"""The demo's waits say they are still waiting (pure logic: a fake clock, a console into a buffer)."""

from __future__ import annotations

import io

from rich.console import Console

from services.cli.demo import Patience


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_patience_says_a_line_every_period_with_the_time_waited() -> None:
    out, clock = io.StringIO(), FakeClock()
    patience = Patience(Console(file=out, width=200), lambda waited: f"still waiting ({waited:.0f} s)",
                        every_s=5.0, clock=clock)
    for step in range(1, 24):  # 11.5 s in half seconds
        clock.now = 100.0 + step * 0.5
        patience.tick()
    assert out.getvalue().splitlines() == ["still waiting (5 s)", "still waiting (10 s)"]
    assert patience.waited() == 11.5


def test_patience_is_silent_before_its_first_period() -> None:
    out, clock = io.StringIO(), FakeClock()
    patience = Patience(Console(file=out), lambda waited: "never", every_s=5.0, clock=clock)
    clock.now += 4.9
    patience.tick()
    assert out.getvalue() == ""
