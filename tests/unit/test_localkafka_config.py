"""Fast tests of the local broker's configuration (no Java, no Maven, no broker)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
from pathlib import Path

import pytest

from services.core.errors import ConfigError
from services.localkafka import config, jars
from services.localkafka.broker import LocalBroker, read_bootstrap, status_background, stop_background


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_server_properties_single_node_kraft(tmp_path: Path) -> None:
    props = config.server_properties(tmp_path, 9092, 9093)
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["log.dirs"] == str(tmp_path / "logs")
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
        "num.partitions",
    ):
        assert props[key] == "1", key
    assert props["offsets.topic.num.partitions"] == "4"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert props["delete.topic.enable"] == "true"
    assert "controller.quorum.bootstrap.servers" not in props  # static voters, no --standalone


def test_extra_listeners_and_properties(tmp_path: Path) -> None:
    props = config.server_properties(
        tmp_path,
        1000,
        1001,
        extra_listeners={"sasl": (1002, "SASL_PLAINTEXT")},
        extra_properties={"sasl.enabled.mechanisms": "SCRAM-SHA-256", "num.partitions": "3"},
    )
    assert props["listeners"].endswith(",SASL://127.0.0.1:1002")
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:1000,SASL://127.0.0.1:1002"
    assert "SASL:SASL_PLAINTEXT" in props["listener.security.protocol.map"].split(",")
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-256"
    assert props["num.partitions"] == "3"
    with pytest.raises(ValueError):
        config.server_properties(tmp_path, 1, 2, extra_listeners={"controller": (3, "PLAINTEXT")})


def test_properties_render_round_trip(tmp_path: Path) -> None:
    props = config.server_properties(tmp_path / "a\\b", 1, 2, extra_properties={"x.y": "a=b:c"})
    text = config.render_properties(props)
    assert "process.roles=broker,controller\n" in text
    assert config.parse_properties(text) == props


def test_log4j_config_logs_to_file_only(tmp_path: Path) -> None:
    text = config.log4j2_properties(tmp_path / "broker.log")
    assert f"appender.file.fileName = {tmp_path / 'broker.log'}" in text
    assert "rootLogger.level = INFO" in text
    assert "Console" not in text


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = config.free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        assert 0 < port < 65536
        with socket.socket() as sock:
            sock.bind((config.HOST, port))


def test_cluster_id_format() -> None:
    ids = {config.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cid), cid
        assert not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RDV_CACHE_DIR", str(tmp_path))
    assert config.cache_dir() == tmp_path.resolve()
    assert config.kafka_home() == tmp_path.resolve() / f"kafka-{config.KAFKA_VERSION}"
    assert config.broker_dir("default") == tmp_path.resolve() / "broker" / "default"
    monkeypatch.delenv("RDV_CACHE_DIR")
    assert config.REPO_POM.is_file()  # running from a checkout
    assert config.cache_dir() == config.REPO_POM.parents[2] / ".cache"
    with pytest.raises(ValueError):
        config.broker_dir("../x")


def test_not_running_broker(cache: Path) -> None:
    assert read_bootstrap() is None
    assert status_background() is None
    assert stop_background() is False
    broker = LocalBroker("other")
    assert broker.status()["running"] is False
    assert broker.pid is None


def test_stale_state_file_is_ignored(cache: Path) -> None:
    broker = LocalBroker("stale")
    broker.root.mkdir(parents=True)
    state = {"pid": 2**22 + 12345, "listeners": {"PLAINTEXT": "127.0.0.1:1"}, "started_at": 0}
    broker.state_file.write_text(json.dumps(state))
    assert read_bootstrap("stale") is None
    assert broker.stop() is False
    assert not broker.state_file.exists()


def test_provision_uses_marker_and_needs_maven(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jars.shutil, "which", lambda _name: None)
    with pytest.raises(ConfigError, match="mvn not found"):
        jars.provision()
    home = config.kafka_home()
    (home / "libs").mkdir(parents=True)
    (home / "libs" / f"kafka_2.13-{config.KAFKA_VERSION}.jar").write_bytes(b"")
    digest = hashlib.sha256(config.REPO_POM.read_bytes()).hexdigest()
    (home / jars.MARKER).write_text(json.dumps({"pom_sha256": digest}))
    assert jars.provision() == home / "libs"  # cached: Maven is not needed


def test_java_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(jars.shutil, "which", lambda _name: None)
    with pytest.raises(ConfigError, match="java not found"):
        jars.java_executable()
