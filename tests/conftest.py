"""Shared fixtures: one real Kafka broker for the session, fresh topics per test.

Used by tests/integration and tests/faults; unit tests never ask for them, so they never start a broker.

The broker is, in order: an existing cluster from KAFKA_BOOTSTRAP_SERVERS; the local broker
the project provisions from Maven Central (Java, no Docker); testcontainers' Kafka when a
Docker engine answers. Never a mock.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.cli.common import ensure_topics
from services.core.settings import Topics
from tests.integration.harness import Services


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return False


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
        return
    if shutil.which("java") and shutil.which("mvn"):
        from services.localkafka.broker import ephemeral_broker

        with ephemeral_broker(Path(tmp_path_factory.mktemp("kafka"))) as broker:
            yield broker.bootstrap
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    pytest.fail("no Kafka: set KAFKA_BOOTSTRAP_SERVERS, install Java 17 + Maven, or run a Docker engine")


@pytest.fixture
def config(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap}


@pytest.fixture
def prefix(config: dict[str, Any]) -> str:
    """A fresh topic prefix with every topic created (4 partitions)."""
    value = f"t{uuid.uuid4().hex[:10]}."
    ensure_topics(config, Topics.from_prefix(value), partitions=4)
    return value


@pytest.fixture
def topics(prefix: str) -> Topics:
    return Topics.from_prefix(prefix)


@pytest.fixture
def services() -> Iterator[Services]:
    running = Services(threading.Event())
    yield running
    running.stop_all()
