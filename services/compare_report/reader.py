"""Reading a range of the comparison log into columns.

1. Resolve: each partition's [start, end) offsets from the range (`offsets_for_times` for times,
   the watermarks for "beginning"/"end", clamped offsets for `offset:N`; the shared
   `services.core.topic_range.plan_spans`). The end is fixed before reading, so the report has
   a definite end even while the rendezvous keeps writing.
2. Read: assign the partitions directly (no group membership, nothing committed), consume in
   large batches, drop what lies past a partition's end and pause it once its end is reached
   (or once the broker reports partition EOF, which also covers transaction markers that
   occupy the last offsets without ever being delivered).
3. Decode each batch straight into `Columns` (`BatchDecoder.decode_into`: a compiled loop over
   the whole batch for large ranges, fastavro for small ones and where that cannot be used).

`read_partitions` is the single-process reader; `read_range` resolves the range and splits the
partitions over `--workers` processes when that pays (services/compare_report/workers.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition

from services.compare_report.columns import Columns
from services.compare_report.decode import BatchDecoder
from services.core.codec import codec
from services.core.control_records import is_control_record
from services.core.errors import BrokerError, BrokerUnavailable, KafkaOperationError, Source, TopicMissing
from services.core.kafka import Consumer, groupless, partition_counts
from services.core.ranges import Bounds, OffsetBound, TimeBound
from services.core.topic_range import PartitionSpan, plan_spans

BATCH = 10_000
MIN_PARALLEL = 200_000  # records in range below which one process reads (spawning one costs ~1 s)
POLL_S = 0.5
STALL_S = 30.0  # nothing at all for this long while records are still due: the broker is gone
READER_CONFIG: dict[str, Any] = {
    # Throughput over latency: big fetches, and EOF events to learn that a partition is drained.
    "fetch.wait.max.ms": 100,
    "fetch.min.bytes": 1,
    "max.partition.fetch.bytes": 8 * 1024 * 1024,
    "enable.partition.eof": True,
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # Records deleted under the read (retention, after the range was planned) are an error said:
    # reset to the partition's new start, the read found it at its end and the report was of
    # fewer records than the range, silently (CI's run: 0 of 400, the records being two years old).
    "auto.offset.reset": "error",
}

Progress = Callable[[int], None]  # called with the number of records just read


@dataclass
class ReadResult:
    """What was read: the columns, the resolved range, and what had to be skipped."""

    topic: str
    bounds: Bounds
    spans: list[PartitionSpan]
    columns: Columns = field(default_factory=Columns)
    skipped: int = 0
    truncated: bool = False
    seconds: float = 0.0

    @property
    def offsets(self) -> int:
        return sum(s.size for s in self.spans)


def reader_consumer(config: dict[str, Any]) -> Consumer:
    """A groupless consumer for reading a range."""
    return Consumer({**groupless(config, "compare"), **READER_CONFIG})


def read_partitions(
    config: dict[str, Any], topic: str, spans: Iterable[PartitionSpan], *,
    max_records: int = 0, progress: Progress | None = None, stall_s: float = STALL_S,
) -> tuple[Columns, int, bool]:  # fmt: skip
    """Read the spans into columns; returns (columns, records skipped, stopped at max_records)."""
    pending = {s.partition: s for s in spans if s.size > 0}
    expected = sum(s.size for s in pending.values())
    columns, decoder = Columns(), BatchDecoder(codec("comparison"), min(expected, max_records or expected))
    consumer = reader_consumer(config)
    try:
        consumer.assign([TopicPartition(topic, s.partition, s.start) for s in pending.values()])
        last_data = time.monotonic()
        while pending:
            messages = _take(consumer, BATCH, POLL_S)
            if not messages:
                if time.monotonic() - last_data > stall_s:
                    raise BrokerUnavailable(f"no records from {topic} for {stall_s:.0f}s; {len(pending)} "
                                            "partition(s) not read to the end of the range")
                continue
            last_data = time.monotonic()
            values, drained = _in_range(messages, pending)
            if drained:
                consumer.pause([TopicPartition(topic, p) for p in drained])
            if max_records and len(columns) + len(values) >= max_records:
                # Truncated only if something is left: records of this batch past the cap, or
                # partitions still to read (a range of exactly --max-records is read whole).
                left = len(columns) + len(values) > max_records or bool(pending)
                decoder.decode_into(values[: max_records - len(columns)], columns)
                return columns, decoder.skipped, left
            decoder.decode_into(values, columns)
            if progress is not None:
                progress(len(values))
        return columns, decoder.skipped, False
    finally:
        consumer.close()


def _take(consumer: Consumer, most: int, timeout: float) -> list[Message]:
    """What is queued now, up to `most`; else wait up to `timeout` for one record.

    `consume(most, timeout)` would wait for `most` records to pile up, which near the end of a
    range (fewer left than `most`) costs the whole timeout per call.
    """
    messages: list[Message] = consumer.native.consume(most, 0)
    if messages:
        return messages
    first = consumer.native.poll(timeout)
    return [] if first is None else [first]


def _in_range(messages: list[Message], pending: dict[int, PartitionSpan]) -> tuple[list[bytes | None], list[int]]:
    """Values inside their partition's range; the partitions whose end was reached (removed)."""
    values: list[bytes | None] = []
    drained: list[int] = []
    for msg in messages:
        err = msg.error()
        partition = msg.partition() or 0
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                if pending.pop(partition, None) is not None:
                    drained.append(partition)
                continue
            _raise(msg, err)
        wanted = pending.get(partition)
        offset = msg.offset() or 0
        if wanted is None:
            continue
        if offset >= wanted.end:
            # Past the range: its last offsets were a transaction's marker (a read_committed
            # consumer never sees one, the end of a --to time usually follows one), so nothing
            # more of it will come; read on, it fetched the partition to its current end.
            del pending[partition]
            drained.append(partition)
            continue
        if not is_control_record(msg):  # a seal (core/control_records.py) is no comparison record
            values.append(msg.value())
        if offset + 1 >= wanted.end:
            del pending[wanted.partition]
            drained.append(wanted.partition)
    return values, drained


def _raise(msg: Message, err: KafkaError) -> None:
    if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
        raise TopicMissing(f"topic {msg.topic()} does not exist: {err.str()}")
    if err.code() == KafkaError._AUTO_OFFSET_RESET:
        raise BrokerError(f"records of {msg.topic()}-{msg.partition()} in the range were deleted while it was "
                           f"read (retention?): read a later range; {err.str()}")
    source = Source(msg.topic() or "?", msg.partition() or 0, msg.offset() or 0)
    raise KafkaOperationError(f"reading the comparison log failed: {err.str()}", source=source,
                              retriable=err.retriable())


def plan(config: dict[str, Any], topic: str, bounds: Bounds, timeout: float) -> list[PartitionSpan]:
    """The resolved [start, end) of every partition; `TopicMissing` / `BrokerUnavailable` fail fast."""
    partition_counts(config, [topic], timeout)  # one clear line when the broker or the topic is missing
    consumer = reader_consumer(config)
    try:
        return plan_spans(consumer.native, topic, **_span_bounds(bounds))
    finally:
        consumer.close()


def _span_bounds(bounds: Bounds) -> dict[str, int | None]:
    """`Bounds` in the keywords of `plan_spans` (time in ms, or an offset in every partition)."""
    keywords: dict[str, int | None] = {}
    for side, bound in (("start", bounds.start), ("end", bounds.end)):
        if isinstance(bound, TimeBound):
            keywords[f"{side}_ms"] = bound.ms
        elif isinstance(bound, OffsetBound):
            keywords[f"{side}_offset"] = bound.offset
    return keywords


def read_range(
    config: dict[str, Any], topic: str, bounds: Bounds, *, timeout: float = 15.0, max_records: int = 0,
    workers: int = 1, on_plan: Callable[[int], None] | None = None, progress: Progress | None = None,
    schema_registry: str = "",
) -> ReadResult:  # fmt: skip
    """Resolve the range, then read it; `on_plan` hears the number of offsets in range first.

    Several processes read only when it pays: more than one partition holds records and more
    than one CPU is there, the range is large (starting a process costs ~1 s), and no
    --max-records cut is asked for (a cut shared between processes would not be the first N
    records of anything).
    """
    started = time.monotonic()
    spans = plan(config, topic, bounds, timeout)
    result = ReadResult(topic, bounds, spans)
    if on_plan is not None:
        on_plan(result.offsets)
    workers = min(workers, os.cpu_count() or 1, sum(1 for s in spans if s.size))
    if workers > 1 and result.offsets >= MIN_PARALLEL and not max_records:
        from services.compare_report.workers import read_parallel

        result.columns, result.skipped = read_parallel(config, topic, spans, workers, progress, schema_registry)
    else:
        result.columns, result.skipped, result.truncated = read_partitions(
            config, topic, spans, max_records=max_records, progress=progress)
    result.seconds = time.monotonic() - started
    return result
