"""What replay takes for a request: what every worker takes (core/requests.py). A request with
created_at <= 0 once became the start of the log range replay reads its answers from."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.replay import Recorded, _scored_requests
from services.client.client import make_request
from services.core.codec import codec
from services.core.runtime import now_ms
from services.model_worker.models import load_model


def recorded(*values: bytes | None, at: int | None = None, partition: int = 0) -> list[Recorded]:
    """Records of the requests topic, appended at `at` (now by default)."""
    when = now_ms() if at is None else at
    return [Recorded(value, when, partition) for value in values]


def no_log(asked: list[tuple[int, int]] | None = None) -> object:
    """A `_log_records` with nothing logged, noting the range it was asked for."""
    def read(_settings: object, start_ms: int, end_ms: int, _progress: object = None) -> Iterator[dict[str, object]]:
        if asked is not None:
            asked.append((start_ms, end_ms))
        yield from ()

    return read


def test_records_that_are_no_requests_are_counted_as_undecodable_not_replayed() -> None:
    requests = codec("request")
    good = make_request({"a": 1.0}, budget_ms=100, reply_topic=None, reply_partition=None)
    values = recorded(requests.encode(good), requests.encode({**good, "created_at": 0}), b"garbage", None)
    scored = _scored_requests(load_model("demo:canary"), values, batch=10)
    assert list(scored.replayed) == [good["request_id"]] and scored.undecodable == 3


def test_a_replay_with_ignore_extra_features_scores_requests_carrying_other_models_features() -> None:
    """The live worker of a challenger served with --ignore-extra-features scores them; replay had
    no such flag, and every such request failed in its report (a review)."""
    from services.cli.replay import ReplaySettings, replayed_contract
    from services.model_worker.models import demo_rows

    requests, model = codec("request"), load_model("demo:canary")
    row = {**demo_rows(1, seed=3)[0], "another_models_feature": 1.0}
    good = make_request(row, budget_ms=100, reply_topic=None, reply_partition=None)
    for ignore, scored_ok in ((False, False), (True, True)):
        settings = ReplaySettings(model="demo:canary", ignore_extra_features=ignore)
        scored = _scored_requests(model, recorded(requests.encode(good)), batch=10,
                                  signature=replayed_contract(model, settings))
        output = scored.replayed[good["request_id"]].output
        assert (output[0] is not None) == scored_ok, output
        assert scored_ok or "another_models_feature" in str(output[2])


def test_a_request_whose_schema_registry_fails_for_now_is_waited_for_not_counted_undecodable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One failed registry call marked it away for 5 s, and every registry-framed request read
    meanwhile was counted undecodable and left out of the replay (all of them, for a short range:
    "none ... is a request this command can read"; a review)."""
    from services.core.errors import DecodeFailed

    requests = codec("request")
    failures = [DecodeFailed("schema registry unreachable", retriable=True)]

    def flaky(_schema_id: int) -> dict[str, object]:
        if failures:
            raise failures.pop()
        return requests.schema

    monkeypatch.setattr(requests, "_lookup", flaky)
    monkeypatch.setattr(requests, "_by_id", {})
    good = make_request({"a": 1.0}, budget_ms=100, reply_topic=None, reply_partition=None)
    framed = b"\x00\x00\x00\x00\x2a" + requests.encode(good)[10:]
    scored = _scored_requests(load_model("demo:canary"), recorded(framed), batch=10)
    assert list(scored.replayed) == [good["request_id"]] and scored.undecodable == 0 and not failures


def test_a_registry_that_stays_away_stops_the_command_in_one_line() -> None:
    from services.core.errors import BrokerError, DecodeFailed
    from services.core.id_lookup import CommandWaits, decoded_when_readable

    def away(_value: bytes | None) -> None:
        raise DecodeFailed("schema registry unreachable", retriable=True)

    waits = CommandWaits(total_s=1.0)
    with pytest.raises(BrokerError, match=r"the schema registry could not be read for 1 s: schema registry unreach"):
        decoded_when_readable(away, b"", waits)
    waits.waited_s = waits.total_s  # forged ids spent the waits over the lookups of the second:
    waits.away_since = None
    calls = [0]

    def away_once(_value: bytes | None) -> str:
        calls[0] += 1
        if calls[0] == 1:
            raise DecodeFailed("schema registry unreachable", retriable=True)
        return "read"

    assert decoded_when_readable(away_once, b"", waits) == "read"  # one failed call is still waited out


def test_a_commands_waits_for_the_registry_are_bounded_over_all_its_records_not_per_record() -> None:
    """Each record's wait counted alone: a range of records with made-up ids, each over the lookups
    of the second, paced the command to 20 records a second, for hours (a review)."""
    from services.core.errors import LookupsSpent
    from services.core.id_lookup import CommandWaits, decoded_when_readable

    waits, tries = CommandWaits(total_s=1.0), [0]

    def spent_once(_value: bytes | None) -> str:
        tries[0] += 1
        if tries[0] % 2:  # every other try: over the lookups of the second
            raise LookupsSpent("more than 20 unseen schema ids in one second; not looked up")
        return "read"

    assert [decoded_when_readable(spent_once, b"", waits) for _ in range(2)] == ["read", "read"]  # waited for
    waits.waited_s = waits.total_s  # the command's waits spent
    with pytest.raises(LookupsSpent):  # counted unreadable, as before, not waited for again
        decoded_when_readable(spent_once, b"", waits)


def test_a_replay_counts_each_request_once_reads_the_log_from_before_it_and_says_what_the_log_lacks(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request id sent twice was replayed and counted twice; the log was read from the earliest
    created_at (the client's clock, up to a minute ahead of the rendezvous' that stamps the log),
    missing the first records; requests with no record were a confident row of TIMEOUTs."""
    from services.cli import replay as replay_module
    from services.cli.replay import LOG_MARGIN_MS, LOG_TAIL_MS, ReplaySettings

    requests = codec("request")
    first = make_request({"mean_radius": 14.0}, budget_ms=100, reply_topic=None, reply_partition=None)
    other = make_request({"mean_radius": 12.0}, budget_ms=100, reply_topic=None, reply_partition=None)
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(replay_module, "_log_records", no_log(asked))
    monkeypatch.setattr(replay_module, "check_log_readable", lambda _settings: None)
    values = [*recorded(requests.encode(first), requests.encode(first), at=5_000_000),
              *recorded(requests.encode(other), at=5_000_100)]
    result = replay_module.replay(ReplaySettings(model="demo:champion"), values)
    assert result.requests == 2 and result.report.records == 2
    assert asked == [(5_000_000 - LOG_MARGIN_MS, 5_000_100 + LOG_TAIL_MS)]
    assert any("2 of these requests have no comparison record" in note for note in result.report.notes)
    # Their answers are unknown: not counted as TIMEOUT in the answers line (it read 0% by the deadline).
    assert sum(result.report.statuses.values()) == 0 and math.isnan(result.report.answered_by_deadline)
    assert any("not comparable with the live models' end-to-end latency" in note for note in result.report.notes)


def test_a_replay_meets_the_broker_before_it_loads_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive replay met the broker first after scoring every request, and a wrong --bootstrap
    threw that work away."""
    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings
    from services.core.errors import BrokerError
    from services.localkafka.config import free_port

    loaded: list[str] = []
    monkeypatch.setattr(replay_module, "load_model", lambda spec, **_: loaded.append(spec))
    settings = ReplaySettings(model="demo:champion", bootstrap=f"127.0.0.1:{free_port()}", connect_timeout_s=0.5)
    with pytest.raises(BrokerError):
        replay_module.replay(settings, [])
    assert loaded == []


def test_a_range_of_records_none_of_which_is_a_request_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings
    from services.core.errors import ConfigError

    monkeypatch.setattr(replay_module, "check_log_readable", lambda _settings: None)
    with pytest.raises(ConfigError, match="none of the 3 records in that range is a request"):
        replay_module.replay(ReplaySettings(model="demo:champion"), recorded(b"x", b"y", None))
    with pytest.raises(ConfigError, match="no requests in that range"):
        replay_module.replay(ReplaySettings(model="demo:champion"), [])


def test_a_replayed_model_named_as_a_logged_one_is_refused_not_put_in_its_place() -> None:
    """`--name champion` dropped the live champion's logged outputs for the replayed ones: every
    challenger was then compared with the replayed model, silently (a review by experiment)."""
    import pytest

    from services.cli.replay import Replayed, _comparison
    from services.core.errors import ConfigError

    logged = {"request_id": "r1", "created_at": 1, "deadline": 201, "outputs": [
        {"model": "champion", "version": "v1", "score": 0.9, "label": "yes", "error": None, "latency_ms": 5.0,
         "compute_ms": 1.0, "late": False}]}
    replayed = Replayed(1, 201, (0.2, "no", None, 3.0, 1.0))
    with pytest.raises(ConfigError, match="--name champion: the log already holds outputs of a model of that name"):
        _comparison("r1", logged, replayed, "champion", "v9")
    added = _comparison("r1", logged, replayed, "champion-replay", "v9")
    assert [(o["model"], o["score"]) for o in added["outputs"]] == [("champion", 0.9), ("champion-replay", 0.2)]


@pytest.mark.parametrize(("changes", "said"), [
    ({"since": "1x"}, "expected a duration"),
    ({"source": "archive", "archive_dir": "/tmp", "from_": "offset:5"}, "time bounds only"),
])
def test_a_replays_range_is_checked_with_its_settings_before_any_model_loads(
    changes: dict[str, str], said: str
) -> None:
    """They were checked when the range was first read, after the model had loaded (3 s for one)."""
    from services.cli.replay import ReplaySettings
    from services.core.errors import ConfigError

    with pytest.raises(ConfigError, match=said):
        ReplaySettings(bootstrap="localhost:9092", model="demo:champion", **changes).validate()


def test_a_champion_named_for_a_replay_without_log_records_is_checked_not_dropped(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings

    monkeypatch.setattr(replay_module, "_log_records", no_log())
    monkeypatch.setattr(replay_module, "check_log_readable", lambda _settings: None)
    monkeypatch.setattr(replay_module, "_live_models", lambda _settings: frozenset())
    values = recorded(codec("request").encode(make_request({"mean_radius": 14.0}, budget_ms=100, reply_topic=None,
                                                           reply_partition=None)))
    named = replay_module.replay(ReplaySettings(model="demo:champion", champion="champion-replay"), values)
    assert named.report.champion == "champion-replay"
    # The live champion, past the log's retention: the report, with why it has no champion (it was
    # dropped silently; then raised after all the scoring, blaming the name).
    live = replay_module.replay(ReplaySettings(model="demo:champion", champion="champion"), values)
    assert live.report.champion is None
    assert any("--champion champion: none of the replayed requests has a record" in n for n in live.report.notes)


def test_a_replay_whose_model_fails_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every row an error, counted in its row, and no reason in the table or the JSON (a review:
    a model file whose feature names had spaces)."""
    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings

    monkeypatch.setattr(replay_module, "_log_records", no_log())
    monkeypatch.setattr(replay_module, "check_log_readable", lambda _settings: None)
    monkeypatch.setattr(replay_module, "_live_models", lambda _settings: frozenset())
    requests = codec("request")
    values = recorded(*(requests.encode(make_request({"mean_radius": 14.0 + i}, budget_ms=100, reply_topic=None,
                                                     reply_partition=None)) for i in range(3)))
    result = replay_module.replay(ReplaySettings(model="demo:champion"), values)
    [note] = [n for n in result.report.notes if " failed " in n]
    assert note.startswith("champion-replay failed 3 of 3 requests: 3 with 'missing: "), note


def test_a_request_stamped_long_before_the_range_does_not_have_the_whole_log_read(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """created_at is the client's: one stamped 1 had the log read and decoded from its beginning (a
    review); an offset range was read so even after that fix (another). The log is read from the
    requests' append times, the broker's, less the margin."""
    from services.cli import replay as replay_module
    from services.cli.replay import LOG_MARGIN_MS, LOG_TAIL_MS, ReplaySettings

    requests = codec("request")
    real = make_request({"mean_radius": 14.0}, budget_ms=100, reply_topic=None, reply_partition=None)
    forged = {**make_request({"mean_radius": 12.0}, budget_ms=100, reply_topic=None, reply_partition=None),
              "created_at": 1, "deadline": 101}
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(replay_module, "_log_records", no_log(asked))
    monkeypatch.setattr(replay_module, "check_log_readable", lambda _settings: None)
    appended = now_ms()
    replay_module.replay(ReplaySettings(model="demo:champion", from_="offset:100"),
                         recorded(requests.encode(forged), requests.encode(real), at=appended))
    assert asked == [(appended - LOG_MARGIN_MS, appended + LOG_TAIL_MS)]


def test_the_log_is_read_no_further_once_every_replayed_request_found_its_record() -> None:
    """The log was read and decoded to its end after the range (a week of it: about half an hour; a review)."""
    from services.cli.replay import Replayed, _paired

    def log() -> Iterator[dict[str, object]]:
        for i in range(10):
            yield {"request_id": f"r{i}", "outputs": []}
        raise AssertionError("read past the last record needed")

    replayed = {f"r{i}": Replayed(1, 201, (0.5, None, None, 1.0, 1.0)) for i in (2, 5)}
    paired = list(_paired(log(), replayed, "m", "v1"))
    assert [p["request_id"] for p in paired] == ["r2", "r5"] and replayed == {}


def test_a_request_without_a_deadline_and_without_a_record_gets_the_schedule_budget(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """deadline=0 means the schedule's default budget; kept as sent, every such request past the
    log's retention (an archive replay's usual case) counted as a miss for the replayed model."""
    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings
    from services.control.schedule import Schedule
    from services.control.topic import ScheduleBook

    requests = codec("request")
    from services.model_worker.models import demo_rows

    request = {**make_request(demo_rows(1, seed=3)[0], budget_ms=100, reply_topic=None, reply_partition=None),
               "deadline": 0}
    monkeypatch.setattr(replay_module, "_log_records", no_log())
    monkeypatch.setattr(replay_module, "check_log_readable", lambda _settings: None)
    monkeypatch.setattr(replay_module, "load_book", lambda *_args: ScheduleBook.holding(
        Schedule(models=("champion",), default_deadline_ms=150)))
    result = replay_module.replay(ReplaySettings(model="demo:champion"), recorded(requests.encode(request)))
    (model,) = result.report.models
    assert model.deadline_met == 1.0  # a model's compute time, well within 150 ms
    monkeypatch.setattr(replay_module, "load_book", lambda *_args: ScheduleBook("default"))
    unknown = replay_module.replay(ReplaySettings(model="demo:champion"), recorded(requests.encode(request)))
    assert any("no schedule 'default' could be read" in note for note in unknown.report.notes)


def test_a_request_created_at_the_end_of_time_without_a_deadline_is_replayed_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """created_at 2^63 - 1 passes the request's checks; its schedule budget added, the deadline
    overflowed an Avro long and the replay ended in a traceback after all its scoring (a review)."""
    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings
    from services.model_worker.models import demo_rows

    request = {**make_request(demo_rows(1, seed=3)[0], budget_ms=100, reply_topic=None, reply_partition=None),
               "created_at": 2**63 - 1, "deadline": 0}
    monkeypatch.setattr(replay_module, "_log_records", no_log())
    monkeypatch.setattr(replay_module, "check_log_readable", lambda _settings: None)
    monkeypatch.setattr(replay_module, "load_book", lambda *_args: None)
    result = replay_module.replay(ReplaySettings(model="demo:champion"), recorded(codec("request").encode(request)))
    assert result.requests == 1 and any("1 records left out" in note for note in result.report.notes)


def test_a_champion_not_in_the_range_is_a_note_after_the_scoring_not_an_error_that_drops_it(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped --champion was refused once every request was scored: hours of a real model's work."""
    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings

    request = make_request({"mean_radius": 14.0}, budget_ms=100, reply_topic=None, reply_partition=None)
    logged = {"request_id": request["request_id"], "created_at": request["created_at"],
              "deadline": request["deadline"], "answered_at": request["created_at"] + 5, "status": "OK",
              "chosen_model": "champion", "reason": "", "schedule": "default", "schedule_version": 1,
              "outputs": [{"model": "champion", "version": "v1", "score": 0.9, "label": "x", "error": None,
                           "latency_ms": 5.0, "compute_ms": 1.0, "late": False}]}
    monkeypatch.setattr(replay_module, "_log_records", lambda *_args: (record for record in [logged]))
    monkeypatch.setattr(replay_module, "check_log_readable", lambda _settings: None)
    monkeypatch.setattr(replay_module, "_live_models", lambda _settings: frozenset())
    result = replay_module.replay(ReplaySettings(model="demo:challenger", champion="champoin"),
                                  recorded(codec("request").encode(request)))
    assert result.report.champion == "champion"
    assert any("--champion champoin: no such model in the range" in note for note in result.report.notes)


def test_progress_without_a_terminal_is_a_plain_line_now_and_then() -> None:
    """A replay in a job or with 2>file said nothing for hours: rich draws its status line on a terminal only."""
    import io

    from rich.console import Console

    from services.cli.shown import PROGRESS_EVERY_S, now_and_then

    out, now = io.StringIO(), [0.0]
    say = now_and_then(Console(file=out, width=200), "replaying", clock=lambda: now[0])
    for step in range(25):
        now[0] = step * 1.0
        say(f"{step} requests scored")
    assert out.getvalue().splitlines() == [f"replaying: {n} requests scored"
                                           for n in range(int(PROGRESS_EVERY_S), 25, int(PROGRESS_EVERY_S))]


def test_an_archive_replay_reads_this_deployments_topic_only_and_says_what_it_left_out(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decoy on another prefix's topic may archive into the same directory: its requests were
    replayed as this deployment's and counted as having no comparison record (a review)."""
    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings, Scored, Skipped, _requests_from_archive, _skipped_notes
    from services.core.ranges import parse_bounds
    from services.decoy import archive

    def archived(_directory: object, **_bounds: object) -> Iterator[dict[str, object]]:
        for i, topic in enumerate(["rdv.requests", "demo.requests", "rdv.requests", "demo.requests"]):
            yield {"topic": topic, "partition": i % 2, "offset": i, "timestamp": 1_000 + i, "value": b"v%d" % i}

    monkeypatch.setattr(archive, "iter_archive", archived)
    monkeypatch.setattr(replay_module, "partition_counts", lambda *_args: {"rdv.requests": 4})
    settings = ReplaySettings(model="demo:champion", source="archive", archive_dir="/nowhere")
    skipped = Skipped()
    read = list(_requests_from_archive(settings, parse_bounds("", "", "", 0), skipped))
    assert [(r.value, r.log_time, r.partition) for r in read] == [(b"v0", 1_000, 0), (b"v2", 1_002, 0)]
    scored = Scored()
    for record in read:
        scored.took(record)
    notes = _skipped_notes(settings, skipped, scored)
    assert notes[0].startswith("2 archived records of other topics left out: demo.requests (2)")
    assert "partition(s) 0 only, of the 4 of rdv.requests" in notes[1]


def test_an_archive_replay_names_the_gaps_that_may_hold_requests_of_its_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gap noticed before the range holds none of it (its records were appended before); another
    topic's is another deployment's."""
    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings, Scored, Skipped, _requests_from_archive, _skipped_notes
    from services.core.ranges import parse_bounds
    from services.decoy import archive
    from services.decoy.archive import Gap

    gaps = [Gap("rdv.requests", 0, 10, 14, 5_000), Gap("rdv.requests", 1, 3, 3, 60_000),
            Gap("demo.requests", 0, 0, 9, 60_000)]
    monkeypatch.setattr(archive, "iter_archive", lambda *_args, **_bounds: iter(()))
    monkeypatch.setattr(archive, "read_gaps", lambda _directory: gaps)
    monkeypatch.setattr(replay_module, "partition_counts", lambda *_args: {})
    settings = ReplaySettings(model="demo:champion", source="archive", archive_dir="/nowhere")
    skipped = Skipped()
    assert list(_requests_from_archive(settings, parse_bounds("50s", "", "", 100_000), skipped)) == []
    assert skipped.gaps == [gaps[1]]
    (note,) = _skipped_notes(settings, skipped, Scored())
    assert note.startswith("this range may lack requests the archive never held: rdv.requests deleted them (its "
                           "retention) before the decoy archived them: partition 1, offsets 3 to 3 (found gone at ")


def test_a_champion_that_is_no_live_model_is_warned_of_before_the_scoring(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from services.cli.replay import ReplaySettings, note_champion_not_live
    from services.core import model_info

    monkeypatch.setattr(model_info, "read_model_infos", lambda *_args, **_kwargs: {"champion": None, "canary": None})
    with caplog.at_level("WARNING", logger="services.cli.replay"):
        note_champion_not_live(ReplaySettings(model="demo:challenger", champion="champoin"))
        note_champion_not_live(ReplaySettings(model="demo:challenger", champion="champion"))
    (said,) = caplog.records
    assert said.getMessage().startswith("--champion champoin is no live model (live: canary, champion)")


def test_an_archive_replay_says_its_range_may_lack_the_requests_of_files_it_could_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose sha256 is not the manifest's was skipped with a log line only: the report, its
    JSON and its HTML read as the whole range (a review)."""
    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings, Scored, Skipped, _requests_from_archive, _skipped_notes
    from services.core.ranges import parse_bounds
    from services.decoy.archive import ArchiveWriter

    for first in (0, 100):  # two sealed files
        writer = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600)
        writer.append([{"topic": "rdv.requests", "partition": 0, "offset": i, "timestamp": 1_000 + i, "key": None,
                        "value": b"v%d" % i, "archived_at": 1} for i in range(first, first + 50)])
        writer.close()
    damaged = sorted(tmp_path.glob("*.avro"))[1]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(replay_module, "partition_counts", lambda *_args: {})
    settings = ReplaySettings(model="demo:champion", source="archive", archive_dir=str(tmp_path))
    skipped = Skipped()
    assert len(list(_requests_from_archive(settings, parse_bounds("", "", "", 0), skipped))) == 50
    (note,) = _skipped_notes(settings, skipped, Scored())
    assert note == (f"this range may lack the requests of 1 archive file(s) not read: {damaged.name}: its sha256 "
                    "is not the manifest's (damaged since it was sealed)")


def stubbed_broker(monkeypatch: pytest.MonkeyPatch, logged: Iterator[dict[str, object]] | None = None) -> None:
    """A replay's calls to the broker, made to answer without one (the log holds `logged`)."""
    from services.cli import replay as replay_module

    monkeypatch.setattr(replay_module, "_log_records", (lambda *_args: logged) if logged is not None else no_log())
    monkeypatch.setattr(replay_module, "check_log_readable", lambda _settings: None)
    monkeypatch.setattr(replay_module, "_live_models", lambda _settings: frozenset())


def test_a_replay_asked_to_stop_while_scoring_reports_on_what_it_scored_with_a_signals_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C or SIGTERM during a replay exited 130 with nothing printed: hours of a real model's
    scoring lost (a review). Now the first signal winds it up: the requests read so far are scored
    and reported on, the report says where it stopped, and the exit status is still the signal's."""
    import io
    import json
    import os
    import signal
    import threading

    from rich.console import Console

    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings, run_replay
    from tests.unit.test_run_service import signals_handled

    assert threading.current_thread() is threading.main_thread()  # else the signal would reach no handler
    requests = codec("request")
    made = [make_request({"mean_radius": 10.0 + i}, budget_ms=100, reply_topic=None, reply_partition=None)
            for i in range(10)]

    def records(*_args: object) -> Iterator[Recorded]:
        for i, request in enumerate(made):
            if i == 4:
                os.kill(os.getpid(), signal.SIGTERM)  # handled before the next line runs
            yield Recorded(requests.encode(request), 5_000_000 + i, 0)

    stubbed_broker(monkeypatch)
    monkeypatch.setattr(replay_module, "recorded_requests", records)
    with signals_handled(signal.SIGTERM):  # not ignored, whatever this process inherited
        status = run_replay(ReplaySettings(model="demo:champion", batch=3, format="json"),
                            Console(file=io.StringIO()))
    report = json.loads(capsys.readouterr().out)
    assert status == 128 + signal.SIGTERM
    assert report["records"] == 4
    assert any(note.startswith("stopped after 4 requests") for note in report["notes"])


def test_a_replay_asked_to_stop_while_it_reads_the_log_says_which_requests_were_not_looked_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import signal

    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings
    from services.core.runtime import WindUp

    requests = codec("request")
    made = [make_request({"mean_radius": 10.0 + i}, budget_ms=100, reply_topic=None, reply_partition=None)
            for i in range(3)]
    wind_up = WindUp()

    def record_of(request: dict[str, object]) -> dict[str, object]:
        return {"request_id": request["request_id"], "created_at": request["created_at"], "deadline": 1,
                "answered_at": None, "status": "TIMEOUT", "chosen_model": None, "reason": "", "schedule": "",
                "schedule_version": 0, "outputs": []}

    def logged() -> Iterator[dict[str, object]]:
        yield record_of(made[0])
        wind_up.signum = signal.SIGINT  # Ctrl-C while the next record is read
        yield record_of(made[1])
        raise AssertionError("read on after the stop")

    stubbed_broker(monkeypatch, logged())
    values = recorded(*(requests.encode(r) for r in made), at=5_000_000)
    result = replay_module.replay(ReplaySettings(model="demo:champion"), values, wind_up=wind_up)
    assert (result.requests, result.without_log, result.stopped_by) == (3, 2, signal.SIGINT)
    notes = result.report.notes
    assert any(note.startswith("stopped while the log was read: 2 of these requests") for note in notes)
    assert not any("have no comparison record in the log up to" in note for note in notes)


def test_a_replay_asked_to_stop_after_its_last_record_is_not_cut_and_a_cut_one_says_where_it_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A signal after the last record cut nothing, yet the replay said "stopped before the end of
    the range" with a signal's status; and a cut one said it covered the range up to the record it
    stopped at, where partitions are read side by side, each at its own pace (reviews)."""
    import signal

    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings
    from services.core.runtime import WindUp

    requests = codec("request")
    made = [make_request({"mean_radius": 10.0 + i}, budget_ms=100, reply_topic=None, reply_partition=None)
            for i in range(6)]
    stubbed_broker(monkeypatch)

    def records(wind_up: WindUp, stop_before: int | None) -> Iterator[Recorded]:
        for i, request in enumerate(made):
            if i == stop_before:
                wind_up.signum = signal.SIGINT
            yield Recorded(requests.encode(request), 5_000_000 + 1_000 * i, i % 2)  # partitions 0 and 1 in turn
        if stop_before is None:
            wind_up.signum = signal.SIGINT  # after the last record: nothing left to cut

    whole = WindUp()
    result = replay_module.replay(ReplaySettings(model="demo:champion"), records(whole, None), wind_up=whole)
    assert (result.requests, result.stopped_by) == (6, None)
    assert not any(note.startswith("stopped") for note in result.report.notes)
    cut = WindUp()
    result = replay_module.replay(ReplaySettings(model="demo:champion"), records(cut, 5), wind_up=cut)
    assert (result.requests, result.stopped_by) == (5, signal.SIGINT)
    (said,) = [note for note in result.report.notes if note.startswith("stopped")]
    assert said.startswith("stopped after 5 requests, the last record read appended 1970-01-01 01:23:25Z: this report "
                           "covers part of the range (partitions are read side by side")  # the sixth's: 5,005,000


def test_a_replay_whose_reader_went_away_still_writes_its_html_and_exits_with_its_own_status(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """`replay ... | tee log`, Ctrl-C: tee ends with it, and the report's print met a broken pipe:
    rich exited 1 there, cut or whole, and what the command still had to do (its --html) was
    skipped (reviews). A reader gone is no failure: the cut replay keeps its signal's status, a
    whole one 0, and both write the HTML."""
    import os
    import signal

    from services.cli import replay as replay_module
    from services.cli.common import console
    from services.cli.replay import ReplayResult, ReplaySettings, run_replay
    from services.compare_report import html

    def broken_console() -> object:
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader gone
        return console(file=os.fdopen(write_end, "w"), width=100)

    written: list[str] = []
    monkeypatch.setattr(html, "write_html", lambda _report, path: written.append(path) or path)
    monkeypatch.setattr(replay_module, "print_report", lambda _report, out: out.print("row\n" * 50_000))
    @dataclasses.dataclass
    class AnyReport:  # what the stand-in print and write take
        notes: tuple[str, ...] = ()

    cut = ReplayResult(report=AnyReport(), requests=3, undecodable=0, without_log=0,  # type: ignore[arg-type]
                       seconds=1.0, stopped_by=signal.SIGINT)
    settings = ReplaySettings(model="demo:champion", html=str(tmp_path / "r.html"))
    for result, status in ((cut, 128 + signal.SIGINT), (dataclasses.replace(cut, stopped_by=None), 0)):
        monkeypatch.setattr(replay_module, "replay", lambda *_args, r=result, **_kwargs: r)
        assert run_replay(settings, broken_console()) == status
    assert written == [settings.html, settings.html]
    # The JSON report, written to stdout itself: its reader gone, stdout goes quiet, the rest goes on.
    from services.cli import common

    def closed(_report: object) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    quieted: list[object] = []
    monkeypatch.setattr(common, "quiet_stream", quieted.append)  # not this test process' stdout
    monkeypatch.setattr(replay_module, "print_report_json", closed)
    monkeypatch.setattr(replay_module, "replay", lambda *_args, **_kwargs: cut)
    assert run_replay(dataclasses.replace(settings, format="json"), broken_console()) == 128 + signal.SIGINT
    assert quieted == [sys.stdout] and written == [settings.html] * 3


def test_a_console_whose_reader_went_away_goes_quiet_on_its_own_stream_and_the_command_goes_on() -> None:
    """rich exits with status 1 there, and sends stdout to /dev/null whichever stream broke."""
    import os

    from services.cli.common import console

    read_end, write_end = os.pipe()
    os.close(read_end)
    stdout_before = os.readlink("/proc/self/fd/1")
    with os.fdopen(write_end, "w") as piped:
        out = console(file=piped, width=80)
        out.print("row\n" * 50_000)  # no SystemExit, no BrokenPipeError
        out.print("more")
        assert out.quiet and os.readlink(f"/proc/self/fd/{write_end}") == "/dev/null"
    assert os.readlink("/proc/self/fd/1") == stdout_before  # its own stream, not stdout
