"""A real single-node Apache Kafka broker for development and tests, run from Maven Central jars."""

from services.localkafka.broker import (
    LocalBroker,
    ephemeral_broker,
    read_bootstrap,
    start_background,
    status_background,
    stop_background,
)
from services.localkafka.config import (
    KAFKA_VERSION,
    SASL_LISTENER,
    cache_dir,
    sasl_broker_options,
    sasl_client_config,
)
from services.localkafka.jars import provision

__all__ = [
    "KAFKA_VERSION",
    "SASL_LISTENER",
    "LocalBroker",
    "cache_dir",
    "ephemeral_broker",
    "provision",
    "read_bootstrap",
    "sasl_broker_options",
    "sasl_client_config",
    "start_background",
    "status_background",
    "stop_background",
]
