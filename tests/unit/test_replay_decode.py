"""What replay takes for a request: what every worker takes (core/requests.py). A request with
created_at <= 0 once became the start of the log range replay reads its answers from."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from services.cli.replay import _scored_requests
from services.client.client import make_request
from services.core.codec import codec
from services.model_worker.models import load_model


def test_records_that_are_no_requests_are_counted_as_undecodable_not_replayed() -> None:
    requests = codec("request")
    good = make_request({"a": 1.0}, budget_ms=100, reply_topic=None, reply_partition=None)
    values = [requests.encode(good), requests.encode({**good, "created_at": 0}), b"garbage", None]
    replayed, bad = _scored_requests(load_model("demo:canary"), values, batch=10)
    assert list(replayed) == [good["request_id"]] and bad == 3


def test_a_replay_counts_each_request_once_reads_the_log_from_before_it_and_says_what_the_log_lacks(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request id sent twice was replayed and counted twice; the log was read from the earliest
    created_at (the client's clock, up to a minute ahead of the rendezvous' that stamps the log),
    missing the first records; requests with no record were a confident row of TIMEOUTs."""
    from services.cli import replay as replay_module
    from services.cli.replay import LOG_MARGIN_MS, ReplaySettings

    requests = codec("request")
    first = make_request({"mean_radius": 14.0}, budget_ms=100, reply_topic=None, reply_partition=None)
    other = make_request({"mean_radius": 12.0}, budget_ms=100, reply_topic=None, reply_partition=None)
    asked: list[int] = []

    def no_log(_settings: ReplaySettings, start_ms: int, _progress: object) -> Iterator[dict[str, object]]:
        asked.append(start_ms)
        return iter(())

    monkeypatch.setattr(replay_module, "_log_records", no_log)
    monkeypatch.setattr(replay_module, "check_log_readable", lambda _settings: None)
    values = [requests.encode(first), requests.encode(first), requests.encode(other)]
    result = replay_module.replay(ReplaySettings(model="demo:champion"), values)
    assert result.requests == 2 and result.report.records == 2
    assert asked == [min(first["created_at"], other["created_at"]) - LOG_MARGIN_MS]
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
        replay_module.replay(ReplaySettings(model="demo:champion"), [b"x", b"y", None])
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

    monkeypatch.setattr(replay_module, "_log_records", lambda *_args: iter(()))
    monkeypatch.setattr(replay_module, "check_log_readable", lambda _settings: None)
    values = [codec("request").encode(make_request({"mean_radius": 14.0}, budget_ms=100, reply_topic=None,
                                                   reply_partition=None))]
    named = replay_module.replay(ReplaySettings(model="demo:champion", champion="champion-replay"), values)
    assert named.report.champion == "champion-replay"
    # The live champion, past the log's retention: the report, with why it has no champion (it was
    # dropped silently; then raised after all the scoring, blaming the name).
    live = replay_module.replay(ReplaySettings(model="demo:champion", champion="champion"), values)
    assert live.report.champion is None
    assert any("--champion champion: none of the replayed requests has a record" in n for n in live.report.notes)


def test_a_request_stamped_long_before_the_range_does_not_have_the_whole_log_read(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """created_at is the client's: one stamped 1 had the log read and decoded from its beginning (a
    review). The log is read from the range's own start at the earliest (less the margin)."""
    from services.cli import replay as replay_module
    from services.cli.replay import LOG_MARGIN_MS, ReplaySettings
    from services.core.runtime import now_ms

    requests = codec("request")
    real = make_request({"mean_radius": 14.0}, budget_ms=100, reply_topic=None, reply_partition=None)
    forged = {**make_request({"mean_radius": 12.0}, budget_ms=100, reply_topic=None, reply_partition=None),
              "created_at": 1, "deadline": 101}
    asked: list[int] = []
    monkeypatch.setattr(replay_module, "_log_records", lambda _s, start_ms, _p: asked.append(start_ms) or iter(()))
    monkeypatch.setattr(replay_module, "check_log_readable", lambda _settings: None)
    before = now_ms()
    replay_module.replay(ReplaySettings(model="demo:champion", since="10m"), [requests.encode(forged),
                                                                             requests.encode(real)])
    (start,) = asked
    assert before - 600_000 - LOG_MARGIN_MS <= start <= now_ms() - 600_000 - LOG_MARGIN_MS
