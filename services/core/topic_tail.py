"""Follow a topic without a group: its history to the end as of now, then whatever comes.

For the small topics a long-lived process follows for its whole life (the control topic's
schedules, the models' published contracts): one consumer, assigned every partition from the
beginning. Reading such a topic again from the start every few seconds opened new clients each
time: new connections, and on a secured cluster a TLS handshake and a SASL login, every time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, Message, TopicPartition

from services.core.errors import BrokerError
from services.core.kafka import Consumer, groupless, kafka_message, partition_counts


class TopicTail:
    def __init__(self, config: Mapping[str, Any], topic: str, purpose: str):
        self.topic = topic
        partitions = partition_counts(config, [topic])[topic]  # first: a missing topic leaves no client open
        self._consumer = Consumer({**groupless(config, purpose), "enable.partition.eof": False})
        self._partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        self._consumer.assign(self._partitions)

    @property
    def partition_count(self) -> int:
        return len(self._partitions)

    def end_offsets(self) -> dict[int, int]:
        ends = {}
        for tp in self._partitions:
            try:
                _low, high = self._consumer.native.get_watermark_offsets(
                    TopicPartition(self.topic, tp.partition), timeout=10
                )
            except KafkaException as exc:
                raise BrokerError(f"cannot read the end offsets of {self.topic}: {kafka_message(exc)}") from None
            ends[tp.partition] = high
        return ends

    def read_to_end(self, timeout: float) -> list[Message]:
        """Every record from where the last read ended up to the end offsets as of now;
        `BrokerError` if that takes longer than `timeout` seconds."""
        ends = self.end_offsets()
        records: list[Message] = []
        deadline = time.monotonic() + timeout
        while not self._reached(ends):
            if time.monotonic() > deadline:
                raise BrokerError(f"could not read {self.topic} to its end within {timeout:.0f}s")
            records.extend(self._consumer.consume(500, 0.05))
        return records

    def _reached(self, ends: dict[int, int]) -> bool:
        # Positions, not offsets seen: transaction markers occupy offsets no record fills.
        waiting = [TopicPartition(self.topic, p) for p, end in ends.items() if end > 0]
        if not waiting:
            return True
        positions = self._consumer.native.position(waiting)
        return all(tp.offset >= ends[tp.partition] for tp in positions)

    def poll(self) -> list[Message]:
        """Whatever arrived since the last call (non-blocking)."""
        return list(self._consumer.consume(100, 0))

    def close(self) -> None:
        self._consumer.close()
