"""Rebuilding after a crash or a rebalance without answering anything twice.

The committed input offset of a partition is that of its oldest *unfinished* request, so
after a restart the rendezvous re-reads requests it may already have answered (answered,
but still collecting late scores for the comparison record) or even logged (finished, but
behind an older unfinished one). Before re-reading partition p, it reads its own answers
and comparison log on partition p (the outputs are co-partitioned with the requests) from a
little before the committed request's timestamp to the end: requests found there are
restored as answered / skipped as logged. With transactions, read_committed makes this
exact: an answer in an aborted transaction is not there, so that request is answered again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer as _NativeConsumer
from confluent_kafka import TopicPartition

from services.core.codec import codec
from services.core.errors import BadInput
from services.core.settings import Topics
from services.core.topic_range import PartitionSpan, read_spans

log = logging.getLogger(__name__)


@dataclass
class Finished:
    """Requests of the re-read window that already have an answer or a comparison record."""

    answered: dict[str, dict[str, Any]] = field(default_factory=dict)
    logged: set[str] = field(default_factory=set)

    def forget(self, request_id: str) -> None:
        self.answered.pop(request_id, None)
        self.logged.discard(request_id)


def _start_of_window(
    consumer: _NativeConsumer, topics: Topics, partition: int, committed: int, margin_ms: int
) -> int | None:
    """Epoch ms from which outputs may exist for requests at or after `committed` (None: nothing to redo)."""
    _low, high = consumer.get_watermark_offsets(TopicPartition(topics.requests, partition), timeout=15)
    if committed < 0 or committed >= high:
        return None
    consumer.assign([TopicPartition(topics.requests, partition, committed)])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            _kind, ts = msg.timestamp()
            return max(0, ts - margin_ms)
    return 0  # could not read the record: scan the outputs from the beginning (slow but exact)


def scan_finished(
    config: Mapping[str, Any], topics: Topics, committed: Mapping[int, int], margin_ms: int
) -> Finished:
    """What was already answered / logged for requests at or after the committed offsets."""
    finished = Finished()
    probe = _NativeConsumer({**config, "group.id": "rdv-recovery-probe", "enable.auto.commit": False,
                             "isolation.level": "read_committed"})
    try:
        starts = {p: _start_of_window(probe, topics, p, c, margin_ms) for p, c in committed.items()}
        windows = {p: ms for p, ms in starts.items() if ms is not None}
        if not windows:
            return finished
        _collect(config, probe, topics.answers, windows, "answer", finished.answered)
        logged: dict[str, dict[str, Any]] = {}
        _collect(config, probe, topics.log, windows, "comparison", logged)
        finished.logged.update(logged)
    finally:
        probe.close()
    log.info("recovery: %d requests already answered, %d already logged on partitions %s",
             len(finished.answered), len(finished.logged), sorted(windows))
    return finished


def _collect(
    config: Mapping[str, Any], probe: _NativeConsumer, topic: str, windows: Mapping[int, int], schema: str,
    into: dict[str, dict[str, Any]],
) -> None:
    asked = [TopicPartition(topic, p, ms) for p, ms in windows.items()]
    found = probe.offsets_for_times(asked, timeout=15)
    spans = []
    for tp in found:
        _low, high = probe.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=15)
        start = tp.offset if tp.offset >= 0 else high
        spans.append(PartitionSpan(tp.partition, start, high))
    reader = codec(schema)
    for msg in read_spans(config, topic, spans, timeout_s=120):
        try:
            record = reader.decode(msg.value())
        except BadInput:
            continue
        into[record["request_id"]] = record
