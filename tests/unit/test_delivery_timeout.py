"""How long a service's or a client's records may take to be delivered (core/kafka.py,
client/client.py): shorter than librdkafka's 300 s, and a --kafka-config setting wins."""

from __future__ import annotations

import math

import pytest

from services.client.client import REQUEST_DELIVERY_TIMEOUT_MS, request_delivery_timeout_ms
from services.core.kafka import delivery_timeout


def test_the_services_timeout_applies_when_the_config_names_none() -> None:
    assert delivery_timeout({"bootstrap.servers": "b:9092"}, 12_345) == {"message.timeout.ms": 12_345}


@pytest.mark.parametrize("key", ["message.timeout.ms", "delivery.timeout.ms"])
def test_a_timeout_in_the_config_wins_under_either_name(key: str) -> None:
    # librdkafka's two names for one setting: adding ours under the other would override the user's.
    assert delivery_timeout({key: "900000"}, 12_345) == {}


def test_a_clients_requests_wait_a_minute_or_its_budget_and_answer_wait_if_longer() -> None:
    assert request_delivery_timeout_ms(200, 10.0) == REQUEST_DELIVERY_TIMEOUT_MS == 60_000
    assert request_delivery_timeout_ms(90_000, 30.0) == 120_000
    assert request_delivery_timeout_ms(1, 59.9991) == 60_001  # rounded up: never shorter than the wait


@pytest.mark.parametrize("budget, wait", [("200", 10.0), (None, 10.0), (200, math.nan), (200, math.inf)])
def test_a_budget_or_wait_that_is_no_number_keeps_the_minute(budget: object, wait: object) -> None:
    # The client is still built; `submit` refuses such a budget with its own message.
    assert request_delivery_timeout_ms(budget, wait) == 60_000


def test_the_timeout_never_exceeds_what_librdkafka_accepts() -> None:
    assert request_delivery_timeout_ms(2**40, 10.0) == 2**31 - 1
