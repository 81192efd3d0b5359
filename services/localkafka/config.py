"""Pure configuration for the local broker: paths, ports, cluster id, server.properties, log4j2.

Nothing here starts a process, so the unit tests exercise all of it without Java or a network.
"""

from __future__ import annotations

import base64
import os
import random
import re
import shlex
import socket
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from services.core.errors import ConfigError

KAFKA_VERSION = "4.4.0"
HOST = "127.0.0.1"
BROKER_LISTENER = "PLAINTEXT"
PROPERTIES_ENV = "RDV_BROKER_PROPERTIES"
REQUEST_LOG_ENV = "RDV_BROKER_REQUEST_LOG"  # a file: every request the broker completes, one line each
CONTROLLER_LISTENER = "CONTROLLER"
DEDUPE_BUFFER_BYTES = 8 * 1024 * 1024

_REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_POM = _REPO_ROOT / "deploy" / "kafka" / "pom.xml"


def cache_dir() -> Path:
    """`$RDV_CACHE_DIR`, else `<repo>/.cache` in a checkout, else `~/.cache/rendezvous-serving`."""
    env = os.environ.get("RDV_CACHE_DIR")
    if env:
        path = Path(env).expanduser().resolve()
        if path.exists() and not path.is_dir():  # its paths below were shown as a broker not running
            raise ConfigError(f"RDV_CACHE_DIR {env!r} is not a directory: point it at one (made if missing), "
                              "or unset it")
        return path
    if REPO_POM.is_file():
        return _REPO_ROOT / ".cache"
    return Path.home() / ".cache" / "rendezvous-serving"


def kafka_home() -> Path:
    """Versioned directory that holds the provisioned jars (`libs/`)."""
    return cache_dir() / f"kafka-{KAFKA_VERSION}"


def broker_dir(name: str) -> Path:
    """Data directory of the named local broker (server.properties, logs/, broker.log, state.json)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad broker name {name!r}")
    return cache_dir() / "broker" / name


# Where the OS takes the local ports of outgoing connections (Linux: 32768-60999 by default). A
# port the OS picks for a bind to port 0 comes from that same range, so between our check and the
# server's own bind any client's connection can take it (seen in CI: a schema registry that then
# could not start). Servers get ports from just below that range instead.
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_SERVER_PORTS_SPAN = 12_000
_TRIES_PER_PORT = 50


def server_port_range(range_file: Path = EPHEMERAL_RANGE_FILE) -> range | None:
    """Ports below the OS's range for outgoing connections, or None when it cannot be read (or
    leaves no room above the privileged ports)."""
    try:
        low = int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if low - _SERVER_PORTS_SPAN < 1024:
        return None
    return range(low - _SERVER_PORTS_SPAN, low)


def free_ports(count: int, host: str = HOST, candidates: range | None = None) -> list[int]:
    """`count` distinct ports that were free on `host` a moment ago (all bound at once, then
    released), from `candidates` (default: `server_port_range()`) when one of them is free."""
    candidates = server_port_range() if candidates is None else candidates
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            ports.append(_bind_one(sock, host, candidates))
        return ports


def _bind_one(sock: socket.socket, host: str, candidates: range | None) -> int:
    if candidates is not None:
        for port in random.sample(candidates, min(_TRIES_PER_PORT, len(candidates))):
            try:
                sock.bind((host, port))
                return port
            except OSError:
                continue  # taken: another one
    sock.bind((host, 0))
    return int(sock.getsockname()[1])


def free_port(host: str = HOST) -> int:
    return free_ports(1, host)[0]


def port_free(port: int, host: str = HOST) -> bool:
    """True if a server could listen on `port` now (SO_REUSEADDR, as the JVM binds on Unix)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes as unpadded base64url (22 chars), never starting with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cid.startswith("-"):
            return cid


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2


def tuning_properties() -> dict[str, str]:
    """Settings sized for one node on a small machine. Unlike ports, listeners and the data
    layout, they may change between starts: a kept broker takes the current ones when it resumes."""
    return {
        # Kafka's defaults (8 I/O and 3 network threads) are sized for servers; one node on a small
        # machine only pays context switches for them (2 cores: broker CPU per request -7%,
        # bench/e2e_latency.py, docs/benchmarks.md).
        "num.io.threads": str(max(2, _cores())),
        "num.network.threads": str(max(1, _cores() // 2)),
        # The log cleaner allocates its dedupe buffer on the heap once and keeps it. Kafka's 128 MiB
        # is a quarter of this broker's heap (jvm.py): it kept the old generation above G1's
        # threshold, so the broker ran a marking cycle, with a 10-20 ms remark pause, every 4 s
        # (docs/benchmarks.md). The compacted topics of one node (offsets, transactions, the
        # control topic) have few keys; 8 MiB holds about 300,000 per cleaning pass.
        "log.cleaner.dedupe.buffer.size": str(DEDUPE_BUFFER_BYTES),
    }


def server_properties(
    data_dir: Path,
    port: int,
    controller_port: int,
    *,
    node_id: int = 1,
    extra_listeners: Mapping[str, tuple[int, str]] | None = None,
    extra_properties: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Settings of a single-node KRaft broker+controller that keeps everything under `data_dir`.

    `extra_listeners` maps a listener name to (port, security protocol), e.g.
    `{"SASL": (port, "SASL_PLAINTEXT")}`; each is also advertised. `extra_properties` win over
    every default (e.g. `sasl.enabled.mechanisms`, `listener.name.sasl.scram-sha-256.sasl.jaas.config`).
    """
    listeners = {BROKER_LISTENER: (port, "PLAINTEXT"), CONTROLLER_LISTENER: (controller_port, "PLAINTEXT")}
    for lname, spec in (extra_listeners or {}).items():
        key = lname.upper()
        if key in listeners:
            raise ValueError(f"listener {lname!r} is reserved")
        listeners[key] = spec
    advertised = {k: v for k, v in listeners.items() if k != CONTROLLER_LISTENER}
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": f"{node_id}@{HOST}:{controller_port}",
        "listeners": ",".join(f"{k}://{HOST}:{p}" for k, (p, _) in listeners.items()),
        "advertised.listeners": ",".join(f"{k}://{HOST}:{p}" for k, (p, _) in advertised.items()),
        "listener.security.protocol.map": ",".join(f"{k}:{proto}" for k, (_, proto) in listeners.items()),
        "controller.listener.names": CONTROLLER_LISTENER,
        "inter.broker.listener.name": BROKER_LISTENER,
        "log.dirs": str(data_dir / "logs"),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",
        **tuning_properties(),
        # Failover is bounded by the session timeout of the member that died; Kafka's floor of 6 s
        # is lowered here so a local instance may ask for less (the rendezvous' --session-timeout-ms).
        # A production cluster sets the same broker setting to allow it: docs/failover.md.
        "group.min.session.timeout.ms": "1000",
        "group.consumer.min.session.timeout.ms": "1000",
        "group.consumer.min.heartbeat.interval.ms": "500",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
    }
    props.update(extra_properties or {})
    return props


def resumed_properties(kept: Mapping[str, str], extra_properties: Mapping[str, str]) -> dict[str, str]:
    """A kept broker's server.properties with the current tuning, then `extra_properties` (the
    code's own extras and `$RDV_BROKER_PROPERTIES`), which win as they do at creation."""
    return {**kept, **tuning_properties(), **extra_properties}


# Where the broker keeps its data is the local broker's own: its status, reset and --fresh measure and
# delete <root>/logs. Moved elsewhere, a reset said "0 bytes deleted" and left the topics behind.
OWN_PROPERTIES = ("log.dirs", "log.dir", "metadata.log.dir")


def properties_from_text(text: str | None) -> dict[str, str]:
    """`key=value` pairs split like a shell line (quote a value with spaces), e.g. `$RDV_BROKER_PROPERTIES`;
    the data directories (OWN_PROPERTIES) are refused."""
    out: dict[str, str] = {}
    for item in _shell_words(text, PROPERTIES_ENV):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{PROPERTIES_ENV}: broker property {item!r} is not key=value")
        if key.strip() in OWN_PROPERTIES:
            raise ConfigError(f"{PROPERTIES_ENV}: {key.strip()} cannot be set: the local broker keeps its data in "
                              "its own directory (.cache/broker/<name>/logs), which status, reset and --fresh use")
        out[key.strip()] = value
    return out


def listener_addresses(props: Mapping[str, str]) -> dict[str, str]:
    """`{NAME: "host:port"}` of every listener in server.properties (inverse of `server_properties`)."""
    out: dict[str, str] = {}
    for item in props.get("listeners", "").split(","):
        name, sep, address = item.strip().partition("://")
        if not sep or ":" not in address:
            continue
        out[name.upper()] = address
    return out


def log_dir(props: Mapping[str, str]) -> Path | None:
    """The (first) data directory of a broker's server.properties; the KRaft metadata lives there too."""
    dirs = [d.strip() for d in props.get("log.dirs", props.get("log.dir", "")).split(",") if d.strip()]
    return Path(dirs[0]) if dirs else None


def read_cluster_id(data_dir: Path) -> str | None:
    """`cluster.id` from `<data_dir>/meta.properties` (written by `StorageTool format`); None if absent."""
    try:
        text = (data_dir / "meta.properties").read_text()
    except OSError:
        return None
    return parse_properties(text).get("cluster.id") or None


# ----- SASL/SCRAM ------------------------------------------------------------------------------------
SASL_LISTENER = "SASL"
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
_SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
_SCRAM_UNSAFE = set(',[]="\\') | {" ", "\t", "\n"}


def scram_format_arg(user: str, password: str, mechanism: str = "SCRAM-SHA-512") -> str:
    """The `StorageTool format --add-scram` value that creates `user` with `password` at format time."""
    if mechanism not in SCRAM_MECHANISMS:
        raise ValueError(f"SCRAM mechanism must be one of {', '.join(SCRAM_MECHANISMS)}, got {mechanism!r}")
    for what, value in (("user name", user), ("password", password)):
        if not value or _SCRAM_UNSAFE & set(value):
            # The value is never echoed: it may be the password.
            raise ValueError(f"SCRAM {what} must be non-empty without spaces or any of , [ ] = \" \\")
    return f"{mechanism}=[name={user},password={password}]"


def sasl_broker_options(
    user: str, password: str, *, mechanism: str = "SCRAM-SHA-512", listener: str = SASL_LISTENER
) -> dict[str, Any]:
    """`LocalBroker` / `ephemeral_broker` keyword arguments for an extra SASL_PLAINTEXT listener.

    The listener (`broker.listener("SASL")`) accepts only `mechanism`; `user` is created when the
    storage is formatted. The inter-broker and controller listeners stay PLAINTEXT, so no broker-side
    credentials are needed: the JAAS entry names the login module only.
    """
    prefix = f"listener.name.{listener.lower()}"
    return {
        "extra_listeners": {listener.upper(): "SASL_PLAINTEXT"},
        "extra_properties": {
            f"{prefix}.sasl.enabled.mechanisms": mechanism,
            f"{prefix}.{mechanism.lower()}.sasl.jaas.config": _SCRAM_LOGIN,
        },
        "format_args": ["--add-scram", scram_format_arg(user, password, mechanism)],
    }


def sasl_client_config(
    bootstrap: str, user: str, password: str, *, mechanism: str = "SCRAM-SHA-512"
) -> dict[str, str]:
    """librdkafka settings of a client of that listener."""
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def render_properties(props: Mapping[str, str]) -> str:
    """Java .properties text, one `key=value` a line (keys as given, values escaped)."""
    lines = ["# Written by services.localkafka at every fresh start (a resumed broker reuses it)."]
    lines += [f"{key}={_escape(value)}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def parse_properties(text: str) -> dict[str, str]:
    """Inverse of `render_properties` (enough for our own files and tests)."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = _unescape(value.strip())
    return out


def _unescape(value: str) -> str:
    """`_escape` undone in one pass, left to right: two replaces in a row read C:\\new (escaped
    C:\\\\new) back as C:\\ and a newline, or the other way round, as C:\\\\new."""
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], value)


def log4j2_properties(log_file: Path, request_log: Path | None = None) -> str:
    """log4j2 config: INFO to a size-rolled `log_file`, nothing on the console. With `request_log`,
    Kafka's request logger writes a line for every request the broker completes to that file
    (its DEBUG level: each request's header and fields, topics included but no records, its
    connection and times), for counting requests (bench/broker_requests.py); it costs the broker
    CPU, so only on demand."""
    pattern = str(log_file.with_name(log_file.name + ".%i"))
    lines = [
        "status = warn",
        "name = rendezvous-local-kafka",
        "appender.file.type = RollingFile",
        "appender.file.name = FILE",
        f"appender.file.fileName = {_escape(str(log_file))}",
        f"appender.file.filePattern = {_escape(pattern)}",
        "appender.file.layout.type = PatternLayout",
        "appender.file.layout.pattern = [%d] %p %m (%c)%n",
        "appender.file.policies.type = Policies",
        "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
        "appender.file.policies.size.size = 50MB",
        "appender.file.strategy.type = DefaultRolloverStrategy",
        "appender.file.strategy.max = 3",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.file.ref = FILE",
        "logger.request.name = kafka.request.logger",
    ]
    if request_log is None:
        lines.append("logger.request.level = WARN")
    else:
        lines += [
            "appender.requests.type = File",
            "appender.requests.name = REQUESTS",
            f"appender.requests.fileName = {_escape(str(request_log))}",
            "appender.requests.layout.type = PatternLayout",
            "appender.requests.layout.pattern = %d{UNIX_MILLIS} %m%n",  # epoch ms: when it completed
            "logger.request.level = DEBUG",
            "logger.request.additivity = false",
            "logger.request.appenderRef.requests.ref = REQUESTS",
        ]
    return "\n".join([*lines, ""])


def request_log_path(value: str | None) -> Path | None:
    """$RDV_BROKER_REQUEST_LOG as an absolute path (None when unset or empty); ConfigError if no
    file can be written there (log4j would only say so in the broker's own output)."""
    text = (value or "").strip()
    if not text:
        return None
    path = Path(text).expanduser().resolve()
    if path.is_dir():
        raise ConfigError(f"{REQUEST_LOG_ENV}={text}: a directory; name a file for the broker's request log")
    if not path.parent.is_dir():
        raise ConfigError(f"{REQUEST_LOG_ENV}={text}: {path.parent} is not a directory")
    return path


_ON, _OFF = {"", "on", "1", "true", "yes"}, {"off", "0", "false", "no"}


def switched_off(value: str | None, name: str = "the switch") -> bool:
    """An on-by-default switch of the local broker from the environment (RDV_BROKER_CDS,
    RDV_BROKER_WARMUP): off when it says off, 0, false or no; ConfigError unless it says either."""
    said = (value or "").strip().lower()
    if said not in _ON | _OFF:
        raise ConfigError(f"{name}: expected on or off, got {value!r}")
    return said in _OFF


def _shell_words(text: str | None, name: str) -> list[str]:
    try:
        return shlex.split(text or "")
    except ValueError as exc:  # e.g. an unclosed quote
        raise ConfigError(f"{name}: {exc}") from None
