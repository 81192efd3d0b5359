"""Fast tests of the local broker's configuration (no Java, no Maven, no broker)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from services.core.errors import BrokerError, ConfigError
from services.localkafka import broker as broker_module
from services.localkafka import config, jars, jvm, sasl_broker_options, sasl_client_config
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


def test_cleaner_buffer_is_a_small_part_of_the_heap(tmp_path: Path) -> None:
    """The cleaner's dedupe buffer lives on the heap for good; Kafka's default (128 MiB) was a
    quarter of it and kept G1 marking every few seconds."""
    (max_heap,) = [opt for opt in jvm.DEFAULT_JVM_OPTIONS if opt.startswith("-Xmx")]
    assert max_heap.endswith("m"), max_heap
    heap_bytes = int(max_heap.removeprefix("-Xmx")[:-1]) * 1024 * 1024
    buffer_bytes = int(config.server_properties(tmp_path, 1, 2)["log.cleaner.dedupe.buffer.size"])
    assert 1024 * 1024 <= buffer_bytes <= heap_bytes // 32


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


def test_free_ports_come_from_below_the_range_of_outgoing_connections(tmp_path: Path) -> None:
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("32768\t60999\n")
    below = config.server_port_range(range_file)
    assert below == range(32768 - 12_000, 32768)
    ports = config.free_ports(3, candidates=below)
    assert len(set(ports)) == 3 and all(port in below for port in ports)


def test_no_server_range_when_the_os_range_cannot_be_read_or_starts_too_low(tmp_path: Path) -> None:
    assert config.server_port_range(tmp_path / "missing") is None
    low = tmp_path / "low"
    low.write_text("2000 60999")
    assert config.server_port_range(low) is None


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
    status = status_background()
    assert status["running"] is False and status["data_kept"] is False and status["data_bytes"] == 0
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


@pytest.mark.parametrize(("text", "major"), [
    ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment (build 17.0.15+6-Debian-1deb12u1)', 17),
    ('openjdk version "21" 2023-09-19', 21),
    ('java version "1.8.0_402"\nJava(TM) SE Runtime Environment (build 1.8.0_402-b08)', 8),
    ('openjdk version "11.0.22" 2024-01-16 LTS', 11),
    ("Error: could not open `lib/jvm.cfg'", None),
])
def test_the_major_version_is_read_from_java_version(text: str, major: int | None) -> None:
    assert jars.java_major(text) == major


def test_the_machines_java_is_accepted() -> None:
    assert os.path.isfile(jars.java_executable())


def test_an_older_java_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A JAVA_HOME whose java says it is Java 11 (a script: this machine has only one JDK).
    java = tmp_path / "bin" / "java"
    java.parent.mkdir()
    java.write_text('#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n')
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    refused = rf"^{java} is Java 11: the local Kafka broker needs Java {jars.MIN_JAVA} or newer"
    with pytest.raises(ConfigError, match=refused):
        jars.java_executable()


# ----- restartable broker: what a resume reads back -------------------------------------------------
def test_listener_addresses_read_back_every_listener(tmp_path: Path) -> None:
    props = config.server_properties(tmp_path, 1000, 1001, extra_listeners={"sasl": (1002, "SASL_PLAINTEXT")})
    parsed = config.parse_properties(config.render_properties(props))
    assert config.listener_addresses(parsed) == {
        "PLAINTEXT": "127.0.0.1:1000", "CONTROLLER": "127.0.0.1:1001", "SASL": "127.0.0.1:1002",
    }  # fmt: skip
    assert config.listener_addresses({}) == {}
    assert config.log_dir(parsed) == tmp_path / "logs"
    assert config.log_dir({"log.dirs": " /a/b , /c"}) == Path("/a/b")
    assert config.log_dir({}) is None


def test_cluster_id_is_read_from_meta_properties(tmp_path: Path) -> None:
    assert config.read_cluster_id(tmp_path) is None
    cid = config.new_cluster_id()
    # As `kafka-storage format` writes it.
    (tmp_path / "meta.properties").write_text(
        f"#\n#Thu Nov 27 13:50:59 UTC 2026\nnode.id=1\ndirectory.id=uwToG1Nx1FKQBWcAFzqFig\n"
        f"version=1\ncluster.id={cid}\n"
    )
    assert config.read_cluster_id(tmp_path) == cid


def test_port_free_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind((config.HOST, 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not config.port_free(port)
    assert config.port_free(port)


def _kept_data(broker: LocalBroker, ports: tuple[int, int, int]) -> None:
    """What `stop(keep_data=True)` leaves: server.properties and a formatted log dir."""
    broker.root.mkdir(parents=True)
    props = config.server_properties(
        broker.root, ports[0], ports[1], extra_listeners={"SASL": (ports[2], "SASL_PLAINTEXT")}
    )
    broker.properties_file.write_text(config.render_properties(props))
    (broker.root / "logs").mkdir()
    (broker.root / "logs" / "meta.properties").write_text(f"cluster.id={config.new_cluster_id()}\n")


def test_resume_needs_kept_data(cache: Path) -> None:
    broker = LocalBroker("resume")
    with pytest.raises(BrokerError, match="no kept data"):
        broker.start(fresh=False)
    broker.root.mkdir(parents=True)
    broker.properties_file.write_text(config.render_properties(config.server_properties(broker.root, 1, 2)))
    with pytest.raises(BrokerError, match="no formatted data"):
        broker.start(fresh=False)


def test_resume_refuses_a_taken_port(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_module, "RESUME_PORT_WAIT_S", 0.2)
    broker = LocalBroker("taken")
    with socket.socket() as sock:
        sock.bind((config.HOST, 0))
        sock.listen()
        taken = sock.getsockname()[1]
        free = config.free_ports(2)
        _kept_data(broker, (free[0], free[1], taken))
        with pytest.raises(BrokerError, match=f"port\\(s\\) {taken} are taken"):
            broker.start(fresh=False)
    assert (broker.root / "logs" / "meta.properties").is_file()  # a refused resume keeps the data


def test_a_resumed_broker_takes_the_current_tuning_and_the_given_extras() -> None:
    kept = {"listeners": "PLAINTEXT://127.0.0.1:1", "num.io.threads": "8",
            "log.cleaner.dedupe.buffer.size": "134217728"}  # fmt: skip
    resumed = config.resumed_properties(kept, {"num.io.threads": "5"})
    assert resumed["listeners"] == kept["listeners"]  # identity and layout stay as kept
    assert resumed["num.io.threads"] == "5"  # the extras (and $RDV_BROKER_PROPERTIES) win
    assert resumed["log.cleaner.dedupe.buffer.size"] == str(config.DEDUPE_BUFFER_BYTES)


def test_resume_rewrites_the_kept_properties_with_the_current_tuning(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(config.PROPERTIES_ENV, "log.cleaner.threads=2")
    broker = LocalBroker("retuned")
    port, controller_port, sasl_port = config.free_ports(3)
    _kept_data(broker, (port, controller_port, sasl_port))
    old = config.parse_properties(broker.properties_file.read_text())
    broker.properties_file.write_text(config.render_properties({**old, "log.cleaner.dedupe.buffer.size": "134217728"}))
    broker._resume_config()
    # The kept file stays as it is until the broker is launched with the new one (and is restored
    # if that start fails: tests/faults/test_broker_warmup.py).
    assert config.parse_properties(broker.properties_file.read_text())["log.cleaner.dedupe.buffer.size"] == "134217728"
    props = config.parse_properties(broker._resumed_properties or "")
    assert props["log.cleaner.dedupe.buffer.size"] == str(config.DEDUPE_BUFFER_BYTES)
    assert props["log.cleaner.threads"] == "2"
    assert props["listeners"] == old["listeners"]


def test_stop_keeps_or_deletes_the_data(cache: Path) -> None:
    broker = LocalBroker("data")
    _kept_data(broker, (1, 2, 3))
    assert broker.kill() is False  # not running
    assert broker.stop(keep_data=True) is False
    assert (broker.root / "logs" / "meta.properties").is_file()
    assert broker.stop() is False
    assert not (broker.root / "logs").exists()
    assert broker.properties_file.is_file()  # config and broker.log stay for reading


# ----- SASL/SCRAM ----------------------------------------------------------------------------------
def test_sasl_broker_options_make_a_scram_listener(tmp_path: Path) -> None:
    options = sasl_broker_options("alice", "alice-secret")
    assert options["extra_listeners"] == {"SASL": "SASL_PLAINTEXT"}
    assert options["format_args"] == ["--add-scram", "SCRAM-SHA-512=[name=alice,password=alice-secret]"]
    extra = {name: (2000, proto) for name, proto in options["extra_listeners"].items()}
    props = config.server_properties(
        tmp_path, 1000, 1001, extra_listeners=extra, extra_properties=options["extra_properties"]
    )
    assert "SASL:SASL_PLAINTEXT" in props["listener.security.protocol.map"].split(",")
    assert props["listener.name.sasl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["listener.name.sasl.scram-sha-512.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    )
    # Brokers and controller keep talking PLAINTEXT: no broker-side credentials anywhere.
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert "alice-secret" not in config.render_properties(props)
    broker = LocalBroker("sasl", data_dir=tmp_path, **options)
    assert "alice-secret" not in repr(broker)
    sha256 = sasl_broker_options("bob", "pw", mechanism="SCRAM-SHA-256", listener="client")
    assert sha256["extra_properties"]["listener.name.client.scram-sha-256.sasl.jaas.config"]
    assert sha256["extra_listeners"] == {"CLIENT": "SASL_PLAINTEXT"}


@pytest.mark.parametrize("user, password", [("al ice", "pw"), ("alice", "a,b"), ("alice", "x]y"),
                                            ("alice", 'q"uote'), ("alice", ""), ("a=b", "pw")])
def test_scram_format_arg_refuses_what_the_storage_tool_would_misparse(user: str, password: str) -> None:
    with pytest.raises(ValueError) as refused:
        config.scram_format_arg(user, password)
    assert password not in str(refused.value) or not password


def test_scram_mechanism_is_checked() -> None:
    with pytest.raises(ValueError, match="SCRAM-SHA-256, SCRAM-SHA-512"):
        config.scram_format_arg("alice", "pw", "PLAIN")


def test_sasl_client_config() -> None:
    assert sasl_client_config("127.0.0.1:1", "alice", "pw") == {
        "bootstrap.servers": "127.0.0.1:1", "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "alice", "sasl.password": "pw",
    }  # fmt: skip


def test_jvm_overrides_append_and_replace_only_the_collector() -> None:
    from services.localkafka.jvm import DEFAULT_JVM_OPTIONS, with_overrides

    options = with_overrides(DEFAULT_JVM_OPTIONS, "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx1g")
    assert options[-3:] == ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx1g")
    assert "-XX:+UseG1GC" not in options
    # A heap size drops both defaults: -Xmx256m after -Xms512m was refused by the JVM (a review).
    assert "-Xmx512m" not in options and "-Xms512m" not in options
    assert with_overrides(DEFAULT_JVM_OPTIONS, None) == DEFAULT_JVM_OPTIONS
    tuning = with_overrides(DEFAULT_JVM_OPTIONS, "-XX:+UseAdaptiveSizePolicyWithSystemGC")  # no collector choice
    assert "-XX:+UseG1GC" in tuning and "-Xms512m" in tuning


def test_broker_properties_from_text_are_key_value_pairs() -> None:
    assert config.properties_from_text("a.b=1 'c=x y' d=") == {"a.b": "1", "c": "x y", "d": ""}
    assert config.properties_from_text(None) == {}
    with pytest.raises(ConfigError, match="RDV_BROKER_PROPERTIES: broker property 'novalue' is not key=value"):
        config.properties_from_text("novalue")
    with pytest.raises(ConfigError, match="RDV_BROKER_PROPERTIES: No closing quotation"):
        config.properties_from_text("a='b")
    for key in config.OWN_PROPERTIES:  # a reset measured and deleted <root>/logs, and left these (a review)
        with pytest.raises(ConfigError, match=f"RDV_BROKER_PROPERTIES: {key} cannot be set"):
            config.properties_from_text(f"num.io.threads=2 {key}=/elsewhere")


def test_jvm_options_that_cannot_be_split_are_a_one_line_error() -> None:
    from services.localkafka.jvm import with_overrides

    with pytest.raises(ConfigError, match="RDV_BROKER_JVM_OPTS: No closing quotation"):
        with_overrides(("-Xmx1g",), "-Dx='unclosed")


def test_kept_data_is_seen_sized_and_reset(cache: Path) -> None:
    broker = LocalBroker("kept")
    logs = broker.root / "logs"
    (logs / "rdv.requests-0").mkdir(parents=True)
    (logs / "meta.properties").write_text("cluster.id=abc\nnode.id=1\n")
    (logs / "rdv.requests-0" / "00000000000000000000.log").write_bytes(b"x" * 1000)
    broker.properties_file.write_text(f"log.dirs={logs}\n")
    assert broker.has_kept_data() and broker.status()["data_kept"] is True
    assert broker.data_bytes() >= 1000
    assert broker.reset() >= 1000
    assert not broker.has_kept_data() and not logs.exists() and broker.data_bytes() == 0


def test_tls_material_is_a_ca_and_a_broker_certificate_for_loopback(tmp_path: Path) -> None:
    import ipaddress
    import stat

    from cryptography import x509

    from services.localkafka.tls import generate, tls_broker_options

    files = generate(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(files.certificate.read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    options = tls_broker_options(files)
    assert options["extra_listeners"] == {"SSL": "SSL"}
    properties = options["extra_properties"]
    assert isinstance(properties, dict)
    assert "PRIVATE KEY" in properties["listener.name.ssl.ssl.keystore.key"]


def test_data_bytes_skips_what_the_broker_deletes_while_it_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = LocalBroker(name="t", data_dir=tmp_path)
    kept = broker.root / "logs" / "kept-0"
    kept.mkdir(parents=True)
    (kept / "00.log").write_bytes(b"x" * 1000)
    (kept / "deleted-meanwhile.log").write_bytes(b"y" * 500)
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path).endswith("deleted-meanwhile.log"):
            raise FileNotFoundError(path)  # the broker deleted it after the directory was listed
        return real_stat(path, *args, **kwargs)

    kept_on_disk = os.stat(kept / "00.log").st_blocks * 512
    monkeypatch.setattr(os, "stat", stat)
    assert broker.data_bytes() == kept_on_disk > 0


def test_data_bytes_counts_the_disk_a_sparse_index_takes_not_its_apparent_size(tmp_path: Path) -> None:
    broker = LocalBroker(name="t", data_dir=tmp_path)
    segment = broker.root / "logs" / "rdv.requests-0"
    segment.mkdir(parents=True)
    (segment / "00000000000000000000.log").write_bytes(b"r" * 100_000)
    with (segment / "00000000000000000000.index").open("wb") as index:
        index.truncate(10 * 2**20)  # preallocated as Kafka does: 10 MB apparent, nothing written
    assert 100_000 <= broker.data_bytes() < 2**20


def test_a_broker_whose_properties_are_gone_but_whose_topics_are_kept_is_not_started_anew(cache: Path) -> None:
    """server.properties emptied by a failed rewrite (a full disk), and the next start took the kept
    topics for none and deleted them (a review). Now it is said, and nothing is touched."""
    broker = LocalBroker("keeps")
    (broker.root / "logs").mkdir(parents=True)
    (broker.root / "logs" / "meta.properties").write_text("cluster.id=abc\nnode.id=1\n")
    broker.properties_file.write_text("")
    with pytest.raises(BrokerError, match=r"holds data in .* but its server.properties is missing or unreadable"):
        broker_module.start_background("keeps")
    assert (broker.root / "logs" / "meta.properties").exists()


def test_server_properties_are_replaced_whole_and_kept_private(cache: Path) -> None:
    broker = LocalBroker("private")
    broker.root.mkdir(parents=True)
    broker._write_properties("a=1\n")
    broker._write_properties("b=2\n")
    assert broker.properties_file.read_text() == "b=2\n"
    assert broker.properties_file.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in broker.root.iterdir()) == ["server.properties"]


def _binds(port: int) -> bool:
    """Whether another process's free_ports() could take `port` now (a bind without SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((config.HOST, port))
        except OSError:
            return False
    return True


def test_a_broker_down_with_its_data_kept_holds_its_ports_for_its_resume(tmp_path: Path) -> None:
    """Down for a test's outage (15 s), another test's free_ports() could take one of its ports, and
    the resume failed: 'port(s) ... are taken by another process' (a flake)."""
    port, controller = config.free_ports(2)
    broker = LocalBroker("held", data_dir=tmp_path)
    broker.properties_file.parent.mkdir(parents=True, exist_ok=True)
    broker.properties_file.write_text(config.render_properties(config.server_properties(tmp_path, port, controller)))
    broker._hold_ports()  # as stop(keep_data=True) and kill() do
    try:
        assert not _binds(port) and not _binds(controller)
        assert config.port_free(port) and config.port_free(controller)  # the resume's own check passes
    finally:
        broker._release_ports()  # as the resume does, before the broker binds them
    assert _binds(port) and _binds(controller)
