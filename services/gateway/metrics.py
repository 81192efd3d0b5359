"""Prometheus metrics of the gateway. Labels are protocol, route and status: never a key, an id or a model
name a caller typed (an unknown model is a 404, not a new series)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from services.core.metrics import LATENCY_BUCKETS

CALLS = Counter(
    "rdv_gateway_requests_total",
    "Calls served, by protocol (rest, grpc), route (infer, model_metadata, ...) and status "
    "(the HTTP code; for gRPC the status code name).",
    ["protocol", "route", "status"],
)
LATENCY = Histogram(
    "rdv_gateway_request_seconds",
    "Time from a call's arrival to its response, by protocol, route and status.",
    ["protocol", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("rdv_gateway_in_flight", "Calls being served now, by protocol.", ["protocol"])
ROWS_IN_FLIGHT = Gauge("rdv_gateway_rows_in_flight", "Rows (Kafka requests) waiting for their answers now.")
REJECTED = Counter(
    "rdv_gateway_rejected_total",
    "Calls refused or failed, by protocol and reason (invalid, not_found, unauthenticated, "
    "rate_limited, timeout, error, unavailable, broker, too_large, media_type, cross_origin, client_closed, "
    "body_too_slow, bad_request, no_route, internal, ui_viewers).",
    ["protocol", "reason"],
)
ANSWERS = Counter(
    "rdv_gateway_answers_total",
    "Rows answered, by the answer's status (OK, FALLBACK, TIMEOUT, ERROR) and target kind "
    "(schedule, model).",
    ["status", "target"],
)
API_KEYS = Gauge("rdv_gateway_api_keys", "API keys in force (0: none, every caller is let in); follows "
                 "--api-keys-file as it changes.")
API_KEY_RELOADS = Counter(
    "rdv_gateway_api_key_reloads_total",
    "Changes of --api-keys-file read, by result: applied (its keys now in force) or refused (the keys before stay "
    "in force: the file held no key, a line that is no digest, or could not be read).",
    ["result"],
)
ROWS_SENT_AGAIN = Counter(
    "rdv_gateway_rows_sent_again_total",
    "Rows sent again under their id because their reply partition moved to another gateway (one joining the "
    "reply group); the rendezvous answers the repeat.",
)
REPLY_PARTITIONS = Gauge(
    "rdv_gateway_reply_partitions", "Partitions of the replies topic this gateway owns (its return addresses)."
)


class _CountingClient(Protocol):
    undecodable_answers: int
    foreign_answers: int


class ClientCounts(Collector):
    """Counts the Kafka client keeps itself (services/client/client.py), read at each scrape: its
    reading thread counts them without a lock or a metric of its own."""

    UNDECODABLE = "rdv_gateway_undecodable_answers"
    UNDECODABLE_HELP = ("Records on this gateway's reply partitions that are no Answer it can read (another writer "
                        "on the replies topic, or a writer schema it does not know); the call waiting for the "
                        "request such a record's key names fails at once (503) instead of waiting out its deadline.")

    FOREIGN = "rdv_gateway_foreign_answers"
    FOREIGN_HELP = ("Answers on this gateway's reply partitions under a request id it waits on that answer other "
                    "inputs than it sent (another client reading its partitions and reusing the id): not taken.")

    def __init__(self) -> None:
        self._client: _CountingClient | None = None

    def follow(self, client: _CountingClient) -> None:
        """Export `client`'s counts from now on (the gateway's one client)."""
        self._client = client

    def collect(self) -> Iterator[CounterMetricFamily]:
        client = self._client
        yield CounterMetricFamily(self.UNDECODABLE, self.UNDECODABLE_HELP,
                                  value=client.undecodable_answers if client is not None else 0)
        yield CounterMetricFamily(self.FOREIGN, self.FOREIGN_HELP,
                                  value=client.foreign_answers if client is not None else 0)

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.UNDECODABLE, self.UNDECODABLE_HELP)
        yield CounterMetricFamily(self.FOREIGN, self.FOREIGN_HELP)


CLIENT_COUNTS = ClientCounts()
REGISTRY.register(CLIENT_COUNTS)

for _protocol in ("rest", "grpc"):
    IN_FLIGHT.labels(_protocol)
