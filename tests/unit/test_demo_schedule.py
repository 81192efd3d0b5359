"""The schedule version the demo publishes on a kept control topic: its lead time, and the wait for it
(the broker stood in: what is read and written goes through a ScheduleBook)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from services.cli import demo
from services.control.schedule import Schedule
from services.control.topic import MIN_EFFECTIVE_IN_MS, ScheduleBook
from services.core.errors import ConfigError
from services.core.settings import Topics

NOW = 1_700_000_000_000
SPECS = [("slow", "demo:slow"), ("flaky", "demo:flaky")]


def _kept_topic(monkeypatch: pytest.MonkeyPatch, appended_at: int) -> list[Schedule]:
    """A control topic holding v1 naming other models; what the demo publishes is appended at
    `appended_at` by the broker's clock, and listed in the returned list."""
    book = ScheduleBook.holding(Schedule(models=("champion", "challenger"), version=1))
    published: list[Schedule] = []

    def publish(_config: object, _topic: str, schedule: Schedule) -> None:
        published.append(schedule)
        book.add(schedule, appended_at)

    monkeypatch.setattr(demo, "load_book", lambda _config, _topic, _name: book)
    monkeypatch.setattr(demo, "publish", publish)
    monkeypatch.setattr(demo, "now_ms", lambda: NOW)
    return published


def test_the_demos_own_version_takes_the_lead_time_of_every_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """It was effective at once: a reader live as it was published (a gateway on the demo's topics, a
    rendezvous under another --group) read it up to a poll later, having decided the requests created
    in between under the kept version, which an instance re-reading them decides under this one."""
    published = _kept_topic(monkeypatch, appended_at=NOW + 20)
    governs_at = demo._schedule_naming(SPECS, 300, {}, Topics.from_prefix("rdv."), Console(file=io.StringIO()))
    (schedule,) = published
    assert schedule.models == ("slow", "flaky") and schedule.version == 2
    assert schedule.effective_at - schedule.created_at >= MIN_EFFECTIVE_IN_MS
    assert governs_at == schedule.effective_at == NOW + MIN_EFFECTIVE_IN_MS


def test_the_demo_waits_for_when_the_log_says_its_version_governs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Appended by a broker whose clock is 8 s ahead, the version governs from then (ScheduleBook.add):
    requests the demo created before would be decided under the kept version, naming models not running."""
    _kept_topic(monkeypatch, appended_at=NOW + 8_000)
    out = io.StringIO()
    governs_at = demo._schedule_naming(SPECS, 300, {}, Topics.from_prefix("rdv."), Console(file=out))
    assert governs_at == NOW + 8_000
    clock = [NOW]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += int(seconds * 1000)

    monkeypatch.setattr(demo, "now_ms", lambda: clock[0])
    monkeypatch.setattr(demo.time, "sleep", sleep)
    console = Console(file=out, width=300)
    demo._wait_until_governing(governs_at, console)
    assert clock[0] >= governs_at and max(slept) <= 1.0
    assert "waiting 8 s for the demo's schedule version to take effect" in out.getvalue()
    slept.clear()
    demo._wait_until_governing(governs_at, console)  # already in force: no wait
    demo._wait_until_governing(None, console)  # nothing published: none either
    assert slept == []


def test_a_kept_schedule_naming_the_demos_models_is_left_and_nothing_is_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    published = _kept_topic(monkeypatch, appended_at=NOW)
    same = [("challenger", "demo:challenger"), ("champion", "demo:champion")]
    assert demo._schedule_naming(same, 300, {}, Topics.from_prefix("rdv."), Console(file=io.StringIO())) is None
    assert published == []


def test_a_kept_version_pending_for_hours_is_a_one_line_refusal_not_a_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept topic with a version set to take effect in 2 h (`schedule set --effective-in 2h`): the
    demo's version could start only after it, and the demo slept 7,200 s, saying the broker's clock
    was ahead (a review)."""
    published = _kept_topic(monkeypatch, appended_at=NOW)
    book = demo.load_book({}, "rdv.control", "default")
    book.add(Schedule(models=("champion",), version=2, created_at=NOW, effective_at=NOW + 7_200_000), NOW)
    with pytest.raises(ConfigError, match=r"v2 \(champion\) holds every version after it back to .*prefix demo"):
        demo._schedule_naming(SPECS, 300, {}, Topics.from_prefix("rdv."), Console(file=io.StringIO()))
    assert published == []


def test_a_demo_process_exiting_during_the_wait_is_said_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [NOW]
    monkeypatch.setattr(demo, "now_ms", lambda: clock[0])
    monkeypatch.setattr(demo.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + int(seconds * 1000)))

    def exited() -> None:
        raise ConfigError("a demo process exited")

    with pytest.raises(ConfigError, match="exited"):
        demo._wait_until_governing(NOW + 3_000, Console(file=io.StringIO()), exited)
    assert clock[0] == NOW  # before any sleep


def test_the_demos_deadlines_met_counts_usable_answers_of_every_settled_request() -> None:
    """Counted over answers received only, 11 answers of 1,000 requests showed 100% met; and a
    TIMEOUT or ERROR answer in time counted as met (a review)."""
    from concurrent.futures import Future

    from services.cli.demo import Tally
    from services.client.client import Answer

    def answered(status: str, score: float | None, late_ms: int) -> Future[Answer]:
        future: Future[Answer] = Future()
        future.set_result(Answer("r", status, "champion", "v1", score, "x", "", 1_000, 1_200, 1_100, "s", 1,
                                 1_200 + late_ms))
        return future

    tally = Tally()
    for future in (answered("OK", 0.9, 0), answered("TIMEOUT", None, 0), answered("OK", 0.9, 50)):
        tally.add(future)
    tally.gave_up(2)
    assert _rows(tally)["deadlines met"][2:] == ("1", "20.0%")
    empty = _rows(Tally())
    assert empty["latency p50 / p99 (last 20,000)"][2] == "-" and empty["deadlines met"][3] == "-"  # not 0 ms, 0%


def _rows(tally: Any) -> dict[str, tuple[str, ...]]:
    table = tally.table(1.0)
    cells = ([str(cell) for cell in column._cells] for column in table.columns)
    return {row[0]: row for row in zip(*cells, strict=True)}


def test_the_demos_table_shows_a_model_name_from_the_answers_topic_escaped_and_unstyled() -> None:
    """The answers topic is anyone's word: a model name with ESC sequences set the terminal's
    title and cleared the screen, and one with rich markup restyled the table (a review)."""
    from concurrent.futures import Future

    from rich.console import Console

    from services.cli.demo import Tally
    from services.client.client import Answer

    future: Future[Answer] = Future()
    name = "[bold red]x[/] \x1b]0;PWNED\x07\x1b[2J"
    future.set_result(Answer("r", "OK", name, "v1", 0.5, "x", "", 1_000, 1_200, 1_100, "s", 1, 1_150))
    tally = Tally()
    tally.add(future)
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(tally.table(1.0))
    assert "\x1b" not in out.getvalue()
    assert "[bold red]x[/] \\x1b]0;PWNED\\x07\\x1b[2J" in out.getvalue()


def _kept(monkeypatch: pytest.MonkeyPatch, *versions: tuple[tuple[str, ...], int, int]) -> ScheduleBook:
    """A kept control topic of these versions ((models, effective_at, written_at), in order) the demo
    reads, and may not publish to."""
    book = ScheduleBook("default")
    for number, (models, effective_at, written_at) in enumerate(versions, start=1):
        book.add(Schedule(models=models, version=number, effective_at=effective_at), written_at=written_at)
    monkeypatch.setattr(demo, "load_book", lambda _config, _topic, _name: book)
    monkeypatch.setattr(demo, "publish", lambda *_args: pytest.fail("nothing to publish"))
    monkeypatch.setattr(demo, "now_ms", lambda: NOW)
    return book


def test_a_kept_version_naming_the_demos_models_but_pending_is_no_version_in_force(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """v1 naming other models in force, v2 naming the demo's for tomorrow: the demo published nothing,
    said nothing, and answered TIMEOUT for the day (a review). Now it says so; a version in force that
    names the demo's models, with another pending, serves it."""
    _kept(monkeypatch, (("x", "y"), 0, NOW - 60_000), (("slow", "flaky"), NOW + 72_000_000, NOW - 30_000))
    with pytest.raises(ConfigError, match=r"the kept schedule v2 \(slow, flaky\) holds every version after it back to"):
        demo._schedule_naming(SPECS, 300, {}, Topics.from_prefix("rdv."), Console(file=io.StringIO()))
    _kept(monkeypatch, (("flaky", "slow"), 0, NOW - 60_000), (("slow", "flaky"), NOW + 72_000_000, NOW - 30_000))
    out = io.StringIO()
    assert demo._schedule_naming(SPECS, 300, {}, Topics.from_prefix("rdv."), Console(file=out, width=200)) is None
    assert "the kept schedule v1 is in force: flaky, slow in that order" in out.getvalue()


def test_a_kept_first_version_for_later_naming_other_models_holds_the_demos_back_and_says_so(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first version governs from the start of time, but one after it starts no earlier than
    its effective_at: the demo published its version for tomorrow and waited the day (a review)."""
    _kept(monkeypatch, (("other",), NOW + 86_400_000, NOW - 60_000))
    with pytest.raises(ConfigError, match=r"v1 \(other\) holds every version after it back to .*--topic-prefix demo"):
        demo._schedule_naming(SPECS, 300, {}, Topics.from_prefix("rdv."), Console(file=io.StringIO()))


def test_a_version_naming_other_models_pending_between_two_naming_the_demos_is_said(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Judged by the one in force and the latest, the demo kept a schedule that switched to other models
    ten minutes into the run, every answer a TIMEOUT from then, without a word (a review)."""
    _kept(monkeypatch, (("slow", "flaky"), 0, NOW - 60_000), (("other",), NOW + 600_000, NOW - 30_000),
          (("flaky", "slow"), NOW + 86_400_000, NOW - 20_000))
    with pytest.raises(ConfigError, match=r"v3 \(flaky, slow\) holds every version after it back to"):
        demo._schedule_naming(SPECS, 300, {}, Topics.from_prefix("rdv."), Console(file=io.StringIO()))
