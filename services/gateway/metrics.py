"""Prometheus metrics of the gateway. Labels are protocol, route and status: never a key, an id or a model
name a caller typed (an unknown model is a 404, not a new series)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
REPLY_PARTITIONS = Gauge(
    "rdv_gateway_reply_partitions", "Partitions of the replies topic this gateway owns (its return addresses)."
)
for _protocol in ("rest", "grpc"):
    IN_FLIGHT.labels(_protocol)
