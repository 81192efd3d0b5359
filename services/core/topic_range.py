"""Read a slice of a topic, [start, end), by record time or offset, to a fixed end.

The start of the slice is found per partition with `offsets_for_times` (never a scan from
the beginning); the end is fixed when the read starts (the high watermark, or the offset of
the end time), so a read of a live topic terminates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from services.core.errors import BrokerError, TopicMissing
from services.core.kafka import partition_counts, reader


@dataclass(frozen=True)
class PartitionSpan:
    partition: int
    start: int
    end: int  # exclusive

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


def _offsets_at(
    consumer: Consumer, topic: str, partitions: list[int], ms: int, high: dict[int, int]
) -> dict[int, int]:
    """First offset with timestamp >= ms in each partition (the high watermark if none)."""
    asked = [TopicPartition(topic, p, ms) for p in partitions]
    try:
        found = consumer.offsets_for_times(asked, timeout=15)
    except KafkaException as exc:
        raise BrokerError(f"offsets_for_times on {topic} failed: {exc}") from None
    # No record at or after `ms`: the partition's slice starts (or ends) at its high watermark.
    return {tp.partition: high[tp.partition] if tp.offset < 0 else tp.offset for tp in found}


def plan_spans(
    consumer: Consumer,
    topic: str,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    start_offset: int | None = None,
    end_offset: int | None = None,
) -> list[PartitionSpan]:
    """Per-partition [start, end) offsets of the slice."""
    try:
        metadata = consumer.list_topics(topic, timeout=15)
    except KafkaException as exc:
        raise BrokerError(f"cannot read the metadata of {topic}: {exc}") from None
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        raise TopicMissing(f"topic {topic} does not exist (create it with `rendezvous topics create`)")
    partitions = sorted(info.partitions)
    low, high = {}, {}
    for p in partitions:
        low[p], high[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
    starts = dict(low)
    if start_ms is not None:
        starts = _offsets_at(consumer, topic, partitions, start_ms, high)
    elif start_offset is not None:
        starts = {p: min(max(start_offset, low[p]), high[p]) for p in partitions}
    ends = dict(high)
    if end_ms is not None:
        ends = _offsets_at(consumer, topic, partitions, end_ms, high)
    elif end_offset is not None:
        ends = {p: min(max(end_offset, low[p]), high[p]) for p in partitions}
    return [PartitionSpan(p, starts[p], max(starts[p], ends[p])) for p in partitions]


def read_spans(
    config: Mapping[str, Any],
    topic: str,
    spans: list[PartitionSpan] | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    timeout_s: float = 300.0,
    start_ms: int | None = None,
    end_ms: int | None = None,
    start_offset: int | None = None,
    end_offset: int | None = None,
) -> Iterator[Message]:
    """Every record of the slice, partition spans read concurrently, each to its end."""
    if spans is None:
        # Waits for the broker within the command's --connect-timeout-s (one clear line if none
        # answers), and tells a topic missing from one the principal may not see.
        partition_counts(config, [topic])
    consumer = reader(config, "range", extra={
        "fetch.max.bytes": 64 * 1024 * 1024, "max.partition.fetch.bytes": 16 * 1024 * 1024,
        # Records deleted under a slow read (retention) are an error said, not a silent jump to
        # the partition's end (librdkafka's default) that cuts the read short.
        "auto.offset.reset": "error",
    })
    try:
        todo = spans if spans is not None else plan_spans(
            consumer, topic, start_ms=start_ms, end_ms=end_ms, start_offset=start_offset, end_offset=end_offset
        )
        yield from read_together(consumer, {(topic, s.partition): s for s in todo}, what=f"reading {topic}",
                                  timeout_s=timeout_s, progress=progress)
    finally:
        consumer.close()


def read_together(
    consumer: Consumer,
    spans: Mapping[tuple[str, int], PartitionSpan],
    *,
    what: str,
    timeout_s: float,
    wait_s: float = 0.5,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Message]:
    """Every record of the spans (keyed by topic and partition, of one topic or several), read
    together by `consumer` (a groupless one: this assigns it), each span to its end. `wait_s`:
    how long one fetch waits for a full batch once little is left. `timeout_s` bounds how long
    nothing at all comes while records are still due, not the whole read: the caller's own
    work on what it was given (a replay scoring them) does not count against the broker. An
    error Kafka reports on a partition (no permission, records deleted under the read) is
    raised: skipped, it left the read to end short or to wait out its timeout."""
    remaining = {key: span for key, span in spans.items() if span.size > 0}
    if not remaining:
        return
    consumer.assign([TopicPartition(t, p, span.start) for (t, p), span in remaining.items()])
    deadline = time.monotonic() + timeout_s
    while remaining:
        if time.monotonic() > deadline:
            left = ", ".join(f"{t}-{p}" for t, p in sorted(remaining))
            raise BrokerError(f"{what}: nothing came from {left} for {timeout_s:.0f}s before its end")
        yielded = 0
        for msg in consumer.consume(10_000, wait_s):
            if msg.error() is not None:
                _raise_unless_eof(msg, what)
                continue
            span = remaining.get((msg.topic() or "", msg.partition() or 0))
            if span is None or (msg.offset() or 0) >= span.end:
                continue
            yielded += 1
            yield msg
        if progress is not None and yielded:
            progress(yielded)
        if yielded:
            deadline = time.monotonic() + timeout_s  # once the caller is done with them
        _drop_finished(consumer, remaining)


def _raise_unless_eof(msg: Message, what: str) -> None:
    err = msg.error()
    if err is None or err.code() == KafkaError._PARTITION_EOF:
        return
    where = f"{msg.topic()}-{msg.partition()}"
    if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
        raise TopicMissing(f"{what}: {where} does not exist: {err.str()}")
    if err.code() == KafkaError._AUTO_OFFSET_RESET:
        raise BrokerError(f"{what}: records of {where} were deleted while being read (retention?): {err.str()}")
    raise BrokerError(f"{what}: {where}: {err.str()}")


def _drop_finished(consumer: Consumer, remaining: dict[tuple[str, int], PartitionSpan]) -> None:
    # The position, not the last offset seen, says a span is done: transaction markers and
    # compacted-away offsets leave gaps no record fills.
    for tp in consumer.position([TopicPartition(t, p) for t, p in remaining]):
        if tp.offset >= 0 and tp.offset >= remaining[(tp.topic, tp.partition)].end:
            del remaining[(tp.topic, tp.partition)]
