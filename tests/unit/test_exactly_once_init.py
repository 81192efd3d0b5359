"""A service waiting for the transaction coordinator stops when asked to (core/commits.py).

Found in a fault test: a rendezvous replacing its producer while the broker was gone for good
ignored SIGTERM for 1 h 40 min, retrying `init_transactions` without end. The clients here are
real librdkafka clients aimed at a port nothing listens on: every try times out, as it does
while the broker is away."""

from __future__ import annotations

import pytest

from services.core.commits import ExactlyOnce
from services.core.errors import ConfigError, KafkaOperationError
from services.core.health import BrokerHealth
from services.core.kafka import Consumer, Producer
from services.localkafka.config import free_port


def test_init_waits_for_the_coordinator_until_the_service_is_stopping() -> None:
    nowhere = {"bootstrap.servers": f"127.0.0.1:{free_port()}", "socket.connection.setup.timeout.ms": 1000}
    producer = Producer({**nowhere, "transactional.id": "stopping-test"})
    consumer = Consumer({**nowhere, "group.id": "stopping-test"})
    waits: list[str] = []
    try:
        committer = ExactlyOnce(producer, consumer, waits.append, BrokerHealth(), retry_s=0.3,
                                stopping=lambda: len(waits) >= 2)
        with pytest.raises(KafkaOperationError, match="stopped while waiting for the transaction coordinator") as err:
            committer.init()
    finally:
        consumer.close()
        producer.close()
    assert err.value.retriable and not isinstance(err.value, ConfigError)
    assert len(waits) == 2 and all("waiting for the transaction coordinator" in w for w in waits)
