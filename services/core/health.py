"""Liveness, readiness and metrics over HTTP, one port per service process.

    GET /metrics   Prometheus text (the default registry)
    GET /healthz   200 while the process runs its loop; 503 with the reason once a service's poll
                   loop has stopped turning (a deadlock, a call that never returns) while the
                   broker answers: restarting it is the cure (waiting for the broker is not)
    GET /readyz    200 when it can do its job (broker reachable, partitions assigned; a stream
                   service the group gave none is a standby, 200 with "standby: no partitions
                   assigned"), 503 with the reason otherwise (e.g. while the broker is down)

`BrokerHealth` follows librdkafka's own signals: "all brokers down" marks the broker
unreachable; a transaction committed, an assignment, or a metadata request the skeleton sends
every few seconds while it is marked so marks it back. Records read do not: a batch fetched
before an outage may be read after the mark, and a quiet topic brings none after it.
The shared skeleton adds the
group's: losing the partitions (a session that timed out, mostly because the coordinator went
away) marks it unreachable and the next assignment reachable, because librdkafka reports "all
brokers down" once per outage and a batch fetched before it would otherwise mark it back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confluent_kafka import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from services.core import kafka_logs
from services.core.errors import ConfigError
from services.core.redaction import mask

log = logging.getLogger(__name__)

READY = Gauge("rdv_ready", "1 when the service can do its job (broker reachable, partitions assigned or a standby).")
BROKER_UP = Gauge("rdv_broker_reachable", "1 when the Kafka cluster answers this process.")
# Unknown (NaN: no alert compares true) until a service asks: a model worker's endpoint answers
# while it loads its model, and a 0 then paged RdvBrokerUnreachable for a load of a minute (a review).
BROKER_UP.set(float("nan"))

Readiness = Callable[[], tuple[bool, str]]  # also liveness: (ok, the reason when not)


def always_alive() -> tuple[bool, str]:
    return True, "ok"


class BrokerHealth:
    """Whether the cluster answers, from librdkafka's error events and our successes."""

    # A Kafka call blocked longer than this counts as "broker unreachable" for readiness.
    BLOCKED_AFTER_S = 2.0

    def __init__(self, reached: bool = True) -> None:
        """`reached=False`: no broker has answered yet (a service starting), which is said as
        such, and counts as unreachable until `mark_up`: a service started in an outage was
        'waiting for a partition assignment' with rdv_broker_reachable 1 (a review)."""
        self._down_since: float | None = None if reached else time.monotonic()
        self._connecting = not reached
        # Per thread: a commit ending on one thread must not clear another's mark (a takeover's scan).
        self._blocked_since: dict[int, float] = {}
        self._lock = threading.Lock()
        BROKER_UP.set(1 if reached else 0)

    @contextmanager
    def blocking(self) -> Iterator[None]:
        """Wrap a call that may block while the broker is away (some librdkafka calls ignore
        their timeout then, e.g. send_offsets_to_transaction): readiness, answered from another
        thread, turns false once it has blocked for BLOCKED_AFTER_S."""
        thread = threading.get_ident()
        self._blocked_since[thread] = time.monotonic()
        try:
            yield
        finally:
            self._blocked_since.pop(thread, None)

    def error_cb(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            with self._lock:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    BROKER_UP.set(0)

    def mark_up(self) -> None:
        if self._down_since is not None:
            with self._lock:
                down_since, self._down_since = self._down_since, None
                connecting, self._connecting = self._connecting, False
                BROKER_UP.set(1)
            if down_since is not None and not connecting:
                # What the clients held back meanwhile, then the news; a later outage's first
                # line is logged as it comes (kafka_logs).
                kafka_logs.flush()
                log.info("broker reachable again after %.1fs", time.monotonic() - down_since)

    def mark_down(self) -> None:
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                BROKER_UP.set(0)

    def _blocked_for(self) -> float:
        since = min(self._blocked_since.values(), default=None)  # one C call: no other thread runs meanwhile
        return 0.0 if since is None else time.monotonic() - since

    @property
    def marked_down(self) -> bool:
        """Marked unreachable (by "all brokers down" or a lost group), whatever is blocked."""
        return self._down_since is not None

    @property
    def up(self) -> bool:
        return self._down_since is None and self._blocked_for() < self.BLOCKED_AFTER_S

    def describe(self) -> str:
        if self._down_since is not None and self._connecting:
            return f"connecting to the broker for {time.monotonic() - self._down_since:.0f}s"
        if self._down_since is not None:
            return f"broker unreachable for {time.monotonic() - self._down_since:.0f}s"
        if self._blocked_for() >= self.BLOCKED_AFTER_S:
            return f"broker unreachable: a commit has waited {self._blocked_for():.0f}s for it"
        return "broker reachable"


def _handler(readiness: Readiness, liveness: Readiness) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                # Each scrape says whether the service is ready (the gauge moved only when
                # something asked /readyz: where nothing probes, as under Compose, it stayed 0).
                READY.set(1 if readiness()[0] else 0)
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif self.path.startswith("/healthz"):
                alive, reason = liveness()
                self._send(200 if alive else 503, (mask(reason) + "\n").encode(), "text/plain")
            elif self.path.startswith("/readyz"):
                ready, reason = readiness()
                READY.set(1 if ready else 0)
                self._send(200 if ready else 503, (mask(reason) + "\n").encode(), "text/plain")
            else:
                self._send(404, b"try /metrics, /healthz or /readyz\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            return  # scrapes every few seconds would drown the service's own log

    return Handler


def serve_http(
    port: int, readiness: Readiness, addr: str, liveness: Readiness = always_alive
) -> ThreadingHTTPServer | None:
    """Start the endpoint in a daemon thread (port 0 = off). Returns the server to shut down."""
    if port <= 0:
        return None
    try:
        server = ThreadingHTTPServer((addr, port), _handler(readiness, liveness))
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics/health on {addr}:{port}: {exc.strerror}") from None
    except (TypeError, UnicodeError) as exc:  # a host name that cannot be encoded (`a..ü`)
        raise ConfigError(f"cannot serve metrics/health on {addr!r}:{port}: {exc}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="rdv-http", daemon=True).start()
    log.info("metrics and health on http://%s:%d/ (/metrics /healthz /readyz)", addr, port)
    return server
