"""bench/broker_requests.py: reading the broker's request log, and whose connection a port is."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from bench.broker_requests import UNKNOWN, Completed, Window, count, parse_line, socket_owners
from services.core.errors import ConfigError
from services.localkafka.config import log4j2_properties, request_log_path


def _line(at_ms: int, api: str, client_port: int, extra: str = "") -> str:
    entry = {
        "isForwarded": False,
        "requestHeader": {"requestApiKey": 0, "clientId": "rdkafka", "requestApiKeyName": api},
        "connection": f"127.0.0.1:29487-127.0.0.1:{client_port}-0-12",
        "totalTimeMs": 1.5,
    }
    return f"{at_ms} Completed request:{json.dumps(entry)}{extra}\n"


def test_a_line_of_the_request_log_is_read() -> None:
    assert parse_line(_line(1_700_000_000_123, "PRODUCE", 38556)) == Completed(1_700_000_000_123, "PRODUCE", 38556)


def test_other_lines_are_not_requests() -> None:
    assert parse_line("\n") is None
    assert parse_line("[2026-12-03 07:00:00] INFO something else (kafka.server)\n") is None
    assert parse_line("123 Completed request:{not json\n") is None
    assert parse_line('123 Completed request:{"requestHeader": {}}\n') is None
    assert parse_line("abc " + _line(1, "FETCH", 1).partition(" ")[2]) is None


def test_requests_are_counted_in_their_window_by_kind_and_sender() -> None:
    lines = [
        _line(999, "PRODUCE", 1),  # before any window
        _line(1_000, "PRODUCE", 1),
        _line(1_500, "FETCH", 2),
        _line(1_999, "FETCH", 2),
        _line(2_000, "FETCH", 2),  # a window's end is not in it
        _line(3_000, "ADD_PARTITIONS_TO_TXN", 3),
        _line(3_001, "PRODUCE", 4),  # a port nobody was found holding
        "garbage\n",
    ]
    windows = {"floor": Window(1_000, 2_000, 10), "rendezvous": Window(3_000, 4_000, 10)}
    counts = count(lines, windows, {1: "client", 2: "worker", 3: "broker"})
    assert counts["floor"] == {("PRODUCE", "client"): 1, ("FETCH", "worker"): 2}
    assert counts["rendezvous"] == {("ADD_PARTITIONS_TO_TXN", "broker"): 1, ("PRODUCE", UNKNOWN): 1}


def test_the_port_of_a_connection_names_the_process_holding_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            port = client.getsockname()[1]
            owners = socket_owners({"this test": os.getpid(), "gone": None})
            assert owners[port] == "this test"
            assert owners[server.getsockname()[1]] == "this test"


def test_the_request_log_is_configured_only_when_asked_for(tmp_path: Path) -> None:
    plain = log4j2_properties(tmp_path / "broker.log")
    assert "logger.request.level = WARN" in plain
    assert "REQUESTS" not in plain
    logged = log4j2_properties(tmp_path / "broker.log", tmp_path / "requests.log")
    assert "logger.request.level = DEBUG" in logged
    assert f"appender.requests.fileName = {tmp_path / 'requests.log'}" in logged
    assert "logger.request.additivity = false" in logged  # not into broker.log as well
    assert request_log_path("  ") is None
    assert request_log_path(str(tmp_path / "r.log")) == (tmp_path / "r.log").resolve()


def test_a_request_log_nowhere_to_write_is_refused_in_one_line(tmp_path: Path) -> None:
    for where, why in ((tmp_path, "a directory"), (tmp_path / "no" / "r.log", "is not a directory")):
        with pytest.raises(ConfigError, match=f"^RDV_BROKER_REQUEST_LOG=.*{why}") as refused:
            request_log_path(str(where))
        assert "\n" not in str(refused.value)
