"""The settings the project's clients start from: producer and consumer defaults, and the
delivery and transaction timeouts a service sets unless its --kafka-config names them (the
user's setting always wins)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

PRODUCER_DEFAULTS: dict[str, Any] = {
    # Serving favours latency: send at once, but let librdkafka batch what piles up meanwhile.
    "linger.ms": 1,
    "acks": "all",
    "enable.idempotence": True,
    "compression.type": "lz4",
    # Java's partitioner, so keys land where a Java/Go client would put them.
    "partitioner": "murmur2_random",
    # As the consumers (and Java's clients): a lone small record is never held back by Nagle.
    "socket.nagle.disable": True,
}
# One setting under two names in librdkafka: a record's whole time to be delivered.
DELIVERY_TIMEOUT_KEYS = ("message.timeout.ms", "delivery.timeout.ms")
# What services give records on the serving path (scores, requests, at-least-once outputs): a
# minute, past any deadline such a record can still meet, yet longer than a broker restart takes
# (records queued during a 30 s outage are delivered, not failed and done again).
SERVING_DELIVERY_TIMEOUT_MS = 60_000


MAX_TIMEOUT_MS = 2**31 - 1  # the most librdkafka takes for a timeout
LIBRDKAFKA_TRANSACTION_TIMEOUT_MS = 60_000  # transaction.timeout.ms when none is given
# Timeouts librdkafka refuses in a transactional producer beyond its transaction's (+ this, ms).
_BOUND_BY_TRANSACTION = {"message.timeout.ms": 0, "delivery.timeout.ms": 0, "socket.timeout.ms": 100}


# How long librdkafka lets a topic missing from the metadata exist before it fails the records
# to it (topic.metadata.propagation.max.ms, 30 s by default, counted from when the client first
# learnt of the topic): for outputs checked at start, a topic missing is one deleted meanwhile.
OUTPUTS_CHECKED_PROPAGATION_MS = 1_000


def outputs_checked_at_start(config: Mapping[str, Any]) -> dict[str, Any]:
    """The producer setting for outputs whose topics the service checked at start, unless
    `config` (a --kafka-config) names it. A model worker whose scores topic was deleted went on
    for up to 30 s, its readiness flapping ('broker unreachable') as every commit's flush waited
    on records the broker refused, then stopped with librdkafka's 'Unknown topic' (a review)."""
    return unless_given(config, {"topic.metadata.propagation.max.ms": OUTPUTS_CHECKED_PROPAGATION_MS})


def delivery_timeout(config: Mapping[str, Any], ms: int) -> dict[str, Any]:
    """The producer setting for a delivery timeout of `ms`, or none if `config` (a --kafka-config)
    names one itself: it wins. Why services shorten librdkafka's 300 s: a record later than its
    use (a reply, a score, a request past its deadline) serves no one, and a client left without a
    partition's leader by a broker restart (librdkafka #5430) is found, and replaced, only at its
    first timeout (Producer.timed_out)."""
    return unless_given(config, {"message.timeout.ms": min(ms, MAX_TIMEOUT_MS)}, *DELIVERY_TIMEOUT_KEYS)


def unless_given(config: Mapping[str, Any], setting: dict[str, Any], *names: str) -> dict[str, Any]:
    """`setting` (one librdkafka key), unless `config` (a --kafka-config) names it itself, under
    its key or any of its other `names`: the user's wins."""
    return {} if any(key in config for key in (*setting, *names)) else setting


def within_transaction(config: Mapping[str, Any], transaction_timeout_ms: int) -> dict[str, Any]:
    """`config` for a transactional producer: librdkafka refuses one whose delivery timeout is
    longer than its transaction's, or whose socket timeout is more than 100 ms longer (a
    --kafka-config given to every service, meant for the others), so such a timeout is cut."""
    within = dict(config)
    for key, allowance in _BOUND_BY_TRANSACTION.items():
        # Not set; or no number, which librdkafka refuses in one line of its own.
        with contextlib.suppress(KeyError, TypeError, ValueError):
            within[key] = min(int(within[key]), transaction_timeout_ms + allowance)
    return within


# librdkafka stops fetching for a consumer whose queue holds queued.min.messages (100,000) and
# looks again only after fetch.queue.backoff.ms, 1 s by default. A consumer reading a backlog
# faster than 100,000 records a second (the comparison service, `rendezvous compare`, recovery)
# emptied its queue within that second and sat idle for the rest of it: 0.5 s of a 1.5 s read
# of 200,000 records (bench/comparison_throughput.py). Looking again after 20 ms keeps it fed.
FETCH_AHEAD: dict[str, Any] = {"fetch.queue.backoff.ms": 20}


CONSUMER_DEFAULTS: dict[str, Any] = {
    **FETCH_AHEAD,
    # We commit explicitly, only what is finished (docs/architecture.md, "Commit orders").
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    # With fetch.min.bytes=1 the broker answers as soon as data arrives, so a longer wait adds
    # no latency; it only stops idle consumers from polling the broker 100 times a second.
    "fetch.wait.max.ms": 100,
    "socket.nagle.disable": True,
}
