"""The local broker's warm-up on a real broker: it sends its traffic, cleans up after itself,
is recorded in the broker's state, and `RDV_BROKER_WARMUP=off` skips it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from services.localkafka import warmup
from services.localkafka.broker import ephemeral_broker

pytestmark = pytest.mark.kafka


def _needs_own_broker() -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or not (shutil.which("java") and shutil.which("mvn")):
        pytest.fail("this test starts a broker of its own: it needs Java 17 and Maven")


def _leftovers(bootstrap: str) -> tuple[list[str], list[str]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(warmup.TOPIC)]
    groups = [g.group_id for g in admin.list_consumer_groups(request_timeout=10).result().valid
              if g.group_id.startswith(warmup.TOPIC)]
    return topics, groups


def test_a_started_broker_was_warmed_up_and_nothing_of_it_is_left(tmp_path: Path) -> None:
    _needs_own_broker()
    with ephemeral_broker(tmp_path) as broker:
        done = broker.status()["warm_up"]
        assert done["error"] == "", done
        assert done["transactions"] >= warmup.MIN_ROUNDS, done
        assert done["records"] == (warmup.PLAIN_PER_ROUND + 2) * done["transactions"], done
        assert done["fetched"] > 0, done
        assert _leftovers(broker.bootstrap) == ([], [])


def test_the_warm_up_can_be_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_own_broker()
    monkeypatch.setenv(warmup.WARMUP_ENV, "off")
    with ephemeral_broker(tmp_path) as broker:
        assert broker.status()["warm_up"] == "off"
