"""Making a librdkafka client and waiting for a broker: a configuration librdkafka refuses is one
line that quotes no value, and a broker that does not answer, refuses the credentials, fails the
TLS handshake or advertises an address unreachable from here is said in one line, as soon as it
is known (`wait_for_broker`). Every wait of a command honours its --connect-timeout-s."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from services.core import kafka_config, kafka_logs
from services.core.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    StoppedWaiting,
)
from services.core.kafka.error_kinds import kafka_error, kafka_message
from services.core.runtime import stop_requested

log = logging.getLogger(__name__)
T = TypeVar("T")


# librdkafka's own log lines go through Python logging (not straight to stderr), so the
# services' log format and level apply to them too; with its error events, one line per kind of
# event per client per period (kafka_logs).
LIBRDKAFKA_LOG = kafka_logs.LIBRDKAFKA_LOG


def new_client(kind: Callable[[dict[str, Any]], T], config: dict[str, Any]) -> T:
    """A librdkafka client; a configuration it refuses is a `ConfigError` that quotes no value."""
    try:
        return kind(config)
    except (KafkaException, ValueError, TypeError) as exc:
        text = kafka_message(exc) if isinstance(exc, KafkaException) else str(exc)
        raise ConfigError(f"{kafka_config.FLAG}: librdkafka refused the configuration: "
                          f"{kafka_config.describe_refusal(text, config)}") from None


# How long to wait for a broker when the caller names no timeout: --connect-timeout-s of the
# command (`set_connect_timeout`), so every wait of a command honours the one flag.
_connect_timeout_s = 15.0


def set_connect_timeout(seconds: float) -> None:
    global _connect_timeout_s
    _connect_timeout_s = seconds


def connect_timeout() -> float:
    return _connect_timeout_s


def _log_client_error(err: KafkaError) -> None:
    # librdkafka reports transient broker trouble here and retries by itself.
    level = logging.ERROR if err.fatal() else logging.WARNING
    kafka_logs.CLIENT_LOG.log(level, "kafka client: %s", err.str())  # as its error events (kafka_logs)


def admin(config: Mapping[str, Any]) -> AdminClient:
    return new_client(AdminClient, kafka_logs.wired(dict(config)))


class _QuietLog:
    """librdkafka's log lines while waiting for the broker, at DEBUG: the wait reports its outcome
    once. Each line is handed to `seen` too (some failures reach its log alone, not error_cb)."""

    def __init__(self, seen: Callable[[str], None] = lambda _line: None) -> None:
        self._seen = seen

    def log(self, _level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        LIBRDKAFKA_LOG.log(logging.DEBUG, msg, *args, **kwargs)
        self._seen(msg % args if args else msg)


# Short first metadata attempts, so a refused login (reported through error_cb, served between
# attempts) ends the wait in about a second; then 2 s attempts as a slow link may need.
_ATTEMPT_TIMEOUTS = (0.25, 0.5, 1.0)
_ATTEMPT_TIMEOUT_MAX = 2.0


def _without_secrets(text: str, config: Mapping[str, Any]) -> str:
    """librdkafka's `text` with no value of a setting outside the allow-list, should it quote one."""
    masked = kafka_config.describe_refusal(text, config)
    for key, value in config.items():
        if key not in kafka_config.SHOWN and isinstance(value, str) and len(value) >= 3:
            masked = masked.replace(value, kafka_config.MASK)
    return masked


# Client errors that end the wait for a broker at once, with what to say: refused credentials, or
# a certificate we do not trust, will not mend by retrying until the timeout.
_FINAL_ERRORS = {
    KafkaError._AUTHENTICATION:
        "Kafka refused the credentials at {bootstrap}: {reason}; check sasl.username/sasl.password",
    KafkaError._SSL:
        "TLS handshake with {bootstrap} failed: {reason}; is ssl.ca.location the CA that signed the broker's "
        "certificate?",
}


# A client speaking SASL to a listener without it (the broker's own answer): said at once, not as
# refused credentials (a review).
_NO_SASL_THERE = re.compile(r"Request not valid in current SASL state|supported mechanisms:\s*(\(|$)")
# What a protocol mismatch looks like from the client, said with the timeout's error: not final,
# since a proxy or a broker restarting closes connections so too (a TLS wait ended at once on a
# proxy's first closes, though the broker came 4 s later: the review of a first form). A TLS
# handshake closed (librdkafka's own guess: a plaintext listener), or a plaintext client's first
# request closed (what a TLS listener does).
_MISMATCH_HINTS = {
    "PLAINTEXT broker listener?": ("closed the TLS handshake, as a plaintext listener does", {
        "ssl": "PLAINTEXT", "sasl_ssl": "SASL_PLAINTEXT"}),
    "in state APIVERSION_QUERY": ("closed each connection at the client's first request, as a TLS listener does "
                                  "to a plaintext client", {"plaintext": "SSL", "sasl_plaintext": "SASL_SSL"}),
}
WAIT_SAID_AFTER_S = 5.0  # a wait for the broker longer than this is logged once (at start-up, said)


def _final_error(err: KafkaError, bootstrap: Any) -> str | None:
    """What to say of a client error that ends the wait for a broker at once, or None."""
    reason = err.str()
    if err.code() == KafkaError._AUTHENTICATION and _NO_SASL_THERE.search(reason):
        return (f"the listener at {bootstrap} does not use SASL ({reason}): check security.protocol "
                "(PLAINTEXT or SSL there) and the port")
    if err.code() == KafkaError._AUTHENTICATION and "Unsupported SASL mechanism" in reason:
        # The password was not even sent: it was blamed (a review).
        return f"the broker at {bootstrap} does not offer the SASL mechanism asked for ({reason}): check sasl.mechanism"
    template = _FINAL_ERRORS.get(err.code())
    return template.format(bootstrap=bootstrap, reason=reason) if template else None


def _mismatch_hint(reason: str, protocol: str) -> str | None:
    """A hint for the timeout's error, if `reason` looks like a protocol mismatch for `protocol`."""
    for sign, (what, instead) in _MISMATCH_HINTS.items():
        if sign in reason and protocol.lower() in instead:
            return f"it {what}: security.protocol={instead[protocol.lower()]}?"
    return None


# How a connection's failure reads, in error_cb's text and in librdkafka's log lines.
_CONNECTION_FAILED = ("Disconnected", "Connect to", "handshake failed")


# A connection to a broker the cluster advertised failing: librdkafka names such a broker
# `host:port/<its id>` (a bootstrap address is `host:port/bootstrap`).
_ADVERTISED_FAILED = re.compile(r"(?:^|\s)([^\s/]+:\d+)/\d+: (?:Connect to|Disconnected)")


class _LatestFailure:
    """The hint of the latest connection failure seen (None: it looked like no mismatch): kept for
    the whole wait, a few handshakes a proxy closed told a TLS client whose broker was then down
    to use PLAINTEXT (a review). `advertised`: an address the cluster advertised that failed (in
    librdkafka's lines, or a connection of ours after its metadata came)."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.hint: str | None = None
        self.advertised: str | None = None

    def see(self, text: str) -> None:
        if any(sign in text for sign in _CONNECTION_FAILED):
            # A connection not even made (the listener gone) clears the hint; another close,
            # worded without the sign, does not (a CI run lost the hint to one, under load).
            hint = _mismatch_hint(text, self.protocol)
            if hint is not None or "Connect to" in text:
                self.hint = hint
            found = _ADVERTISED_FAILED.search(text)
            if found:
                self.advertised = found.group(1)


def wait_for_broker(config: Mapping[str, Any], timeout: float | None = None) -> Any:
    """Return cluster metadata once a broker answers; `BrokerUnavailable` after `timeout`
    (default: the command's --connect-timeout-s, see `set_connect_timeout`); `StoppedWaiting`
    as soon as the process is asked to stop (a service's SIGTERM would wait out the timeout).

    A broker that refuses the client's SASL credentials ends the wait at once with `BrokerError`
    (librdkafka itself would retry until the timeout). Other client errors are expected while a
    broker starts: they are logged at DEBUG (fatal ones at ERROR) and summed up in the final error.
    """
    timeout = _connect_timeout_s if timeout is None else timeout
    bootstrap = config.get("bootstrap.servers")
    final: list[str] = []  # what to say of errors retrying cannot mend (`_final_error`)
    latest = _LatestFailure(str(config.get("security.protocol", "plaintext")))  # for the timeout's error
    caller_cb = config.get("error_cb")

    def on_error(err: KafkaError) -> None:
        said = _final_error(err, bootstrap)
        if said is not None:
            final.append(_without_secrets(said, config))
        elif err.fatal():
            _log_client_error(err)
        else:
            latest.see(err.str())
            log.debug("kafka client, waiting for the broker: %s", err.str())
        if callable(caller_cb):
            caller_cb(err)

    merged: dict[str, Any] = {**config, "error_cb": on_error, "logger": _QuietLog(latest.see)}
    client = new_client(AdminClient, merged)
    started = time.monotonic()
    deadline = started + timeout
    last = "no answer"
    attempt = 0
    said_waiting = False
    while True:
        step = _ATTEMPT_TIMEOUTS[attempt] if attempt < len(_ATTEMPT_TIMEOUTS) else _ATTEMPT_TIMEOUT_MAX
        attempt += 1
        try:
            metadata = client.list_topics(timeout=min(step, max(0.1, deadline - time.monotonic())))
            unreachable = _advertised_unreachable(metadata, max(0.2, min(2.0, deadline - time.monotonic())))
            if unreachable is None:
                return metadata
            latest.advertised, last = unreachable, "its metadata came"
        except KafkaException as exc:
            err = kafka_error(exc)
            last = err.str() if err is not None else str(exc)
        client.poll(0)  # serves error_cb (and log lines) queued during the attempt
        if stop_requested():
            raise StoppedWaiting(f"asked to stop while waiting for a Kafka broker at {bootstrap!r}")
        if final:
            raise BrokerError(final[0])
        now = time.monotonic()
        if now >= deadline:
            # The bootstrap answered, and the address it advertises (another one) did not.
            if latest.advertised not in (None, *str(bootstrap).split(",")) and latest.hint is None:
                said = ADVERTISED_UNREACHABLE.format(bootstrap=bootstrap, unreachable=latest.advertised)
                raise BrokerUnavailable(f"{said} ({last})")
            mismatch = f" ({latest.hint})" if latest.hint else ""
            raise BrokerUnavailable(
                f"no Kafka broker answered at {bootstrap!r} within {timeout:g}s "
                f"({last}){mismatch}; start one with `rendezvous broker start`, or check --bootstrap (and, for a "
                "cluster that wants TLS or SASL, --kafka-config security.protocol=...)"
            )
        if not said_waiting and now - started >= WAIT_SAID_AFTER_S:
            said_waiting = True  # once: the service's log was silent until the timeout's error (a review)
            log.warning("no Kafka broker answered at %r for %.0fs yet (%s); waiting up to %gs", bootstrap,
                        now - started, last, timeout)


ADVERTISED_UNREACHABLE = ("the broker at {bootstrap} answered, but advertises {unreachable}, which does not answer "
                          "from here: check its advertised.listeners (a container's or a NAT's inside address?)")
# Advertised broker addresses this process has reached once: asked again of none (a command's waits
# for the broker are several, a service's one per client).
_REACHED: set[tuple[str, int]] = set()


def _advertised_unreachable(metadata: Any, timeout_s: float) -> str | None:
    """The addresses the cluster advertises, if not one of them takes a connection from here; None
    when one does (or it advertises none). A broker reached at its bootstrap address but advertising
    one unreachable from here (advertised.listeners naming a container's address, or a NAT's
    inside one) failed every later call slowly, in librdkafka's words: 'Failed to get watermark
    offsets: Local: Broker handle destroyed', a topic's creation timed out after 60 s (a review)."""
    addresses = sorted({(str(b.host), int(b.port)) for b in getattr(metadata, "brokers", {}).values()})
    if not addresses or any(address in _REACHED for address in addresses):
        return None
    failed = []
    for host, port in addresses:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                _REACHED.add((host, port))
                return None
        except OSError as err:
            failed.append(f"{host}:{port} ({err.strerror or type(err).__name__})")
    return ", ".join(failed)
