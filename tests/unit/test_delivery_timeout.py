"""How long a service's or a client's records may take to be delivered (core/kafka/client_config.py,
client/client.py): shorter than librdkafka's 300 s, and a --kafka-config setting wins."""

from __future__ import annotations

import math
from typing import Any

import pytest

from services.client.client import request_delivery_timeout_ms
from services.core.kafka import (
    DELIVERY_TIMEOUT_KEYS,
    MAX_TIMEOUT_MS,
    OUTPUTS_CHECKED_PROPAGATION_MS,
    SERVING_DELIVERY_TIMEOUT_MS,
    delivery_timeout,
    within_transaction,
)
from services.core.service import StreamSpec, outputs_producer_config
from services.model_worker.settings import WorkerSettings
from services.model_worker.worker import ModelWorker
from services.rendezvous.service import REPLY_TIMEOUT_GRACE_MS, Rendezvous, reply_producer_config
from services.rendezvous.settings import RendezvousSettings


def test_the_services_timeout_applies_when_the_config_names_none() -> None:
    assert delivery_timeout({"bootstrap.servers": "b:9092"}, 12_345) == {"message.timeout.ms": 12_345}


@pytest.mark.parametrize("key", ["message.timeout.ms", "delivery.timeout.ms"])
def test_a_timeout_in_the_config_wins_under_either_name(key: str) -> None:
    # librdkafka's two names for one setting: adding ours under the other would override the user's.
    assert delivery_timeout({key: "900000"}, 12_345) == {}


def test_a_clients_requests_wait_a_minute_or_its_budget_and_answer_wait_if_longer() -> None:
    assert request_delivery_timeout_ms(200, 10.0) == SERVING_DELIVERY_TIMEOUT_MS == 60_000
    assert request_delivery_timeout_ms(90_000, 30.0) == 120_000
    assert request_delivery_timeout_ms(1, 59.9991) == 60_001  # rounded up: never shorter than the wait


@pytest.mark.parametrize("budget, wait", [("200", 10.0), (None, 10.0), (200, math.nan), (200, "10")])
def test_a_budget_or_wait_that_is_no_number_keeps_the_minute(budget: object, wait: object) -> None:
    # The client is still built; `submit` refuses such a budget with its own message.
    assert request_delivery_timeout_ms(budget, wait) == 60_000


def test_the_timeout_never_exceeds_what_librdkafka_accepts() -> None:
    assert request_delivery_timeout_ms(2**40, 10.0) == MAX_TIMEOUT_MS == 2**31 - 1


def test_the_services_timeout_is_at_most_what_librdkafka_takes() -> None:
    assert delivery_timeout({}, 2**40) == {"message.timeout.ms": MAX_TIMEOUT_MS}


def test_an_endless_or_overflowing_answer_wait_gets_the_largest_timeout_not_the_minute() -> None:
    assert request_delivery_timeout_ms(200, math.inf) == MAX_TIMEOUT_MS
    assert request_delivery_timeout_ms(200, 1e306) == MAX_TIMEOUT_MS  # * 1000 overflows to inf


@pytest.mark.parametrize("key", DELIVERY_TIMEOUT_KEYS)
def test_a_transactional_producer_cuts_a_longer_timeout_to_its_transactions(key: str) -> None:
    # librdkafka refuses a transactional producer whose records may outlive its transaction: a
    # --kafka-config message.timeout.ms given to every service must not stop the exactly-once ones.
    assert within_transaction({key: "90000", "linger.ms": 5}, 10_000) == {key: 10_000, "linger.ms": 5}
    assert within_transaction({key: "4000"}, 10_000) == {key: 4_000}


def test_a_transactional_producer_cuts_a_longer_socket_timeout_to_what_librdkafka_takes() -> None:
    # librdkafka: "`socket.timeout.ms` must be set <= `transaction.timeout.ms` + 100".
    assert within_transaction({"socket.timeout.ms": "30000"}, 10_000) == {"socket.timeout.ms": 10_100}
    assert within_transaction({"socket.timeout.ms": "5000"}, 10_000) == {"socket.timeout.ms": 5_000}


@pytest.mark.parametrize("config", [{}, {"message.timeout.ms": "soon"}])
def test_a_transactional_producer_leaves_an_absent_or_unreadable_timeout_to_librdkafka(config: dict[str, str]) -> None:
    assert within_transaction(config, 10_000) == config


def rendezvous_spec(processing: str, *kafka_config: str) -> StreamSpec:
    settings = RendezvousSettings(models=("champion",), processing=processing, kafka_config=kafka_config)
    return Rendezvous(settings)._spec()


def test_an_at_least_once_rendezvous_gives_its_outputs_the_minute_and_a_users_timeout_wins() -> None:
    assert rendezvous_spec("at-least-once").producer_config["message.timeout.ms"] == SERVING_DELIVERY_TIMEOUT_MS
    assert "message.timeout.ms" not in rendezvous_spec("at-least-once", "delivery.timeout.ms=90000").producer_config
    # In transactions, the transaction's timeout bounds them (librdkafka's default for them).
    assert "message.timeout.ms" not in rendezvous_spec("exactly-once").producer_config


def test_a_model_worker_gives_its_scores_the_minute_and_a_users_timeout_wins() -> None:
    def producer_config(*kafka_config: str) -> dict[str, Any]:
        spec = ModelWorker(WorkerSettings(model="demo:champion", kafka_config=kafka_config)).service.spec
        config = outputs_producer_config(spec, spec.config)
        return {key: config.get(key) for key in ("message.timeout.ms", "topic.metadata.propagation.max.ms")}

    assert producer_config() == {"message.timeout.ms": SERVING_DELIVERY_TIMEOUT_MS,
                                 "topic.metadata.propagation.max.ms": OUTPUTS_CHECKED_PROPAGATION_MS}
    assert producer_config("message.timeout.ms=120000") == {
        "message.timeout.ms": "120000", "topic.metadata.propagation.max.ms": OUTPUTS_CHECKED_PROPAGATION_MS}
    assert producer_config("topic.metadata.propagation.max.ms=30000") == {
        "message.timeout.ms": SERVING_DELIVERY_TIMEOUT_MS, "topic.metadata.propagation.max.ms": "30000"}


@pytest.mark.parametrize("processing", ["exactly-once", "at-least-once"])
def test_the_rendezvous_outputs_fail_a_second_after_their_topic_goes_as_a_workers_do(processing: str) -> None:
    """Its outputs' topics are checked at start, as a worker's: one missing later was deleted while
    serving. Waiting 30 s for it, a transaction aborted on it, and recovery then waited for good
    (a review)."""
    spec = Rendezvous(RendezvousSettings(models=("champion",), processing=processing)).service.spec
    config = outputs_producer_config(spec, spec.config)
    assert config["topic.metadata.propagation.max.ms"] == OUTPUTS_CHECKED_PROPAGATION_MS


def test_the_rendezvous_replies_fail_a_second_after_their_topic_goes_and_a_users_settings_win() -> None:
    """Each return address is checked before its first reply: one missing from the metadata later
    was deleted. Waiting 30 s for it held every offset behind its replies uncommitted (a review)."""
    assert reply_producer_config({}, 5_000) == {
        "message.timeout.ms": 5_000 + REPLY_TIMEOUT_GRACE_MS,
        "topic.metadata.propagation.max.ms": OUTPUTS_CHECKED_PROPAGATION_MS,
        "linger.ms": 0, "allow.auto.create.topics": False}
    users = {"topic.metadata.propagation.max.ms": "30000", "delivery.timeout.ms": "9000"}
    assert reply_producer_config(users, 5_000) == {**users, "linger.ms": 0, "allow.auto.create.topics": False}


@pytest.mark.parametrize(("stall", "session", "expected"), [(30_000, 6_000, 30_000), (5_000, 6_000, 6_000)])
def test_a_rendezvous_whose_loop_stalls_leaves_its_group_after_the_stall_timeout(
    stall: int, session: int, expected: int
) -> None:
    """librdkafka's 300 s kept a hung instance's partitions unanswered for five minutes (a review);
    never below the session timeout, which librdkafka refuses."""
    settings = RendezvousSettings(models=("champion",), stall_timeout_ms=stall, session_timeout_ms=session)
    assert Rendezvous(settings)._spec().consumer_config["max.poll.interval.ms"] == expected
