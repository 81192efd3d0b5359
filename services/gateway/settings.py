"""Settings of one gateway process: where it listens, whom it lets in, how long it waits."""

from __future__ import annotations

import logging
import re
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from services.control.schedule import check_schedule_name
from services.core.errors import ConfigError
from services.core.settings import MAX_PORT, KafkaSettings, not_a_readable_file, setting
from services.core.urls import check_listen_address, checked_http_url
from services.gateway.auth import ApiKeys

log = logging.getLogger(__name__)

_WHICH_ADDRESS = "give an address (0.0.0.0: every interface; 127.0.0.1: this machine)"
# The lowest positive --rate-limit / --rate-limit-rows: one a day (a slower one waited past any clock).
LEAST_RATE = 1 / 86_400


@dataclass(frozen=True)
class GatewaySettings(KafkaSettings):
    """The Open Inference Protocol (REST and gRPC) in front of the rendezvous."""

    # An empty address bound every interface without a word (a probe): said, as for --metrics-host.
    http_addr: str = setting("0.0.0.0", "Address the REST API (and /ui, /metrics, /healthz, /readyz) binds.",
                             if_empty=_WHICH_ADDRESS)
    http_port: int = setting(8080, "Port of the REST API (0 = off).", maximum=MAX_PORT)
    grpc_addr: str = setting("0.0.0.0", "Address the gRPC API binds.", if_empty=_WHICH_ADDRESS)
    grpc_port: int = setting(8081, "Port of the gRPC API (0 = off).", maximum=MAX_PORT)
    metrics_port: int = setting(
        0, "Extra plain-HTTP port for /metrics, /healthz and /readyz (0 = only on the REST port).", maximum=MAX_PORT,
    )
    # Given blank (RDV_TLS_CERT=$CERT with $CERT unset), each was read as not given: the gateway
    # served plain HTTP and gRPC, or let every caller in, without a word (a review).
    tls_cert: str = setting("", "PEM certificate file: serve REST and gRPC over TLS (with --tls-key).",
                            if_empty="name the certificate file (leave it out to serve without TLS)")
    tls_key: str = setting("", "PEM private key file of --tls-cert.",
                           if_empty="name the key file (leave it out to serve without TLS)")
    api_keys_file: str = setting(
        "",
        "File of accepted API keys, one `name:sha256-hex-of-the-key` (or just the hex) a line; callers "
        "send `Authorization: Bearer <key>`. Read again every 5 s: keys added or removed count without a restart "
        "(a file that no longer reads as keys is refused, the keys before stay). Not given (and no "
        "--api-key-hashes) = no authentication.",
        if_empty="name the file of keys (leave it out to let every caller in)",
    )
    api_key_hashes: tuple[str, ...] = setting(
        (), "Accepted API keys as `name:sha256-hex` entries (comma-separated), besides --api-keys-file.",
        # Given blank (' , '), read as no keys, it let every caller in.
        if_empty="it holds no key (leave it out to let every caller in)",
    )
    allowed_hosts: tuple[str, ...] = setting(
        (), "Host names (comma-separated) under which a web page may call the gateway, besides localhost and "
        "IP addresses: a page under any other name is refused (403), since any site can point a name of its "
        "own at this machine (DNS rebinding). Clients that are not browsers are not affected.",
    )
    rate_limit: float = setting(
        0.0, "Inference calls per second each API key may make, sustained, whatever their rows (see "
        "--rate-limit-rows) (0 = unlimited; else at least one a day, 1/86400); over it: 429. Each gateway's "
        "own: N replicas let a key make N times it.",
    )
    rate_burst: int = setting(50, "Inference calls a key may make at once above --rate-limit (the bucket size).",
                                 minimum=1)
    rate_limit_rows: float = setting(
        0.0, "Rows (Kafka requests, what the models score) per second each API key may send, sustained, besides "
        "--rate-limit's calls: a call of 1,000 rows spends 1,000 (0 = unlimited; else at least 1/86400); "
        "over it: 429.",
    )
    rate_burst_rows: int = setting(
        10_000, "Rows a key may send at once above --rate-limit-rows (the bucket size); at least --max-rows.",
    )
    schedule: str = setting("default", "Name of the schedule the rendezvous answers with: the OIP model name of it.")
    answer_grace_ms: int = setting(
        2000,
        "How long after a request's deadline to wait for the rendezvous' answer before replying 503 "
        "(the rendezvous answers TIMEOUT by the deadline; missing that, it is not running) (ms).", minimum=1,
    )
    grpc_reply_margin_ms: int = setting(
        20, "Of a gRPC call's deadline, what is kept for its answer's way back to the caller (ms): the rendezvous "
        "decides that much sooner (at most a fifth of the deadline; and 1% sooner, for the grpc-timeout header's "
        "rounding up), so that a FALLBACK or TIMEOUT reaches the caller before it gives up with a bare "
        "DEADLINE_EXCEEDED.", minimum=0,
    )
    comparison_grace_ms: int = setting(
        10_000,
        "Calls to a single model wait for the comparison record, written once every model reported or "
        "the rendezvous' --linger-ms after the deadline passed: how long past the deadline to wait (ms).", minimum=1,
    )
    max_budget_ms: int = setting(60_000, "Longest deadline a call gets (ms); a longer one is shortened to this.",
                                 minimum=1)
    max_rows: int = setting(1000, "Most rows (Kafka requests) one inference call may carry; more is refused (400).",
                            minimum=1)
    max_features: int = setting(
        1024, "Most features (columns of an [n, k] input, or feature inputs) one call may carry; more is refused "
        "(400) before its data is read: a call costs at most --max-rows x this many values.", minimum=1,
        maximum=1_000_000,
    )
    max_in_flight: int = setting(
        20_000, "Most rows waiting for answers at once; calls beyond it are refused with 503 (overloaded).", minimum=1,
    )
    max_body_bytes: int = setting(8 * 1024 * 1024, "Largest request body (REST and gRPC), in bytes.", minimum=1)
    max_connections: int = setting(
        1000, "Most HTTP connections open (idle keep-alive ones count: at the limit every request gets 503) and "
        "most gRPC calls at once (RESOURCE_EXHAUSTED beyond). Bodies being read take at most this times "
        "--max-body-bytes of memory.", minimum=1,
    )
    drain_timeout_s: float = setting(
        10.0,
        "On SIGTERM: stop taking calls (readiness 503), wait this long for the calls in flight, then "
        "fail what is left with 503 and exit (s).",
    )
    reply_group: str = setting(
        "", "Consumer group of the gateways on the replies topic (default: <prefix>gateway): each "
        "partition has one reader, so every gateway has return addresses of its own.", identifier=True,
    )
    comparison_url: str = setting(
        "",
        "The comparison service's metrics endpoint, e.g. http://comparison:9104/metrics: the /ui page "
        "shows its figures (empty: the page says it has no source).",
    )
    ui: bool = setting(True, "Serve the live comparison page at /ui (public, like /metrics).")
    ui_max_viewers: int = setting(
        32, "Most /ui/events streams open at once (beyond: 503); each ends after 5 minutes and the page "
        "reconnects, so idle viewers cannot hold the --max-connections slots. Must be below --max-connections.",
        minimum=1,
    )
    instance: str = setting(
        "", "Name of this gateway in logs and Kafka client ids (default: the host name).", identifier=True,
    )

    def validate(self) -> None:
        check_schedule_name(self.schedule, "--schedule")
        for host in self.allowed_hosts:
            if not _HOST_NAME.fullmatch(host):  # compared with a page's host name: it would never match
                raise ConfigError(f"--allowed-hosts: {host[:80]!r} is not a host name (no scheme, port, path or "
                                  "wildcard; e.g. serving.example.com)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key),
                           ("--api-keys-file", self.api_keys_file)):
            problem = not_a_readable_file(path) if path else None
            if problem:
                raise ConfigError(f"{flag} {path}: {problem}")
        if self.tls_cert:
            _check_tls_pair(self.tls_cert, self.tls_key)
            _warn_if_others_read(self.tls_key)
        ApiKeys.load(self.api_keys_file, self.api_key_hashes)  # its one-line error now, not after Kafka
        if self.comparison_url:
            _check_comparison_url(self.comparison_url)
        if self.http_port <= 0 and self.grpc_port <= 0:
            raise ConfigError("nothing to serve: both --http-port and --grpc-port are 0")
        check_listen_address(self.http_addr, "--http-addr")
        check_listen_address(self.grpc_addr, "--grpc-addr")
        _check_ports_apart({"--http-port": (self.http_addr, self.http_port),
                            "--grpc-port": (self.grpc_addr, self.grpc_port),
                            "--metrics-port": (self.http_addr, self.metrics_port)})
        if self.rate_limit_rows < 0:
            raise ConfigError(f"--rate-limit-rows must be >= 0, got {self.rate_limit_rows:g}")
        for flag, rate in (("--rate-limit", self.rate_limit), ("--rate-limit-rows", self.rate_limit_rows)):
            if 0 < rate < LEAST_RATE:  # a wait past any clock: 1e-320 made Retry-After inf, and the call a 500
                raise ConfigError(f"{flag} {rate:g} is below one a day ({LEAST_RATE:.3g}/s); 0 turns the limit off")
        if self.rate_limit_rows > 0 and self.rate_burst_rows < self.max_rows:  # a call of --max-rows never passed
            raise ConfigError(f"--rate-burst-rows ({self.rate_burst_rows}) must be at least --max-rows "
                              f"({self.max_rows}): a call of that many rows could never pass")
        if self.max_in_flight < self.max_rows:  # a call of more rows than that was "overloaded" forever
            raise ConfigError(f"--max-in-flight ({self.max_in_flight}) must be at least --max-rows "
                              f"({self.max_rows}): a call of that many rows could never be sent")
        if self.drain_timeout_s < 0:
            raise ConfigError(f"--drain-timeout-s must be >= 0, got {self.drain_timeout_s}")
        if self.ui and self.ui_max_viewers >= self.max_connections:
            raise ConfigError(f"--ui-max-viewers ({self.ui_max_viewers}) must be below --max-connections "
                              f"({self.max_connections}): /ui viewers could hold every connection (or --no-ui)")

    def reply_group_id(self) -> str:
        return self.reply_group or f"{self.topic_prefix}gateway"

    def models_topic_name(self) -> str:
        return self.topics().models

    def instance_name(self) -> str:
        return self.instance or socket.gethostname()


_ANY_ADDRESS = ("0.0.0.0", "::", "")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"  # '_' too: browsers take it (my_gateway)
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def _check_comparison_url(url: str) -> None:
    """An http(s) URL with a host, no credentials and no query: the public /ui page shows where its
    figures come from, and a Prometheus endpoint needs none (a review found user:password@ on the
    page, a bare `comparison:9104/metrics` failing only there, and ?token=... shown)."""
    checked_http_url(url, "--comparison-url", refuse_credentials="the public /ui page names its source; the "
                     "comparison service's /metrics needs none")


def _check_ports_apart(ports: dict[str, tuple[str, int]]) -> None:
    """Two listeners on one port fail only once Kafka has been reached: say it now."""
    taken: dict[int, tuple[str, str]] = {}
    for flag, (addr, port) in ports.items():
        if port <= 0:
            continue
        other = taken.get(port)
        if other is not None and (other[1] == addr or {other[1], addr} & set(_ANY_ADDRESS)):
            raise ConfigError(f"{other[0]} and {flag} are both {port}: each listener needs its own port")
        taken[port] = (flag, addr)


class _Encrypted(Exception):
    """The key asks for a passphrase."""


def _no_passphrase() -> str:
    # Without a callback OpenSSL asks for it on the terminal: a service would wait there for good.
    raise _Encrypted


def _warn_if_others_read(key: str) -> None:
    """Warn of a private key every user of the host may read (accepted without a word before, a
    review). Warned, not refused: a Kubernetes Secret is mounted 0644 unless told otherwise (the
    chart mounts its secrets 0440, `secretFileMode`)."""
    mode = stat.S_IMODE(Path(key).stat().st_mode)
    if mode & stat.S_IROTH:
        log.warning("--tls-key %s is readable by every user of this host (mode %04o): any of them can impersonate "
                    "the gateway; chmod o-r %s", key, mode, key)


def _check_tls_pair(cert: str, key: str) -> None:
    """ConfigError unless `cert` and `key` are a PEM certificate and its private key (a wrong file
    otherwise surfaces as a failure to bind, or a traceback, once Kafka has been reached)."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        raise ConfigError(f"--tls-key {key} is encrypted with a passphrase, which the gateway cannot be given: "
                          f"use the key unencrypted (openssl pkey -in {key} -out plain.pem), readable by the gateway "
                          "alone") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its key ({exc})") from None
