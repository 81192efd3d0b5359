"""A backlog read at once (a rendezvous restarted after an outage, a new group reading from the
start): every request gets the answer its scores give, however far the scores topic runs ahead
of the requests topic (services/rendezvous/score_brake.py)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.client.client import make_request
from services.core.codec import codec
from services.core.kafka import Producer
from services.core.runtime import now_ms
from services.core.settings import Topics
from tests.integration.harness import Services, read_topic

pytestmark = pytest.mark.kafka

MODELS = ("champion", "challenger", "canary")
REQUESTS = 600
# Requests this wide (kilobytes) and scores of about 100 bytes, fetched at most 64 kB a partition
# (librdkafka's default is 1 MB: the same skew, on a backlog 16 times as long): a fetch brings a
# few requests of a partition and the scores of hundreds, so the scores run far ahead.
FEATURES = 1_000
FETCH = "max.partition.fetch.bytes=65536"


def write_backlog(config: dict[str, Any], topics: Topics) -> None:
    """Each request, then its three scores, on partition i % 4: as models leave them."""
    requests, scores = codec("request"), codec("score")
    features = {f"f{i}": float(i) for i in range(FEATURES)}
    producer = Producer(config)
    created = now_ms()
    for i in range(REQUESTS):
        request = make_request(features, budget_ms=20_000, reply_topic=None, reply_partition=None, created_at=created)
        rid = request["request_id"]
        producer.produce(topics.requests, requests.encode(request), key=rid, partition=i % 4)
        for model in MODELS:
            score = {
                "request_id": rid, "model": model, "version": "v1", "instance": "test", "score": 0.9,
                "label": "benign", "error": None, "deadline": request["deadline"], "received_at": created + 1,
                "scored_at": created + 2, "compute_ms": 0.5,
            }  # fmt: skip
            producer.produce(topics.scores, scores.encode(score), key=rid, partition=i % 4)
        producer.poll(0)
    producer.flush()
    producer.close()


def test_a_backlog_whose_scores_run_ahead_is_answered_from_its_scores(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    dropped_before = REGISTRY.get_sample_value("rdv_orphan_scores_total") or 0.0
    write_backlog(config, topics)
    caplog.set_level(logging.INFO, logger="services.rendezvous.service")

    # At most 100 requests' scores wait for their requests (orphans), and a poll takes 20 records:
    # without the brake, hundreds run ahead here.
    services.rendezvous(bootstrap, prefix, models=MODELS, start_from="earliest", max_orphans=100, max_batch=20,
                        kafka_config=(FETCH,))
    logged = read_topic(config, topics.log, expect=REQUESTS, decode="comparison")

    assert len(logged) == REQUESTS
    assert Counter((r["status"], r["chosen_model"], len(r["outputs"])) for r in logged) == {
        ("OK", "champion", 3): REQUESTS
    }
    assert (REGISTRY.get_sample_value("rdv_orphan_scores_total") or 0.0) == dropped_before
    # The scores did run ahead, and waited for their requests.
    assert any("wait for their requests" in r.getMessage() for r in caplog.records)
