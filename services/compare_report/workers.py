"""Reading a range with several processes: the partitions are split between them.

Decoding is CPU-bound Python, so one process tops out at one core; with `--workers N` each
process reads its own partitions into its own `Columns`, which are pickled back (an
`array.array` pickles as raw bytes) and merged. Processes are *spawned*, not forked: the parent
may hold librdkafka and progress-bar threads, which a fork would copy in an unknown state.
Progress comes back through one shared counter per worker, polled by the parent.

The workers stop with the read: a worker's failure, or the command stopped (Ctrl-C, SIGTERM),
terminates the others at once, and a parent killed outright takes them with it. With a
ProcessPoolExecutor a stopped `compare` waited for every worker to read its partitions to the
end, and the first worker's error waited for the others (a review).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.pool import AsyncResult
from typing import Any

from confluent_kafka import KafkaException

from services.compare_report.columns import Columns
from services.compare_report.reader import Progress, read_partitions
from services.core.codec import codec
from services.core.errors import KafkaOperationError
from services.core.runtime import die_with_parent
from services.core.topic_range import PartitionSpan

POLL_S = 0.2
_counters: list[Any] = []  # shared int64 counters (one per worker), set in each worker by `_init`


def split(spans: list[PartitionSpan], workers: int) -> list[list[PartitionSpan]]:
    """At most `workers` groups of non-empty spans with similar record counts (largest first)."""
    groups: list[list[PartitionSpan]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for span in sorted((s for s in spans if s.size), key=lambda s: -s.size):
        least = loads.index(min(loads))
        groups[least].append(span)
        loads[least] += span.size
    return [g for g in groups if g]


Part = tuple[Columns, int]
Reader = Callable[[int, dict[str, Any], str, list[PartitionSpan]], Part]


def _init(counters: list[Any], schema_registry: str) -> None:
    die_with_parent()  # a parent killed outright (SIGKILL) runs no clean-up: its workers read on
    _counters[:] = counters
    if schema_registry:
        # Registry-framed records are looked up in each process: the parent's lookups are not
        # inherited by a spawned process, so every record of a registry-framed log was skipped.
        from services.core.registry import SchemaRegistry
        from services.core.wire import read_ids

        read_ids(SchemaRegistry(schema_registry), [codec("comparison")])


def _read(index: int, config: dict[str, Any], topic: str, spans: list[PartitionSpan]) -> Part:
    counter = _counters[index]

    def progress(n: int) -> None:
        counter.value += n  # only this worker writes its counter: no lock needed

    columns, skipped, _ = read_partitions(config, topic, spans, progress=progress)
    return columns, skipped


def _said(read: Reader, index: int, config: dict[str, Any], topic: str, spans: list[PartitionSpan]) -> Part:
    """`read` in a worker, its Kafka client's refusal as one of ours: a KafkaException cannot be
    pickled back to the parent, which got a MaybeEncodingError and printed a traceback (a review)."""
    try:
        return read(index, config, topic, spans)
    except KafkaException as exc:
        raise KafkaOperationError(f"Kafka client: {exc}") from None


def read_parallel(
    config: dict[str, Any], topic: str, spans: list[PartitionSpan], workers: int, progress: Progress | None = None,
    schema_registry: str = "", read: Reader = _read,
) -> Part:
    """Columns of every span, read by up to `workers` processes; returns (columns, skipped).
    `schema_registry`: where registry-framed records' schemas are looked up (--schema-registry);
    `read`: what each worker runs (a module-level function: it is found by name in the worker)."""
    groups = split(spans, workers)
    context = multiprocessing.get_context("spawn")
    counters = [context.Value("q", 0, lock=False) for _ in groups]
    # Leaving the block, however, terminates the workers still reading.
    with context.Pool(len(groups), initializer=_init, initargs=(counters, schema_registry)) as pool:
        results = [pool.apply_async(_said, (read, i, config, topic, group)) for i, group in enumerate(groups)]
        _follow(results, counters, progress)  # raises the first worker's error, as one line in the CLI
        parts = [result.get() for result in results]
    merged, skipped = parts[0][0], parts[0][1]
    for columns, part_skipped in parts[1:]:
        merged.merge(columns)
        skipped += part_skipped
    return merged, skipped


def _follow(results: list[AsyncResult[Part]], counters: list[Any], progress: Progress | None) -> None:
    """Until every worker is done: report the records read since the last look; the first
    failure is raised as soon as it is known, whichever worker's it is."""
    reported = 0
    while True:
        failed = next((r for r in results if r.ready() and not r.successful()), None)
        if failed is not None:
            failed.get()  # raises the worker's error
        total = sum(c.value for c in counters)
        if progress is not None and total > reported:
            progress(total - reported)
            reported = total
        unready = [r for r in results if not r.ready()]
        if not unready:
            return
        unready[0].wait(POLL_S)
