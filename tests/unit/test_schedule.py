"""The schedule policy: preference, per-model waits, errors, deadline, timeout."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.control.schedule import Outcome, Schedule, Status
from services.control.topic import MAX_VERSION, VERSION_HEADROOM, ScheduleBook
from services.core.errors import ConfigError

OK = Outcome(usable=True)
FAILED = Outcome(usable=False, error="ValueError: boom")
T0, DEADLINE = 1_000, 1_200
SCHEDULE = Schedule(models=("champion", "challenger", "canary"))


def test_preferred_model_wins_as_soon_as_it_answers() -> None:
    decision = SCHEDULE.decide({"champion": OK}, T0, DEADLINE, T0 + 5)
    assert decision is not None and (decision.status, decision.model) == (Status.OK, "champion")


def test_waits_for_the_preferred_model_until_the_deadline() -> None:
    assert SCHEDULE.decide({"challenger": OK, "canary": OK}, T0, DEADLINE, DEADLINE - 1) is None
    assert SCHEDULE.decide({"challenger": OK, "canary": OK}, T0, DEADLINE, DEADLINE) is None
    decision = SCHEDULE.decide({"challenger": OK, "canary": OK}, T0, DEADLINE, DEADLINE + 1)
    assert decision is not None and (decision.status, decision.model) == (Status.FALLBACK, "challenger")
    assert "champion late" in decision.reason


def test_error_counts_as_answered_unusable_at_once() -> None:
    decision = SCHEDULE.decide({"champion": FAILED, "challenger": OK}, T0, DEADLINE, T0 + 1)
    assert decision is not None and (decision.status, decision.model) == (Status.FALLBACK, "challenger")
    assert "champion failed" in decision.reason


def test_a_score_with_neither_a_score_nor_an_error_is_said_so_not_none() -> None:
    """A forged Score with both null read 'champion failed (None)' (a review)."""
    decision = SCHEDULE.decide({"champion": Outcome(usable=False), "challenger": OK}, T0, DEADLINE, T0 + 1)
    assert decision is not None and decision.reason == (
        "fallback: champion failed (a score with neither a score nor an error)")


def test_error_of_preferred_still_waits_for_the_next_in_line() -> None:
    assert SCHEDULE.decide({"champion": FAILED, "canary": OK}, T0, DEADLINE, T0 + 1) is None
    decision = SCHEDULE.decide({"champion": FAILED, "canary": OK}, T0, DEADLINE, DEADLINE + 1)
    assert decision is not None and decision.model == "canary"


def test_timeout_when_nothing_usable_by_the_deadline() -> None:
    decision = SCHEDULE.decide({"champion": FAILED}, T0, DEADLINE, DEADLINE + 3)
    assert decision is not None and decision.status is Status.TIMEOUT and decision.model is None


def test_error_status_when_every_model_failed_before_the_deadline() -> None:
    outcomes = dict.fromkeys(SCHEDULE.models, FAILED)
    decision = SCHEDULE.decide(outcomes, T0, DEADLINE, T0 + 1)
    assert decision is not None and decision.status is Status.ERROR


def test_per_model_wait_moves_on_before_the_deadline() -> None:
    schedule = Schedule(models=("champion", "challenger"), waits_ms={"champion": 50})
    assert schedule.decide({"challenger": OK}, T0, DEADLINE, T0 + 50) is None
    decision = schedule.decide({"challenger": OK}, T0, DEADLINE, T0 + 51)
    assert decision is not None and decision.model == "challenger"
    # A preferred score appended in time wins, whenever it is read.
    decision = schedule.decide({"champion": OK, "challenger": OK}, T0, DEADLINE, T0 + 80)
    assert decision is not None and decision.model == "champion"
    # One appended after its wait is late: it counts as not there.
    late = Outcome(usable=True, at=T0 + 51)
    decision = schedule.decide({"champion": late, "challenger": OK}, T0, DEADLINE, T0 + 80)
    assert decision is not None and decision.model == "challenger" and decision.at == T0 + 50


def test_decision_time_is_the_log_time_that_determined_it() -> None:
    decision = SCHEDULE.decide({"champion": Outcome(True, at=T0 + 7)}, T0, DEADLINE, T0 + 30)
    assert decision is not None and decision.at == T0 + 7
    decision = SCHEDULE.decide({"champion": FAILED, "challenger": Outcome(True, at=T0 + 9)}, T0, DEADLINE, T0 + 40)
    assert decision is not None and decision.at == T0 + 9
    decision = SCHEDULE.decide({}, T0, DEADLINE, DEADLINE + 25)
    assert decision is not None and decision.status is Status.TIMEOUT and decision.at == DEADLINE


def test_a_decision_does_not_depend_on_when_it_is_evaluated() -> None:
    """Evaluated at any clock from the first that decides it on, the answer is the same: what any
    instance re-reading the same records decides."""
    schedule = Schedule(models=("champion", "challenger", "canary"), waits_ms={"champion": 50, "challenger": 100})
    appended = {"champion": Outcome(True, at=T0 + 60), "challenger": Outcome(True, at=T0 + 80),
                "canary": Outcome(True, at=T0 + 5)}

    def read_by(clock: int) -> dict[str, Outcome]:  # what an instance has read once the clock is there
        return {m: o for m, o in appended.items() if o.at <= clock}

    decisions = [(c, schedule.decide(read_by(c), T0, DEADLINE, c)) for c in range(T0, DEADLINE + 500)]
    first = next(d for _c, d in decisions if d is not None)
    assert all(d == first for c, d in decisions if c >= T0 + 80)
    assert all(d is None for c, d in decisions if c < T0 + 80)
    assert first.model == "challenger" and first.at == T0 + 80


def test_next_check_is_the_next_give_up_time() -> None:
    schedule = Schedule(models=("champion", "challenger"), waits_ms={"champion": 50})
    assert schedule.next_check({}, T0, DEADLINE, T0) == T0 + 50
    assert schedule.next_check({}, T0, DEADLINE, T0 + 50) == T0 + 50
    assert schedule.next_check({}, T0, DEADLINE, T0 + 51) == DEADLINE


def test_default_deadline_applies_when_the_request_has_none() -> None:
    schedule = Schedule(models=("m",), default_deadline_ms=75)
    assert schedule.deadline_for(T0, 0) == T0 + 75
    assert schedule.deadline_for(T0, T0 + 10) == T0 + 10


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": []}, "names no model"),
        ({"models": ["a", "a"]}, "listed twice"),
        ({"models": ["a"], "waits_ms": {"b": 5}}, "not in the schedule"),
        ({"models": ["a"], "waits_ms": {"a": -1}}, "from 0 to 2147483647"),
        ({"models": ["a"], "default_deadline_ms": 0}, "from 1 to 2147483647"),
        # Beyond the record's Avro int / long: an OverflowError at publish, or at a rendezvous' start.
        ({"models": ["a"], "waits_ms": {"a": 2**31}}, "from 0 to 2147483647"),
        ({"models": ["a"], "default_deadline_ms": 1e300}, "from 1 to 2147483647"),
        ({"models": ["a"], "effective_at": 2**64}, "effective_at must be epoch milliseconds"),
        ({"models": ["a"], "version": 2**63}, "version must be"),
        ({"models": ["a"], "traffic": {"fraction": 0.5}}, r"'traffic' must be null or .* got the keys \['fraction'\]"),
        # A mistyped key or a false-like value was taken for "no split", silently (a review).
        ({"models": ["a", "b"], "traffic": {"model": "b", "share": 0.1}}, r"got the keys \['model', 'share'\]"),
        ({"models": ["a", "b"], "traffic": 0}, r"'traffic' must be null or .*, got 0"),
        ({"models": ["a", "b"], "traffic": []}, r"'traffic' must be null or .*, got \[\]"),
        ({"models": ["a", "b"], "traffic": {"model": "b", "fraction": 10**400}}, "traffic fraction must be a number"),
        ({"models": "a"}, "must be a list"),
        ({"models": ["a"], "colour": "red"}, "unknown field"),
    ],
)
def test_malformed_schedules_are_refused_with_a_reason(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Schedule.from_dict(data)


def test_what_an_operator_writes_names_models_a_worker_could_be_and_splits_on_a_challenger(tmp_path: Path) -> None:
    """A file could name 'a b', a NUL or a lone surrogate (which then failed the record's encoding
    with a traceback), and a split on the preferred model, which did nothing until a promotion
    made that model a fallback answering its share first (a review). Readers of the control
    topic stay as lenient as before: what older versions wrote is still read."""
    from services.control.changes import promotion
    from services.control.topic import encode_schedule

    for models, message in ((["champion", "a b"], r"schedule: model 'a b': use letters"),
                            (["champion", "\\ud800"], r"schedule: model '\\ud800': use letters")):
        path = tmp_path / "s.json"
        path.write_text('{"models": [' + ", ".join(f'"{m}"' for m in models) + "]}")  # JSON escapes kept as written
        with pytest.raises(ConfigError, match=message):
            Schedule.from_file(path)
    split_on_preferred = {"models": ["champion", "challenger"], "traffic": {"model": "champion", "fraction": 0.3}}
    (tmp_path / "t.json").write_text(json.dumps(split_on_preferred))
    with pytest.raises(ConfigError, match="champion is the preferred model"):
        Schedule.from_file(tmp_path / "t.json")
    written_before = Schedule.from_dict(split_on_preferred)  # as a reader takes it from the topic
    assert promotion(written_before, "challenger", "").traffic_model is None  # not the old champion's share
    with pytest.raises(ConfigError, match="not valid Unicode"):
        encode_schedule(Schedule(models=("a",), comment="\ud800"))


def test_round_trip_through_dict() -> None:
    schedule = Schedule(models=("a", "b"), waits_ms={"a": 10}, default_deadline_ms=90, name="s", version=7)
    assert Schedule.from_dict(schedule.to_dict()) == schedule


def test_a_version_leaves_room_for_the_versions_after_it() -> None:
    """A forged v2^53 - 1 on the compacted control topic would have refused every later version."""
    book = ScheduleBook("default")
    top = MAX_VERSION - VERSION_HEADROOM - 1
    assert book.refusal(Schedule(models=("a",), version=2**53 - 1), written_at=0) == (
        f"version {2**53 - 1} is outside 1..{top}")
    assert book.refusal(Schedule(models=("a",), version=20251201), written_at=0) is None  # date-like: fine
    book.add(Schedule(models=("a",), version=top))
    # The next version steps into the room kept (it froze the schedule for good: a review); a jump does not.
    assert book.refusal(Schedule(models=("a",), version=top + 1), written_at=0) is None
    assert book.refusal(Schedule(models=("a",), version=top + 2), written_at=0) == (
        f"version {top + 2} is outside 1..{top} (beyond it, only the next version, v{top + 1})")
    book.add(Schedule(models=("a",), version=MAX_VERSION - 1))
    assert book.refusal(Schedule(models=("a",), version=MAX_VERSION), written_at=0) is not None


def test_an_effective_at_before_1970_is_refused_as_such() -> None:
    """It was refused as 'more than 7 days after the record was written' (a review)."""
    book = ScheduleBook("default")
    assert book.refusal(Schedule(models=("a",), version=2, effective_at=-5), written_at=1_700_000_000_000) == (
        "effective_at -5 is before 1970 (epoch milliseconds)")
    assert "more than 7 days after" in str(book.refusal(Schedule(models=("a",), version=2, effective_at=10**13), 0))


def test_rollback_restores_the_version_before_or_the_one_asked_for() -> None:
    """Run twice, a rollback restores what the first rolled back from (B, A, B): `--to` steps further back."""
    from services.control import changes

    book = ScheduleBook("default")
    for version, models in enumerate([("a",), ("b", "a"), ("c", "b", "a")], start=1):
        book.add(Schedule(models=models, version=version, effective_at=version))
    assert changes.rollback(book).models == ("b", "a")
    assert changes.rollback(book, to=1).models == ("a",) and changes.rollback(book, to=1).comment == "rollback to v1"
    with pytest.raises(ConfigError, match="--to 3: v3 is the latest version already"):
        changes.rollback(book, to=3)
    with pytest.raises(ConfigError, match=r"--to 7: default has no v7 \(versions: v1, v2, v3\)"):
        changes.rollback(book, to=7)
    book.add(Schedule(models=("c", "b", "a"), version=4, effective_at=4, comment="the same again"))
    with pytest.raises(ConfigError, match=r"v3's policy is the one in force already \(v4\): nothing to roll back"):
        changes.rollback(book)  # it published a v5 that changed nothing (a review)
    assert changes.rollback(book, to=2).models == ("b", "a")


def test_the_models_named_in_a_time_range_are_those_of_every_version_in_force_in_it() -> None:
    book = ScheduleBook.holding(Schedule(models=("a",), version=1, effective_at=100),
                                Schedule(models=("b",), version=2, effective_at=200),
                                Schedule(models=("c",), version=3, effective_at=300))
    assert book.named_between(0, 50) == {"a"}  # before the first: the first governs, as for a request
    assert book.named_between(150, 250) == {"a", "b"}
    assert book.named_between(200, 200) == {"b"}
    assert book.named_between(250, 10**6) == {"b", "c"}
    assert ScheduleBook("empty").named_between(0, 10**6) == frozenset()


def test_a_version_written_after_its_effective_at_governs_from_its_write_on() -> None:
    """A CLI host 5 s behind the broker wrote v2 effective 3 s before the broker appended it: a
    request created in between was answered under v1 live, and under v2 by an instance
    re-reading it after a failover (a review)."""
    v1, v2 = Schedule(models=("champion",), version=1), Schedule(models=("challenger",), version=2, effective_at=7_000)
    book = ScheduleBook("default")
    book.add(v1, written_at=1_000)
    book.add(v2, written_at=10_000)
    assert book.for_request(9_000).version == 1  # created before v2 existed
    assert book.for_request(10_000).version == 2
    assert book.named_between(7_000, 9_999) == {"champion"}
    first = ScheduleBook("default")
    first.add(v2, written_at=10_000)  # the first version governs every older request all the same
    assert first.for_request(9_000).version == 2


def one_partition(_config: object, topics: list[str], *_args: object) -> dict[str, int]:
    """`partition_counts` of a control topic as it must be (the broker's answer, not asked here)."""
    return dict.fromkeys(topics, 1)


def a_sound_control_topic(monkeypatch: pytest.MonkeyPatch, producer: type) -> None:
    """`publish`'s checks of the control topic passed (compacted, one partition; the broker's
    answers, not asked here), and `producer` the Producer class it writes with."""
    from services.control import topic

    monkeypatch.setattr(topic, "topic_configs", lambda *_args: {"cleanup.policy": "compact"})
    monkeypatch.setattr(topic, "partition_counts", one_partition)
    monkeypatch.setattr(topic, "Producer", producer)


def test_a_file_time_is_published_exactly_and_a_late_read_back_is_not_a_lost_race(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The file's effective_at went through 'ms from now' and back, moved by the seconds the live
    check took; and publish read its record back once, so an end offset lagging the write told
    the operator another change had won (a review)."""
    from services.control import topic
    from services.control.changes import next_version

    book = ScheduleBook("default")
    book.add(Schedule(models=("a", "b"), version=1, effective_at=1_000), 1_000)
    published = next_version(book, Schedule(models=("b", "a")), 5_000, 2_000, effective_at=1_700_003_600_000)
    assert (published.version, published.effective_at) == (2, 1_700_003_600_000)

    class Written:
        def __init__(self, _config: object) -> None:
            pass

        def produce(self, *_args: object, **_kwargs: object) -> None:
            pass

        def flush(self, *_args: object) -> int:
            return 0

    v1 = SimpleNamespace(schedule=Schedule(models=("a", "b"), version=1, effective_at=1_000), written_at=1_000)
    ours = SimpleNamespace(schedule=published, written_at=1_700_000_000_000)
    # A v1 in force from after ours would start: every reader refuses our v2 behind it.
    later_v1 = SimpleNamespace(schedule=Schedule(models=("a", "b"), version=1, effective_at=1_700_010_000_000),
                               written_at=1_700_000_000_000)
    script: list[list[SimpleNamespace]] = []  # what each read brings, the topic read on from where the last stopped
    reads: list[int] = []

    class Lagging:
        """The control topic read on, its end offsets catching up with the writes one read at a time."""

        def __init__(self, _config: object, _topic: str) -> None:
            reads.clear()

        def read_history(self) -> list[SimpleNamespace]:
            reads.append(1)
            return script[len(reads) - 1] if len(reads) <= len(script) else []

        def close(self) -> None:
            pass

    a_sound_control_topic(monkeypatch, Written)
    monkeypatch.setattr(topic, "ControlFeed", Lagging)
    script[:] = [[v1], [], [ours]]
    assert topic.publish({}, "rdv.control", published) is published
    assert len(reads) == 3
    # Read on, the book keeps what came before: a book built from the second read alone would take
    # our v2 as the first version, and say it is in force.
    monkeypatch.setattr(topic, "READ_BACK_S", 0.3)
    script[:] = [[later_v1], [ours]]
    with pytest.raises(ConfigError, match=r"was written, but no reader's v2 could be read back .* is unknown"):
        topic.publish({}, "rdv.control", published)
    assert len(reads) >= 2, "ours was read, and refused"
    monkeypatch.setattr(topic, "READ_BACK_S", 0.0)
    script[:] = [[v1]]
    with pytest.raises(ConfigError, match=r"was written, but no reader's v2 could be read back .* is unknown"):
        topic.publish({}, "rdv.control", published)


@pytest.mark.parametrize(("lead_ms", "ahead_ms", "said"), [
    (200, 1_800, "this host's clock is about 1800 ms behind the broker's"),
    (200, 0, "publishing it took that long"),
    (700, 1_300, "this host's clock is about 1300 ms behind the broker's"),  # 'effective in 2s', 1.3 s behind
    (960, 0, None),  # the demo's 1 s less a publish's few ms: no clock apart, nothing to say
    (2_000, 0, None),
])  # fmt: skip
def test_a_version_the_broker_appended_too_close_to_its_start_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, lead_ms: int, ahead_ms: int, said: str | None
) -> None:
    """A CLI host 2 s behind the broker published 'effective in 2s', and the version governed from
    its append, without the lead readers need: instances could disagree, and nothing said why (a
    review). Said only when the lead is under a reader's poll, with the cause measured: warned at
    every lead under a second, every demo publish told its operator to fix a clock (a review)."""
    from services.control import topic

    schedule = Schedule(models=("a",), version=1, effective_at=1_800_000_000_000)
    appended = schedule.effective_at - lead_ms
    a_sound_control_topic(monkeypatch, _writing_to([]))
    monkeypatch.setattr(topic.time, "time", lambda: (appended - ahead_ms) / 1000)  # this host's clock after the flush
    monkeypatch.setattr(topic, "_read_back", lambda _c, _t, s: (s, appended))
    with caplog.at_level("WARNING"):
        topic.publish({}, "rdv.control", schedule)
    warned = [r.getMessage() for r in caplog.records if "after the broker appended it" in r.getMessage()]
    if said is None:
        assert warned == []
    else:
        assert len(warned) == 1 and said in warned[0] and f"takes effect {lead_ms} ms after" in warned[0]


@pytest.mark.parametrize(("later_ms", "same"), [(0, True), (-60_000, True), (2 * 3600 * 1000, False)])
def test_another_writers_version_is_the_same_change_only_if_in_force_no_later_than_ours(
    monkeypatch: pytest.MonkeyPatch, later_ms: int, same: bool
) -> None:
    """Two rollbacks at once: the second was told to run again, and undid the first (a review).
    The same policy set for two hours later is another change: told "nothing more to do", its
    operator waited two hours (a review)."""
    from dataclasses import replace

    from services.control import topic

    ours = Schedule(models=("a", "b"), version=2, effective_at=1_800_000_000_000, comment="mine")
    theirs = replace(ours, effective_at=ours.effective_at + later_ms, comment="theirs")
    a_sound_control_topic(monkeypatch, _writing_to([]))
    monkeypatch.setattr(topic, "_read_back", lambda _c, _t, _s: (theirs, None))
    if same:
        assert topic.publish({}, "rdv.control", ours) == theirs
    else:
        with pytest.raises(ConfigError, match=r"v2 was published by another change first.*relative to v2"):
            topic.publish({}, "rdv.control", ours)


def test_a_version_never_starts_before_the_one_it_follows_when_the_broker_clock_steps_back() -> None:
    """v2 (effective 1,000) appended at 5,000, then v3 (effective 2,000) appended at 3,000 by a broker
    whose clock stepped back: the starts were [0, 5000, 3000], out of order, and which version
    governed a request depended on how many came after: one created at 4,000 was governed by v1,
    then by v3 once a v4 (appended at 6,000) was read (a review)."""
    book = ScheduleBook("default")
    book.add(Schedule(models=("a",), version=1), written_at=0)
    book.add(Schedule(models=("b",), version=2, effective_at=1_000), written_at=5_000)
    book.add(Schedule(models=("c",), version=3, effective_at=2_000), written_at=3_000)
    before = [book.for_request(t).version for t in (4_000, 4_999, 5_000)]
    book.add(Schedule(models=("d",), version=4, effective_at=2_000), written_at=6_000)
    assert [book.for_request(t).version for t in (4_000, 4_999, 5_000)] == before == [1, 1, 3]
    assert book.named_between(3_000, 4_999) == {"a"}
    # v2 never governs (v3 starts with it): no version to hold a model back for (a review).
    assert [(v.version, start) for v, start in book.in_force_and_after(4_000)] == [(1, 0), (3, 5_000), (4, 6_000)]
    assert book.latest_start == 6_000


def test_a_version_that_supersedes_pending_ones_takes_effect_as_asked_and_they_never_do() -> None:
    """A promotion (v2) scheduled for tomorrow held back every later change, an urgent rollback
    (v3) included, until it started (a review). v3 written at 10,000 with `supersedes_pending`
    starts at its own 11,000: v2 never governs, v1 stays in force until 11,000, and the history
    keeps all three."""
    day = 86_400_000
    book = ScheduleBook("default")
    book.add(Schedule(models=("a", "b"), version=1), written_at=0)
    book.add(Schedule(models=("b", "a"), version=2, effective_at=day), written_at=5_000)
    urgent = Schedule(models=("c", "a"), version=3, effective_at=11_000, supersedes_pending=True)
    plain = dataclasses.replace(urgent, supersedes_pending=False)
    assert "precedes v2's" in (book.refusal(plain, 10_000) or "")
    assert book.refusal(urgent, 10_000) is None
    book.add(urgent, written_at=10_000)
    assert [book.for_request(t).version for t in (10_999, 11_000, day, 2 * day)] == [1, 3, 3, 3]
    assert [v.version for v in book.versions] == [1, 2, 3] and book.latest == urgent
    assert book.superseded_by(2) == 3 and book.superseded_by(1) is None
    assert [(v.version, start) for v, start in book.in_force_and_after(10_000)] == [(1, 0), (3, 11_000)]
    assert book.named_between(0, 10_999) == {"a", "b"}  # v1's
    assert book.named_between(day, 2 * day) == {"c", "a"}  # v2, superseded, names nothing in force
    assert book.named_between(11_000, 2 * day) == {"c", "a"}
    # The next plain version follows v3, not v2's time: it is no longer anything's start.
    v4 = Schedule(models=("a",), version=4, effective_at=20_000)
    assert book.refusal(v4, 12_000) is None
    book.add(v4, written_at=12_000)
    assert book.for_request(20_000).version == 4


def test_a_rollback_or_promotion_of_a_superseding_version_does_not_supersede_by_itself() -> None:
    """Drafts made from an earlier version took its supersedes_pending along: rolling back to (or
    promoting over) a version published with the flag superseded pending versions unasked."""
    from services.control import changes

    book = ScheduleBook("default")
    book.add(Schedule(models=("a", "b"), version=1), written_at=0)
    book.add(Schedule(models=("b", "a"), version=2, effective_at=9_000, supersedes_pending=True), written_at=1_000)
    assert not changes.promotion(book.latest or Schedule(models=("x",)), "a", "").supersedes_pending
    book.add(Schedule(models=("c", "a"), version=3, effective_at=10_000), written_at=2_000)
    assert not changes.rollback(book, to=2).supersedes_pending


def test_a_superseding_version_never_reaches_back_past_what_governs_when_it_is_written() -> None:
    """Written with an effective_at before its write, or with a pending version that starts before
    it: it starts at its write, and a pending version starting earlier than it still governs until
    then (only those starting no earlier are superseded)."""
    book = ScheduleBook("default")
    book.add(Schedule(models=("a",), version=1), written_at=0)
    book.add(Schedule(models=("b",), version=2, effective_at=3_000), written_at=1_000)
    book.add(Schedule(models=("c",), version=3, effective_at=9_000), written_at=1_500)
    book.add(Schedule(models=("d",), version=4, effective_at=500, supersedes_pending=True), written_at=5_000)
    assert [book.for_request(t).version for t in (2_999, 3_000, 4_999, 5_000, 9_000)] == [1, 2, 2, 4, 4]
    assert (book.superseded_by(2), book.superseded_by(3)) == (None, 4)
    assert book.latest_start == 5_000


def test_supersedes_pending_is_read_from_a_file_as_true_or_false_only() -> None:
    assert Schedule.from_dict({"models": ["a"], "supersedes_pending": True}).supersedes_pending
    assert not Schedule.from_dict({"models": ["a"]}).supersedes_pending
    with pytest.raises(ConfigError, match="supersedes_pending must be true or false, got 1"):
        Schedule.from_dict({"models": ["a"], "supersedes_pending": 1})


def test_a_schedule_record_of_the_schema_before_supersedes_pending_reads_as_false() -> None:
    """The control topic holds records written before the field existed (schemas/history/schedule)."""
    from services.control.topic import decode_schedule
    from services.core.codec import Codec, load_schema, schemas_dir

    older = Codec(load_schema(schemas_dir() / "history" / "schedule" / "v1.avsc"))
    record = {k: v for k, v in Schedule(models=("a",), version=2, effective_at=7).to_dict().items()
              if k != "supersedes_pending"}
    read = decode_schedule(older.encode(record))
    assert (read.version, read.effective_at, read.supersedes_pending) == (2, 7, False)


@pytest.mark.parametrize(("configs", "says"), [
    ({"cleanup.policy": "compact", "retention.ms": "1000", "retention.bytes": "-1"}, None),
    ({"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}, None),  # deletes nothing
    ({"cleanup.policy": "delete", "retention.ms": "604800000", "retention.bytes": "-1"},
     "rdv.control has cleanup.policy=delete with retention.ms=604800000: the broker deletes old schedule versions"),
    ({"cleanup.policy": "compact,delete", "retention.ms": "-1", "retention.bytes": "1048576"},
     "cleanup.policy=compact,delete with retention.bytes=1048576"),
    ({"cleanup.policy": "delete", "retention.ms": "0", "retention.bytes": "10"},
     "retention.ms=0 and retention.bytes=10"),
    ({}, None),  # the broker told nothing: no finding
])
def test_a_control_topic_that_deletes_old_versions_is_said(configs: dict[str, str], says: str | None) -> None:
    from services.control.topic import history_loss

    problem = history_loss("rdv.control", configs)
    if says is None:
        assert problem is None
    else:
        assert problem is not None and says in problem and "\n" not in problem  # one line


def _writing_to(written: list[object]) -> type:
    """A stand-in Producer class whose records land in `written` (each produce's arguments)."""

    class Written:
        def __init__(self, _config: object) -> None:
            pass

        def produce(self, *args: object, **_kwargs: object) -> None:
            written.append(args)

        def flush(self, *_args: object) -> int:
            return 0

    return Written


def _deleting(_config: object, _topic: str, timeout: float = 15.0) -> dict[str, str]:
    return {"cleanup.policy": "delete", "retention.ms": "3600000", "retention.bytes": "-1"}


def test_publish_refuses_a_control_topic_that_deletes_old_versions_before_writing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Created with cleanup.policy=delete and retention.ms=1h, the topic lost v1 an hour on: an
    instance restarted then read no schedule, or an older one than those running (a review)."""
    from services.control import topic

    written: list[object] = []
    Written = _writing_to(written)
    schedule = Schedule(models=("a",), version=1)
    monkeypatch.setattr(topic, "topic_configs", _deleting)
    monkeypatch.setattr(topic, "Producer", Written)
    monkeypatch.setattr(topic, "load_book", lambda _c, _t, name, **_checked: ScheduleBook.holding(schedule))
    with pytest.raises(ConfigError, match=r"rdv.control has cleanup.policy=delete with retention.ms=3600000"):
        topic.publish({}, "rdv.control", schedule)
    assert written == []


def test_a_rendezvous_refuses_a_control_topic_that_deletes_old_versions_before_reading_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from contextlib import ExitStack
    from types import SimpleNamespace

    from services.control import topic
    from services.core.settings import Topics
    from services.rendezvous import schedules

    class Unread:
        def __init__(self, *_args: object) -> None:
            raise AssertionError("the control topic was read before its clean-up policy was checked")

    monkeypatch.setattr(topic, "topic_configs", _deleting)
    monkeypatch.setattr(schedules, "ControlFeed", Unread)
    feed = schedules.ScheduleFeed("default", Schedule(models=("a",)), Topics.from_prefix("rdv."),
                                  dead_letter=lambda _msg, _err: None)
    with ExitStack() as stack, pytest.raises(ConfigError, match=r"rdv.control has cleanup.policy=delete"):
        feed.start(SimpleNamespace(config={}, stack=stack))  # type: ignore[arg-type]


def test_a_gateway_refuses_a_control_topic_that_deletes_old_versions_before_reading_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway decides calls by the schedule it reads (which names exist, the default deadline):
    started after the broker deleted old versions it read none (every call a 404 "is the rendezvous
    running?") or an older one than the rendezvous answer by, where the rendezvous refuses to start."""
    from services.control import follower as catalog
    from services.control import topic

    class Unread:
        def __init__(self, *_args: object) -> None:
            raise AssertionError("the control topic was read before its clean-up policy was checked")

    monkeypatch.setattr(topic, "topic_configs", _deleting)
    monkeypatch.setattr(catalog, "ControlFeed", Unread)
    with pytest.raises(ConfigError, match=r"rdv.control has cleanup.policy=delete with retention.ms=3600000"):
        catalog.ScheduleFollower({}, "rdv.control", "default")


class _QuietFeed:
    """A stand-in ControlFeed holding one version of `default`, with nothing new to poll."""

    def __init__(self, *_args: object) -> None:
        self.closed = False

    def read_history(self) -> list[object]:
        from types import SimpleNamespace

        from services.control.topic import ControlRecord

        msg = SimpleNamespace(timestamp=lambda: (2, 1_000))  # LogAppendTime, 1 s after the epoch
        return [ControlRecord(msg, Schedule(models=("a", "b"), version=1), None)]  # type: ignore[arg-type]

    def poll(self) -> list[object]:
        return []

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("configs", [
    {"cleanup.policy": "compact", "retention.ms": "3600000", "retention.bytes": "-1"},
    None,  # a principal without DESCRIBE_CONFIGS on the topic: left to the broker, as for the rendezvous
])
def test_a_gateway_follows_a_control_topic_that_keeps_its_history_or_whose_policy_it_may_not_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, configs: dict[str, str] | None
) -> None:
    from services.control import follower as catalog
    from services.control import topic
    from services.core.kafka import ConfigsNotAuthorized

    def told(*_args: object) -> dict[str, str]:
        if configs is None:
            raise ConfigsNotAuthorized("cannot read the configuration of rdv.control: TOPIC_AUTHORIZATION_FAILED")
        return configs

    monkeypatch.setattr(topic, "topic_configs", told)
    monkeypatch.setattr(catalog, "ControlFeed", _QuietFeed)
    follower = catalog.ScheduleFollower({}, "rdv.control", "default", poll_s=0.01)
    try:
        in_force = follower.in_force()
        assert in_force is not None and in_force.models == ("a", "b")
    finally:
        follower.close()
    assert ("clean-up policy of rdv.control is not checked" in caplog.text) is (configs is None)


def test_publish_by_a_principal_that_may_not_read_the_topics_configuration_is_left_to_the_broker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client principal (READ on control, no DESCRIBE_CONFIGS) running `schedule set` must get the
    broker's refusal of its WRITE, not a refusal of the check's describe_configs."""
    from services.control import topic
    from services.core.kafka import ConfigsNotAuthorized

    def refused(*_args: object) -> dict[str, str]:
        raise ConfigsNotAuthorized("cannot read the configuration of rdv.control: TOPIC_AUTHORIZATION_FAILED")

    written: list[object] = []
    Written = _writing_to(written)
    schedule = Schedule(models=("a",), version=1)
    monkeypatch.setattr(topic, "topic_configs", refused)
    monkeypatch.setattr(topic, "Producer", Written)
    monkeypatch.setattr(topic, "_read_back", lambda _c, _t, s: (s, None))
    monkeypatch.setattr(topic, "partition_counts", one_partition)
    topic.publish({}, "rdv.control", schedule)
    assert len(written) == 1
    assert "clean-up policy of rdv.control is not checked" in caplog.text


def _not_authorized(*_args: object) -> dict[str, str]:
    from services.core.kafka import ConfigsNotAuthorized

    raise ConfigsNotAuthorized("cannot read the configuration of rdv.control: TOPIC_AUTHORIZATION_FAILED")


def _compacted(*_args: object) -> dict[str, str]:
    return {"cleanup.policy": "compact", "retention.ms": "3600000", "retention.bytes": "-1"}


def _shown(command: str, monkeypatch: pytest.MonkeyPatch, output: str = "table") -> tuple[int, str, str]:
    """What `command` (show, history, models) prints on its notes (stderr) and its output (stdout),
    the control topic holding v1 and v2 and the broker stood in (its configuration stood in by each test)."""
    import io

    from rich.console import Console

    from services.cli import lifecycle

    book = ScheduleBook.holding(Schedule(models=("a", "b"), version=1), Schedule(models=("b", "a"), version=2))
    monkeypatch.setattr(lifecycle, "load_books", lambda _config, _topic, _name: (book, {"default"}))
    monkeypatch.setattr(lifecycle, "live_models", lambda *_args: {})
    monkeypatch.setattr(lifecycle, "print_contracts", lambda *_args, **_kwargs: None)
    notes, tables = (Console(record=True, width=1000, file=io.StringIO()) for _ in range(2))
    if command == "show":
        code = lifecycle.cmd_schedule_show(lifecycle.ScheduleViewSettings(format=output), notes, tables)
    elif command == "history":
        code = lifecycle.cmd_schedule_history(lifecycle.ScheduleViewSettings(format=output), notes, tables)
    else:
        code = lifecycle.cmd_models(lifecycle.ModelsSettings(format=output), tables, notes)
    return code, notes.export_text(), tables.export_text()


@pytest.mark.parametrize("command", ["show", "history", "models"])
def test_a_command_that_shows_the_control_topic_warns_in_one_line_when_it_deletes_old_versions(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`schedule show`, `history` and `models` read the control topic and said nothing of a delete
    policy that publish and the rendezvous refuse: a history missing its old versions (or all of
    them) was shown as the whole. They show what is there, and say it in one line on stderr."""
    from services.control import topic

    monkeypatch.setattr(topic, "topic_configs", _deleting)
    code, notes, shown = _shown(command, monkeypatch)
    assert code == 0
    lines = [line for line in notes.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: rdv.control has cleanup.policy=delete with "
                                                    "retention.ms=3600000: the broker deletes old schedule versions")
    assert command == "models" or "v2" in shown or "b, a" in shown  # what is there is shown all the same
    capsys.readouterr()
    _code, notes, _shown_json = _shown(command, monkeypatch, output="json")
    json.loads(capsys.readouterr().out)  # stdout stays the JSON alone: the warning is on stderr
    assert notes.startswith("warning: rdv.control has cleanup.policy=delete")


@pytest.mark.parametrize("configs", [_compacted, _not_authorized])
@pytest.mark.parametrize("command", ["show", "history", "models"])
def test_a_command_that_shows_the_control_topic_says_nothing_of_one_that_keeps_its_versions_or_may_not_be_described(
    command: str, configs: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The client role may read the control topic but not describe it: `schedule show` by it is not
    refused, nor told every time that a check it cannot run was not run."""
    import logging

    from services.control import topic

    monkeypatch.setattr(topic, "topic_configs", configs)
    with caplog.at_level(logging.INFO):
        code, notes, _shown_text = _shown(command, monkeypatch)
    assert code == 0 and notes.strip() == ""
    assert "not checked" not in caplog.text


def test_undeploy_warns_when_the_control_topic_it_checks_deletes_old_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check that the model is not the one the schedule answers with reads the control topic: one
    that lost its versions (all of them, after a quiet week) let the champion be stopped unsaid."""
    from rich.console import Console

    from services.cli import deploy
    from services.control import topic

    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path))
    state = tmp_path / "deployments" / "challenger" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"name": "challenger", "model": "demo:challenger", "replicas": {}}))
    monkeypatch.setattr(topic, "load_books", lambda _c, _t, _name, **_checked: (ScheduleBook("default"), set()))
    monkeypatch.setattr(topic, "topic_configs", _deleting)
    console = Console(record=True, width=1000)
    deploy._check_not_preferred("challenger", deploy.UndeploySettings(bootstrap="127.0.0.1:1"), console)
    assert "warning: rdv.control has cleanup.policy=delete" in console.export_text()


def test_models_shows_the_roles_of_the_version_in_force_not_of_one_set_for_later() -> None:
    """A version set for tomorrow relabelled the models today: the champion in force shown as a
    fallback (a review)."""
    from services.cli.lifecycle import roles_now

    now = 1_700_000_000_000
    book = ScheduleBook("default")
    book.add(Schedule(models=("champion", "challenger", "canary"), version=1, traffic_model="canary",
                      traffic_fraction=0.1), written_at=now - 60_000)
    book.add(Schedule(models=("challenger", "champion"), version=2, effective_at=now + 86_400_000), written_at=now)
    role = roles_now(book, now)
    assert [role(m) for m in ("champion", "challenger", "canary", "decoy")] == [
        "champion", "fallback", "traffic", "challenger"]
    assert roles_now(book, now + 86_400_001)("challenger") == "champion"


def test_schedule_history_shows_a_comment_s_terminal_sequences_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone who may write the control topic writes the comment: ESC sequences in it set the
    operator's terminal title and cleared the screen (a review of the compare table found the kind)."""
    import io

    from rich.console import Console

    from services.cli import lifecycle

    book = ScheduleBook("default")
    book.add(Schedule(models=("champion",), version=1, comment="ok\x1b]0;PWNED\x07\x1b[2J"), written_at=1)
    monkeypatch.setattr(lifecycle, "_shown_book", lambda _settings, _console: book)
    out = io.StringIO()
    lifecycle.cmd_schedule_history(lifecycle.ScheduleViewSettings(), Console(), Console(file=out, width=200))
    assert "\x1b]0" not in out.getvalue() and "ok\\x1b]0;PWNED\\x07\\x1b[2J" in out.getvalue()


def _cancelled_promotion() -> ScheduleBook:
    """v1 in force; v2, a promotion for tomorrow; v3, an urgent change that supersedes it."""
    day = 86_400_000
    book = ScheduleBook("default")
    book.add(Schedule(models=("a", "b"), version=1), written_at=0)
    book.add(Schedule(models=("b", "a"), version=2, effective_at=day), written_at=5_000)
    book.add(Schedule(models=("c", "a"), version=3, effective_at=11_000, supersedes_pending=True), written_at=10_000)
    return book


def test_a_rollback_restores_what_governed_before_never_a_version_that_never_did() -> None:
    """Rolling back the urgent change that cancelled a promotion for tomorrow published that
    promotion, ungated, to take effect in 2 s (a review): v2 never governs, v1 did."""
    from services.control import changes

    book = _cancelled_promotion()
    assert book.displaced_by(2) == 3 and book.displaced_by(1) is None and book.displaced_by(3) is None
    assert changes.rollback(book).models == ("a", "b") and changes.rollback(book).comment == "rollback to v1"
    assert changes.rollback(book, to=2).models == ("b", "a")  # asked for by number: as asked
    # A version held back to a pending one's start governs in its place: the pending one never does.
    held = ScheduleBook("default")
    held.add(Schedule(models=("a",), version=1), written_at=0)
    held.add(Schedule(models=("b", "a"), version=2, effective_at=50_000), written_at=1_000)
    held.add(Schedule(models=("c", "a"), version=3, effective_at=50_000), written_at=2_000)
    assert held.displaced_by(2) == 3 and [held.for_request(t).version for t in (49_999, 50_000)] == [1, 3]
    assert changes.rollback(held).models == ("a",)
    # The first version published for later governs until the next one starts all the same (the
    # oldest version governs older requests): superseding it cancels nothing of it (a review).
    first_for_later = ScheduleBook("default")
    first_for_later.add(Schedule(models=("a",), version=1, effective_at=50_000), written_at=1_000)
    first_for_later.add(Schedule(models=("b",), version=2, effective_at=10_000, supersedes_pending=True),
                        written_at=2_000)
    assert first_for_later.displaced_by(1) is None and first_for_later.superseded_by(1) is None
    assert [first_for_later.for_request(t).version for t in (5_000, 10_000)] == [1, 2]
    assert [s.version for s, _start in first_for_later.in_force_and_after(3_000)] == [1, 2]  # undeploy keeps a
    assert changes.rollback(first_for_later).models == ("a",)
    pending_only = ScheduleBook("default")  # v2 for later, superseded before it started
    pending_only.add(Schedule(models=("a",), version=1), written_at=0)
    pending_only.add(Schedule(models=("b",), version=2, effective_at=50_000), written_at=1_000)
    pending_only.add(Schedule(models=("c",), version=3, effective_at=10_000, supersedes_pending=True),
                     written_at=2_000)
    assert pending_only.displaced_by(2) == 3
    assert changes.rollback(pending_only).models == ("a",)


def test_schedule_history_says_which_versions_never_govern_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version a later one starts with was listed as taking effect then, as if it would (a review)."""
    import io

    from rich.console import Console

    from services.cli import lifecycle

    book = _cancelled_promotion()
    book.add(Schedule(models=("d", "a"), version=4, effective_at=2 * 86_400_000), written_at=12_000)
    book.add(Schedule(models=("e", "a"), version=5, effective_at=2 * 86_400_000), written_at=13_000)
    monkeypatch.setattr(lifecycle, "_shown_book", lambda _settings, _console: book)
    out = io.StringIO()
    lifecycle.cmd_schedule_history(lifecycle.ScheduleViewSettings(), Console(), Console(file=out, width=250))
    rows = {line.split("│")[1].strip(): line for line in out.getvalue().splitlines() if line.count("│") > 3
            and line.split("│")[1].strip().isdigit()}
    assert "never (superseded by v3" in rows["2"] and "never (v5 starts at the same time" in rows["4"]
    assert "never" not in rows["1"] + rows["3"] + rows["5"]


def test_the_json_of_show_and_history_says_what_governs_and_what_never_takes_effect(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`show --format json` printed a pending version as it printed the one in force, and
    `history --format json` the versions that never take effect as the others: only the notes on
    stderr and the table said so (a review)."""
    from rich.console import Console

    from services.cli import lifecycle

    book = _cancelled_promotion()
    book.add(Schedule(models=("d", "a"), version=4, effective_at=2 * 86_400_000), written_at=12_000)
    monkeypatch.setattr(lifecycle, "_shown_book", lambda _settings, _console: book)
    monkeypatch.setattr(lifecycle, "now_ms", lambda: 20_000)
    json_view = lifecycle.ScheduleViewSettings(format="json")
    lifecycle.cmd_schedule_show(json_view, Console(stderr=True), Console())
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["governs_now"], shown["version_governing_now"]) == (4, False, 3)
    lifecycle.cmd_schedule_history(json_view, Console(stderr=True), Console())
    history = {v["version"]: v["never_takes_effect"] for v in json.loads(capsys.readouterr().out)}
    assert history == {1: None, 2: "superseded by v3", 3: None, 4: None}


def test_the_first_version_held_alongside_the_next_still_governs_what_came_before_its_start() -> None:
    """v1 published for later, v2 held back to v1's start: every request before that start is v1's
    (the oldest one governs older requests), so v1 did govern and a rollback may restore it (a review)."""
    from services.control import changes

    book = ScheduleBook("default")
    book.add(Schedule(models=("a",), version=1, effective_at=50_000), written_at=1_000)
    book.add(Schedule(models=("b", "a"), version=2, effective_at=50_000), written_at=2_000)
    assert book.in_force(3_000).version == 1 and book.displaced_by(1) is None
    assert changes.rollback(book).models == ("a",)


def test_a_change_that_supersedes_a_pending_version_is_judged_against_the_one_in_force(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Judged against the pending latest: `rollback --to 1 --supersede-pending` was refused as
    'the one in force already' while another governed, `promote B --supersede-pending` as 'already
    the champion' while A was, and a promotion of C took the cancelled version's B for the old
    champion: its gate measured C against B and made B the first fallback (a review)."""
    import io

    from rich.console import Console

    from services.cli import lifecycle
    from services.control import changes

    now = 1_700_000_000_000
    day = 86_000_000

    def book_of(*policies: tuple[tuple[str, ...], int]) -> ScheduleBook:
        book, at = ScheduleBook("default"), now - 600_000
        for models, effective_in in policies:
            version = changes.next_version(book, Schedule(models=models), at, effective_in)
            book.add(version, at)
            at += 60_000
        return book

    published: list[Schedule] = []
    monkeypatch.setattr(lifecycle, "publish", lambda _config, _topic, schedule: published.append(schedule) or schedule)
    monkeypatch.setattr(lifecycle, "now_ms", lambda: now)
    monkeypatch.setattr(lifecycle, "_check_live", lambda _settings, _draft: [])
    quiet = Console(file=io.StringIO())
    urgent = {"force": True, "supersede_pending": True}
    # v2 (B) in force, v3 (A) pending for tomorrow: A now.
    book = book_of((("a", "b"), 2_000), (("b", "a"), 2_000), (("a", "b"), day))
    monkeypatch.setattr(lifecycle, "_book", lambda _settings, new=False: book)
    lifecycle.cmd_rollback(lifecycle.RollbackSettings(to=1, **urgent), quiet)
    assert published[-1].models == ("a", "b") and published[-1].supersedes_pending
    # v1 (A) in force, v2 (B) pending: B now; then C now, gated against A.
    book = book_of((("a", "b"), 2_000), (("b", "a"), day))
    lifecycle.cmd_promote(lifecycle.PromoteSettings(**urgent), "b", quiet, None)  # type: ignore[arg-type]
    assert published[-1].models == ("b", "a")
    gated: list[str] = []

    def figures(_settings: object, _window: str, _candidate: str, champion: str, _progress: object) -> dict[str, float]:
        gated.append(champion)
        return {"n": 500.0, "error_rate": 0.0, "coverage": 1.0, "versions": 1.0}

    lifecycle.cmd_promote(lifecycle.PromoteSettings(require="n>=1", **urgent), "c", quiet, figures)
    assert gated == ["a"] and published[-1].models == ("c", "a", "b")
    # Cancelling a pending change is a change: a rollback to the policy in force supersedes it (it was
    # refused as 'nothing to roll back', a later review), and promoting the champion in force says how.
    book = book_of((("a", "b"), 2_000), (("b", "a"), day))
    lifecycle.cmd_rollback(lifecycle.RollbackSettings(**urgent), quiet)
    assert published[-1].models == ("a", "b") and [v.version for v in book.supersedes(published[-1], now)] == [2]
    with pytest.raises(ConfigError, match=r"^a is the champion in force already \(v1\); to cancel the pending v2"):
        lifecycle.cmd_promote(lifecycle.PromoteSettings(**urgent), "a", quiet, None)  # type: ignore[arg-type]
    # Two pending: the default is the policy in force, not the first pending one made live ungated.
    book = book_of((("a", "b"), 2_000), (("b", "a"), day), (("c", "a", "b"), 2 * day))
    lifecycle.cmd_rollback(lifecycle.RollbackSettings(**urgent), quiet)
    assert published[-1].models == ("a", "b") and [v.version for v in book.supersedes(published[-1], now)] == [2, 3]
    book = book_of((("a", "b"), 2_000), (("b", "a"), 2_000), (("a", "b"), 2_000))  # nothing pending, as before:
    with pytest.raises(ConfigError, match=r"v1's policy is the one in force already \(v3\): nothing to roll back"):
        lifecycle.cmd_rollback(lifecycle.RollbackSettings(to=1, **urgent), quiet)


def test_a_reader_on_another_thread_never_sees_a_version_half_added() -> None:
    """`latest` set before the version governed: a gateway call asking `in_force` as its follower
    added the first version raised IndexError (a review). Each step of `add` is looked at here."""
    book = ScheduleBook("default")
    seen: list[int | None] = []

    class Watched(list):  # type: ignore[type-arg]
        def append(self, item: object) -> None:
            super().append(item)
            seen.append(book.in_force(5_000).version if book.latest is not None else None)

        def __delitem__(self, index: object) -> None:
            super().__delitem__(index)  # type: ignore[arg-type]
            seen.append(book.in_force(5_000).version if book.latest is not None else None)

    book._versions, book._governing, book._starts = Watched(), Watched(), Watched()  # type: ignore[assignment]
    book.add(Schedule(models=("a",), version=1), written_at=0)
    book.add(Schedule(models=("b",), version=2, effective_at=50_000), written_at=1_000)
    book.add(Schedule(models=("c",), version=3, effective_at=2_000, supersedes_pending=True), written_at=2_000)
    assert seen[:3] == [None, None, 1] and seen[-1] == 3


def test_a_rendezvous_says_when_its_schedule_flags_are_not_used_or_its_deadline_is_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Restarted with other --models and --deadline-ms against a control topic holding v13, it
    followed v13 saying so at INFO only; and a default deadline over --max-budget-ms timed out
    every request without a word at start (a newcomer's review)."""
    import logging

    from services.control.topic import ScheduleBook
    from services.core.settings import Topics
    from services.rendezvous import schedules

    in_force = Schedule(models=("champion", "challenger"), default_deadline_ms=200, version=13)

    def feed(bootstrap: Schedule, seeded_by: tuple[str, ...]) -> schedules.ScheduleFeed:
        made = schedules.ScheduleFeed("default", bootstrap, Topics.from_prefix("rdv."), lambda _m, _e: None,
                                      seeded_by=seeded_by, max_budget_ms=100)
        made.book = ScheduleBook.holding(in_force)
        return made

    with caplog.at_level(logging.WARNING):
        feed(Schedule(models=("champion",), default_deadline_ms=50), ("models", "deadline_ms"))._say_seed_unused(
            in_force)
        feed(Schedule(models=("champion", "challenger")), ())._say_seed_unused(in_force)  # no flag given
        feed(in_force, ("models",))._say_seed_unused(in_force)  # the same: nothing unused
        split = dataclasses.replace(in_force, traffic_model="challenger", traffic_fraction=0.5)
        feed(split, ("schedule_file",))._say_seed_unused(in_force)  # a traffic split not in force (a review)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and said[1].startswith("--schedule-file (or")
    assert said[0].startswith("--models, --deadline-ms (or their RDV_ variables) seed(s) the control topic only")
    assert "v13 is in force (['champion', 'challenger'], default deadline 200 ms)" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        feed(in_force, ()).show(now=0)
    assert "default deadline (200 ms) is longer than --max-budget-ms (100 ms)" in caplog.text


def test_rollback_to_0_is_refused_not_taken_for_the_default() -> None:
    """`rollback --to 0` published a plain rollback, where `--to 99` is refused (a newcomer's review)."""
    from rich.console import Console

    from services.cli.lifecycle import RollbackSettings, cmd_rollback
    from services.core.settings import from_namespace

    with pytest.raises(ConfigError, match=r"^--to 0: versions are numbered from 1"):
        cmd_rollback(from_namespace(RollbackSettings, None, to="0"), Console())


def test_schedule_set_says_a_files_version_is_not_the_one_published(tmp_path: Path) -> None:
    """A file's "version": 3 was published as v14 without a word (a newcomer's review)."""
    from types import SimpleNamespace

    from services.cli.lifecycle import _draft_from_flags, _version_not_used

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"models": ["champion"], "version": 3}))
    given = SimpleNamespace(file=str(path), schedule_name="default", comment="")
    draft = _draft_from_flags(given, None)  # type: ignore[arg-type]
    latest = Schedule(models=("champion",), version=13)
    assert _version_not_used(given, draft, latest) == [  # type: ignore[arg-type]
        "the file's version (3) is not used: a version is numbered next in turn on the control topic (v14)"]
    assert _version_not_used(given, dataclasses.replace(draft, version=14), latest) == []  # type: ignore[arg-type]


def test_a_principal_that_may_not_read_the_scores_is_told_the_live_check_is_the_admin_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`schedule set` as the client role said only "not authorized to describe topic(s) rdv.scores",
    which invites granting the client the scores (a review)."""
    from services.cli import lifecycle
    from services.core.errors import TopicRefused

    def refused(_config: object, _topic: str, _window: float) -> None:
        raise TopicRefused("not authorized to describe topic(s) rdv.scores at b:9")

    monkeypatch.setattr(lifecycle, "live_models", refused)
    with pytest.raises(TopicRefused, match=r"rdv\.scores at b:9\. The live check reads the scores, as only the "
                                           r"admin's role may .*or pass --force"):
        lifecycle._check_live(lifecycle.ChangeSettings(), Schedule(models=("a",)))


def test_every_reader_of_the_control_topic_refuses_more_than_one_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked where every reader reads it (ControlFeed: the rendezvous, the gateway's follower,
    every command's load_book), on the count its tail assigned; the tail is let go."""
    from services.control import topic

    closed: list[bool] = []

    class Tail:
        partition_count = 2

        def __init__(self, *_args: object) -> None:
            pass

        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(topic, "TopicTail", Tail)
    with pytest.raises(ConfigError, match=r"rdv\.control has 2 partitions: the control topic must have one"):
        topic.ControlFeed({}, "rdv.control")
    with pytest.raises(ConfigError, match=r"rdv\.control has 2 partitions"):
        topic.load_books({}, "rdv.control", "default")
    assert closed == [True, True]
