"""BrokerHealth's "blocked" mark, per thread (services/core/health.py)."""

from __future__ import annotations

import threading

import pytest

from services.core.health import BrokerHealth


def test_a_call_ending_on_one_thread_leaves_another_threads_call_blocked() -> None:
    """One slot for all threads: a background commit that ended cleared a takeover scan's mark,
    so a long scan read as a loop stuck with the broker up."""
    health = BrokerHealth()
    health.BLOCKED_AFTER_S = 1e-9  # any blocked call counts at once
    scanning, finish = threading.Event(), threading.Event()

    def scan() -> None:
        with health.blocking():
            scanning.set()
            finish.wait(30)

    thread = threading.Thread(target=scan)
    thread.start()
    assert scanning.wait(30)
    with health.blocking():  # a commit on this thread, begun and ended meanwhile
        pass
    assert not health.up and "waited" in health.describe()
    finish.set()
    thread.join(30)
    assert health.up


def test_the_wait_for_a_broker_says_the_time_it_waited_as_given() -> None:
    """`--connect-timeout-s 0.5` read 'within 0s' (a review)."""
    from services.core.errors import BrokerUnavailable
    from services.core.kafka import wait_for_broker

    with pytest.raises(BrokerUnavailable, match=r"no Kafka broker answered at '127.0.0.1:1' within 0.5s"):
        wait_for_broker({"bootstrap.servers": "127.0.0.1:1"}, timeout=0.5)  # nothing listens on port 1


@pytest.mark.parametrize(("code", "reason", "said"), [
    ("_AUTHENTICATION", "SASL PLAIN mechanism handshake failed: Broker: Request not valid in current SASL state: "
     "broker's supported mechanisms:  (after 1ms in state AUTH_HANDSHAKE)", "the listener at b:9 does not use SASL"),
    ("_AUTHENTICATION", "SASL authentication error: Authentication failed during authentication due to invalid "
     "credentials with SASL mechanism SCRAM-SHA-512", "Kafka refused the credentials at b:9"),
    ("_AUTHENTICATION", "sasl_plaintext://b:9/bootstrap: SASL SCRAM-SHA-256 mechanism handshake failed: Broker: "
     "Unsupported SASL mechanism: broker's supported mechanisms: SCRAM-SHA-512 (after 301ms in state AUTH_HANDSHAKE)",
     "the broker at b:9 does not offer the SASL mechanism asked for"),  # librdkafka's words, a real broker's
    ("_TRANSPORT", "ssl://b:9/bootstrap: SSL handshake failed: Disconnected: SSL connection closed by peer: "
     "connecting to a PLAINTEXT broker listener? (after 2ms in state SSL_HANDSHAKE)", None),
    ("_TRANSPORT", "b:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused", None),
])
def test_a_sasl_client_at_a_listener_without_sasl_ends_the_wait_naming_it(
    code: str, reason: str, said: str | None,
) -> None:
    """It was told to check its password (a review). A TLS handshake closed is no final verdict:
    a proxy, or a broker restarting, closes so too (the review of a first form)."""
    from confluent_kafka import KafkaError

    from services.core.kafka.connect import _final_error

    found = _final_error(KafkaError(getattr(KafkaError, code), reason), "b:9")
    assert (found is None) if said is None else (found is not None and found.startswith(said)), found


@pytest.mark.parametrize(("protocol", "reason", "hint"), [
    ("SSL", "SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener?",
     "as a plaintext listener does: security.protocol=PLAINTEXT?"),
    ("SASL_SSL", "SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener?",
     "security.protocol=SASL_PLAINTEXT?"),
    ("plaintext", "Disconnected: connection closed by peer: receive 0 after POLLIN (after 2ms in state "
     "APIVERSION_QUERY)", "as a TLS listener does to a plaintext client: security.protocol=SSL?"),
    ("SASL_PLAINTEXT", "closed by peer (after 2ms in state APIVERSION_QUERY)", "security.protocol=SASL_SSL?"),
    ("SSL", "closed by peer (after 2ms in state APIVERSION_QUERY)", None),
])
def test_a_protocol_mismatch_is_hinted_for_the_clients_own_protocol(protocol: str, reason: str,
                                                                     hint: str | None) -> None:
    """A SASL_SSL client was told to use PLAINTEXT, which would drop SASL (a review)."""
    from services.core.kafka.connect import _mismatch_hint

    found = _mismatch_hint(reason, protocol)
    assert (found is None) if hint is None else (found is not None and found.endswith(hint)), found


def test_the_hint_is_the_latest_failures_not_one_seen_earlier_in_the_wait() -> None:
    """A few handshakes closed by a proxy, then the TLS broker down: the timeout's error told the
    TLS client to use PLAINTEXT (a review)."""
    from services.core.kafka.connect import _LatestFailure

    latest = _LatestFailure("SSL")
    latest.see("ssl://b:9/bootstrap: SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener?")
    assert latest.hint is not None and latest.hint.endswith("security.protocol=PLAINTEXT?")
    latest.see("1/1 brokers are down")  # not a connection's failure: the hint stands
    assert latest.hint is not None
    latest.see("b:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused (after 0ms in state CONNECT)")
    assert latest.hint is None


def test_a_broker_advertising_an_address_unreachable_from_here_is_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reached at its bootstrap address, a broker advertising 127.0.0.1:1 failed every later call
    slowly in librdkafka's words ('Broker handle destroyed'; a topic's creation after 60 s: a review)."""
    import socket
    from types import SimpleNamespace

    from services.core import kafka
    from services.core.errors import BrokerUnavailable

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    reachable = SimpleNamespace(host="127.0.0.1", port=listening.getsockname()[1])
    advertised = {"brokers": {1: SimpleNamespace(host="127.0.0.1", port=1)}}

    class Answering:
        def list_topics(self, timeout: float) -> SimpleNamespace:
            return SimpleNamespace(**advertised)

        def poll(self, _timeout: float) -> None:
            return None

    monkeypatch.setattr(kafka.connect, "new_client", lambda _kind, _config: Answering())
    with pytest.raises(BrokerUnavailable, match=r"^the broker at b:9 answered, but advertises 127.0.0.1:1 \(Conn"):
        kafka.wait_for_broker({"bootstrap.servers": "b:9"}, timeout=0.5)
    advertised["brokers"] = {1: SimpleNamespace(host="127.0.0.1", port=1), 2: reachable}  # one of them will do
    try:
        assert kafka.wait_for_broker({"bootstrap.servers": "b:9"}, timeout=0.5).brokers[2] is reachable
    finally:
        listening.close()


def test_a_failing_connection_to_an_advertised_broker_is_told_from_the_bootstraps() -> None:
    """librdkafka names a broker the cluster advertised by its id, a bootstrap address 'bootstrap':
    a broker advertising 127.0.0.1:1 timed out every metadata request, said as 'no Kafka broker
    answered' (a review)."""
    from services.core.kafka.connect import _LatestFailure

    latest = _LatestFailure("plaintext")
    latest.see("127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused")
    assert latest.advertised is None
    latest.see("127.0.0.1:1/1: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)")
    assert latest.advertised == "127.0.0.1:1"


def test_a_consumer_refused_its_group_names_the_group_not_a_topic() -> None:
    """It said 'the broker refused READ on topic ? ... (at ?[0]@-1)' (a review)."""
    from confluent_kafka import KafkaError

    from services.core.kafka.error_kinds import refusal

    err = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "FindCoordinator: Group authorization failed.")
    said = refusal(err, "READ", "?", "rdv.decoy")
    assert said is not None
    assert said.startswith("not authorized to use consumer group rdv.decoy: the principal needs READ on group rdv.")
    assert "topic" not in said
    unnamed = refusal(err, "READ", "rdv.requests")  # no group given: as before
    assert unnamed is not None and "lacks a permission on a group" in unnamed


def test_a_gateway_whose_reader_stopped_for_good_ends_with_the_reason() -> None:
    """It answered every call 503 and stayed up, where every other service exits (a review)."""
    from types import SimpleNamespace

    from services.core.errors import BrokerError
    from services.gateway.service import stop_if_ended

    broken: list[str | None] = [None]
    gateway = SimpleNamespace(broken=lambda: broken[0])
    stop_if_ended(gateway, None)  # type: ignore[arg-type]  # serving: nothing raised
    broken[0] = "stopped reading answers: not authorized to use consumer group rdv.gateway"
    with pytest.raises(BrokerError, match=r"^the gateway can answer no call: stopped reading answers: not auth"):
        stop_if_ended(gateway, None)  # type: ignore[arg-type]
