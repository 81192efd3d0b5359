"""A real single-node Apache Kafka broker for development and tests, run from Maven Central jars."""

from services.localkafka.broker import (
    LocalBroker,
    ephemeral_broker,
    read_bootstrap,
    start_background,
    status_background,
    stop_background,
)
from services.localkafka.config import KAFKA_VERSION, cache_dir
from services.localkafka.jars import provision

__all__ = [
    "KAFKA_VERSION",
    "LocalBroker",
    "cache_dir",
    "ephemeral_broker",
    "provision",
    "read_bootstrap",
    "start_background",
    "status_background",
    "stop_background",
]
