"""Answers to a request's return address (reply topic, optional partition).

A return address is client input: a topic that does not exist, or a partition it does not
have, must cost that one answer (counted in rdv_reply_errors_total), never the service.
librdkafka would hold a record for an unknown topic until message.timeout.ms, so addresses
are checked against metadata once and the verdict is cached for a while.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException

from services.core.kafka import Producer, admin
from services.rendezvous import metrics as m

log = logging.getLogger(__name__)

VERDICT_TTL_S = 30.0


class ReplyRouter:
    def __init__(self, producer: Producer, config: Mapping[str, Any]):
        self._producer = producer
        self._admin = admin(config)
        self._partitions: dict[str, tuple[int, float]] = {}  # topic -> (partition count or 0, checked at)

    def send(self, topic: str, partition: int | None, key: bytes, value: bytes) -> None:
        count = self._partition_count(topic)
        if count == 0:
            m.REPLY_ERRORS.labels("unknown_topic").inc()
            return
        if partition is not None and not 0 <= partition < count:
            m.REPLY_ERRORS.labels("bad_partition").inc()
            return
        self._producer.produce(topic, value, key=key, partition=partition)

    def forget(self, topic: str) -> None:
        """A delivery to `topic` failed: treat it as missing until it is checked again."""
        self._partitions[topic] = (0, time.monotonic())

    def _partition_count(self, topic: str) -> int:
        now = time.monotonic()
        cached = self._partitions.get(topic)
        if cached is not None and now - cached[1] < VERDICT_TTL_S:
            return cached[0]
        try:
            meta = self._admin.list_topics(topic=topic, timeout=5.0).topics.get(topic)
            count = len(meta.partitions) if meta is not None and meta.error is None else 0
        except KafkaException as exc:
            log.warning("cannot check return address %s: %s", topic, exc)
            count = cached[0] if cached else 0
        if count == 0:
            log.warning("return address %s does not exist; its answers go to the answers topic only", topic)
        self._partitions[topic] = (count, now)
        return count
