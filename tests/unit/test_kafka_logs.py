"""librdkafka's log lines and error events, one line per kind per client per period (kafka_logs)."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from services.core import kafka_logs
from services.core.health import BrokerHealth
from services.core.kafka_logs import ClientLog, normalise, wired

REFUSED = ("127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused "
           "(after {ms}ms in state CONNECT{more})")


def refused_line(ms: int = 0, more: str = "") -> str:
    """The message librdkafka's log callback gets (with its thread prefix)."""
    return "[thrd:127.0.0.1:9092/bootstrap]: " + REFUSED.format(ms=ms, more=more)


def refused_error(ms: int = 0, more: str = "") -> KafkaError:
    return KafkaError(KafkaError._TRANSPORT, REFUSED.format(ms=ms, more=more))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name in ("librdkafka", "services.core.kafka")]


def as_librdkafka(client: ClientLog, text: str, level: int = logging.ERROR) -> None:
    """How confluent-kafka calls a logger: log(level, "%s [%s] %s", facility, client name, message)."""
    client.log(level, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", text)


def test_normalise_drops_timings_counts_and_the_thread_prefix() -> None:
    assert normalise(refused_line(0)) == normalise(REFUSED.format(ms=1289, more=", 3 identical error(s) suppressed"))
    assert "1289" not in normalise(REFUSED.format(ms=1289, more=""))
    assert normalise("GroupCoordinator: Connect failed (after 0ms in state CONNECT)") != normalise(refused_line())
    assert normalise("x (after 3ms in state UP)") != normalise("x (after 3ms in state CONNECT)")
    assert normalise("retry 2024-05-01 10:00:00,123 in 250 ms") == normalise("retry 2024-05-02T11:00:01.5Z in 90 ms")
    assert normalise("after 3 attempts") == normalise("after 17 attempts")
    assert "127.0.0.1:9092" in normalise(refused_line()), "the broker's address stays: a kind per broker"


def test_a_repeated_message_is_logged_once_then_summed_up_after_the_period(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = ClientLog(clock=clock)
    for i in range(313):
        client.error_cb(refused_error(ms=i % 5))
        clock.now += 0.05  # a refusal every 50 ms, as a consumer re-bootstrapping
    assert lines(caplog) == [f"kafka client: {REFUSED.format(ms=0, more='')}"], "the first one, as it came"
    clock.now = 1000.0 + 30.0
    client.error_cb(refused_error(ms=7))
    assert lines(caplog)[1] == (f"kafka client: {REFUSED.format(ms=7, more='')} "
                                "(repeated 312 times in the last 30 s)")
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]


def test_the_log_line_and_the_error_event_of_one_failure_make_one_line_and_count_once(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = ClientLog(clock=clock)
    for i in range(50):
        as_librdkafka(client, refused_line(ms=i))
        clock.now += 0.001
        client.error_cb(refused_error(ms=i))
        clock.now += 0.1
    assert len(lines(caplog)) == 1
    assert lines(caplog)[0] == f"FAIL [rdkafka#consumer-1] {refused_line()}", "the log callback's line, as it came"
    clock.now += 30.0
    client.error_cb(refused_error())
    assert lines(caplog)[1].endswith("(repeated 49 times in the last 35 s)"), lines(caplog)


def test_the_twins_pair_whichever_comes_first(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = ClientLog(clock=clock)
    client.error_cb(refused_error())
    as_librdkafka(client, refused_line())
    assert lines(caplog) == [f"kafka client: {REFUSED.format(ms=0, more='')}"]


def test_different_kinds_each_get_their_first_line(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = ClientLog(clock=clock)
    client.error_cb(refused_error())
    client.error_cb(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    client.error_cb(KafkaError(KafkaError._TRANSPORT, "GroupCoordinator: Connect to ipv4#127.0.0.1:9092 failed: "
                                                      "Connection refused (after 0ms in state CONNECT)"))
    assert len(lines(caplog)) == 3
    other = ClientLog(clock=clock)  # a kind per client: another client's first refusal is said too
    other.error_cb(refused_error())
    assert len(lines(caplog)) == 4


def test_fatal_and_refused_credentials_or_permissions_are_logged_every_time(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = ClientLog(clock=clock)
    for _ in range(3):
        client.error_cb(KafkaError(KafkaError._FENCED, "producer fenced", fatal=True))
        clock.now += 2
        client.error_cb(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed"))
        clock.now += 2
        client.error_cb(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed"))
        clock.now += 2
        as_librdkafka(client, "[thrd:main]: Fatal error: Local: Fatal error", level=logging.CRITICAL)
        clock.now += 2
    said = lines(caplog)
    assert len(said) == 12, said
    assert [r.levelno for r in caplog.records][:2] == [logging.ERROR, logging.WARNING]


def test_a_refused_login_reported_twice_by_librdkafka_is_one_line_each_time(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = ClientLog(clock=clock)
    text = "127.0.0.1:9092/bootstrap: SASL authentication error: Authentication failed (after 5ms in state AUTH_REQ)"
    for _ in range(3):
        as_librdkafka(client, f"[thrd:127.0.0.1:9092/bootstrap]: {text}")
        client.error_cb(KafkaError(KafkaError._AUTHENTICATION, text))
        clock.now += 3
    assert len(lines(caplog)) == 3


def test_a_kind_that_stopped_is_summed_up_when_any_other_line_passes(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = ClientLog(clock=clock)
    for _ in range(10):
        client.error_cb(refused_error())
        clock.now += 0.1
    clock.now += 40
    client.error_cb(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    said = lines(caplog)
    assert said[1] == f"kafka client: {REFUSED.format(ms=0, more='')} (repeated 9 times in the last 41 s)"
    assert said[2] == "kafka client: 1/1 brokers are down"


def test_flush_says_what_was_held_back_and_the_next_outage_is_logged_at_once(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = ClientLog(clock=clock)
    for _ in range(5):
        as_librdkafka(client, refused_line())
        clock.now += 1
    client.flush()
    assert lines(caplog)[-1] == f"FAIL [rdkafka#consumer-1] {refused_line()} (repeated 4 times in the last 5 s)"
    assert caplog.records[-1].levelno == logging.ERROR, "the summary keeps the level of the lines it sums up"
    client.flush()
    assert len(lines(caplog)) == 2, "nothing held back: nothing to say"
    as_librdkafka(client, refused_line())
    assert len(lines(caplog)) == 3, "the first line after the broker came back is logged as it comes"


def test_broker_health_coming_back_flushes_the_clients(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    health = BrokerHealth()
    client = ClientLog(health.error_cb, clock=clock)
    client.error_cb(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    for _ in range(3):
        client.error_cb(refused_error())
    assert not health.up, "the caller's error_cb still hears of every error"
    health.mark_up()
    said = [r.getMessage() for r in caplog.records]
    assert said[-1].startswith("broker reachable again after")
    assert f"kafka client: {REFUSED.format(ms=0, more='')} (repeated 2 times in the last 0 s)" in said[:-1]


def test_the_caller_error_cb_hears_every_error_even_held_back_ones(clock: Clock) -> None:
    heard: list[KafkaError] = []
    client = ClientLog(heard.append, clock=clock)
    for _ in range(20):
        client.error_cb(refused_error())
    assert len(heard) == 20


def test_wired_config_routes_both_callbacks_and_does_not_wrap_twice(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    heard: list[KafkaError] = []
    first = wired({"bootstrap.servers": "x", "error_cb": heard.append})
    assert isinstance(first["logger"], ClientLog) and first["error_cb"].__self__ is first["logger"]
    second = wired(dict(first))  # e.g. a producer's merged config handed to another client
    assert second["logger"] is not first["logger"]
    second["error_cb"](refused_error())
    assert len(heard) == 1 and len(lines(caplog)) == 1, "one line, the caller's callback called once"


def test_kinds_are_bounded_per_client(clock: Clock, caplog: pytest.LogCaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(kafka_logs, "MAX_KINDS", 4)
    client = ClientLog(clock=clock)
    client.error_cb(refused_error())
    client.error_cb(refused_error())
    for i in range(10):
        clock.now += 1
        client.error_cb(KafkaError(KafkaError._TRANSPORT, f"broker {i}/{i}: gone"))
    assert len(client._limit) <= 4
    assert any("(repeated 1 times" in line for line in lines(caplog)), "an evicted kind's count is said"


def test_twins_served_in_batches_still_count_once(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """A client polled now and then serves its queued log lines and error events in runs."""
    caplog.set_level(logging.DEBUG)
    client = ClientLog(clock=clock)
    as_librdkafka(client, refused_line())
    client.error_cb(refused_error())
    for _ in range(10):
        for _ in range(5):
            as_librdkafka(client, refused_line())
        clock.now += 0.5
        for _ in range(5):
            client.error_cb(refused_error())
        clock.now += 0.5
    clock.now += 30
    client.flush()
    assert lines(caplog)[-1].endswith("(repeated 50 times in the last 40 s)"), lines(caplog)
