"""A client's waits end: one that times out leaves no waiter behind, and closing the client fails
every request still waiting and refuses new ones (a real broker; no rendezvous runs, so no
request is ever answered)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.client.client import AnswerTimeout, Client, ClosedClient
from services.core.settings import Topics


def test_a_wait_that_times_out_leaves_no_waiter_and_closing_fails_the_rest(
    config: dict[str, Any], topics: Topics
) -> None:
    client = Client(config, topics, answer_wait_s=0.5, reply_partition=0)
    try:
        with pytest.raises(AnswerTimeout):
            client.score({"x": 1.0})
        with pytest.raises(AnswerTimeout):
            asyncio.run(client.ascore({"x": 1.0}))
        assert client.in_flight == 0
        waiting = client.submit({"x": 1.0})
        assert client.in_flight == 1
    finally:
        client.close()
    with pytest.raises(ClosedClient, match="the client was closed before this request was answered"):
        waiting.result(timeout=10)
    assert client.in_flight == 0
    with pytest.raises(ClosedClient, match="this client is closed"):
        client.submit({"x": 1.0})
    client.close()  # a second close does nothing


@pytest.mark.parametrize(("given", "used"), [({}, "10"), ({"reconnect.backoff.ms": "250"}, "250")])
def test_a_client_of_an_applications_own_config_paces_its_connections_as_the_commands_do(
    config: dict[str, Any], topics: Topics, given: dict[str, str], used: str
) -> None:
    """librdkafka's default pace (reconnect.backoff.ms=100) held a fresh client's first request
    ~48 ms before it reached the broker (bench/client_first_request.py); a value given stays."""
    client = Client({**config, **given}, topics, reply_partition=0)
    try:
        assert client._producer._config["reconnect.backoff.ms"] == used
    finally:
        client.close()
