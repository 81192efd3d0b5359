"""The decoy: consumes the requests topic like a model, archives exactly what it read.

Commit order: append the batch to the archive file, flush and fsync it, then commit the
batch's offsets. A crash can repeat records (readers de-duplicate by topic/partition/offset)
but never lose a committed one. Nothing is decoded: the archive holds the wire bytes, so a
replay sees exactly what every model saw, bad records included.
"""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from confluent_kafka import Message, TopicPartition
from prometheus_client import Counter

from services.core.kafka import Consumer, next_offsets, partition_counts
from services.core.runtime import now_ms, run_poll_loop
from services.decoy.archive import ArchiveWriter
from services.decoy.settings import DecoySettings

log = logging.getLogger(__name__)

ARCHIVED = Counter("rdv_decoy_archived_total", "Request records written to the decoy archive.")
ARCHIVED_BYTES = Counter("rdv_decoy_archived_bytes_total", "Value bytes written to the decoy archive.")


class Decoy:
    def __init__(self, settings: DecoySettings):
        self.settings = settings
        self.topics = settings.topics()
        self.ready = threading.Event()
        self.archived = 0

    def run(self, stop: threading.Event) -> None:
        config = self.settings.librdkafka()
        partition_counts(config, [self.topics.requests], timeout=self.settings.connect_timeout_s)
        with ExitStack() as stack:
            archive = ArchiveWriter(Path(self.settings.archive_dir),
                                    roll_bytes=int(self.settings.roll_mb * 1024 * 1024),
                                    roll_seconds=self.settings.roll_seconds, codec=self.settings.codec)
            stack.callback(archive.close)
            consumer = Consumer({**config, "group.id": self.settings.group_id(),
                                 "auto.offset.reset": self.settings.start_from})
            stack.callback(consumer.close)
            consumer.subscribe([self.topics.requests], on_assign=self._on_assign)
            log.info("decoy archiving %s into %s", self.topics.requests, self.settings.archive_dir)
            archiver = _Archiver(self, archive, consumer)
            run_poll_loop(consumer, archiver, stop, max_batch=self.settings.max_batch)
            log.info("decoy stopping after %d records", self.archived)

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        log.info("decoy assigned %s", [p.partition for p in partitions])
        self.ready.set()


class _Archiver:
    def __init__(self, decoy: Decoy, archive: ArchiveWriter, consumer: Consumer):
        self.decoy = decoy
        self.archive = archive
        self.consumer = consumer

    def next_wakeup(self) -> float:
        return 0.5

    def on_tick(self) -> None:
        return None

    def on_batch(self, messages: list[Message]) -> None:
        if not messages:
            return
        archived_at = now_ms()
        records = [_record(msg, archived_at) for msg in messages]
        self.archive.append(records)  # durable before the offsets move
        self.consumer.commit(next_offsets(messages))
        self.decoy.archived += len(records)
        ARCHIVED.inc(len(records))
        ARCHIVED_BYTES.inc(sum(len(r["value"] or b"") for r in records))


def _record(msg: Message, archived_at: int) -> dict[str, Any]:
    _kind, timestamp = msg.timestamp()
    key = msg.key()
    return {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp": timestamp if timestamp and timestamp > 0 else archived_at,
        "key": key.encode() if isinstance(key, str) else key,
        "value": msg.value(),
        "archived_at": archived_at,
    }
