"""Reading a range with several processes: the partitions are split between them.

Decoding is CPU-bound Python, so one process tops out at one core; with `--workers N` each
process reads its own partitions into its own `Columns`, which are pickled back (an
`array.array` pickles as raw bytes) and merged. Processes are *spawned*, not forked: the parent
may hold librdkafka and progress-bar threads, which a fork would copy in an unknown state.
Progress comes back through one shared counter per worker, polled by the parent.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from typing import Any

from services.compare_report.columns import Columns
from services.compare_report.reader import Progress, read_partitions
from services.core.codec import codec
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


def _init(counters: list[Any], schema_registry: str) -> None:
    _counters[:] = counters
    if schema_registry:
        # Registry-framed records are looked up in each process: the parent's lookups are not
        # inherited by a spawned process, so every record of a registry-framed log was skipped.
        from services.core.registry import SchemaRegistry
        from services.core.wire import IdLookup

        codec("comparison").read_registry_ids(IdLookup(SchemaRegistry(schema_registry)))


def _read(index: int, config: dict[str, Any], topic: str, spans: list[PartitionSpan]) -> tuple[Columns, int]:
    counter = _counters[index]

    def progress(n: int) -> None:
        counter.value += n  # only this worker writes its counter: no lock needed

    columns, skipped, _ = read_partitions(config, topic, spans, progress=progress)
    return columns, skipped


def read_parallel(
    config: dict[str, Any], topic: str, spans: list[PartitionSpan], workers: int, progress: Progress | None = None,
    schema_registry: str = "",
) -> tuple[Columns, int]:
    """Columns of every span, read by up to `workers` processes; returns (columns, skipped).
    `schema_registry`: where registry-framed records' schemas are looked up (--schema-registry)."""
    groups = split(spans, workers)
    context = multiprocessing.get_context("spawn")
    counters = [context.Value("q", 0, lock=False) for _ in groups]
    with ProcessPoolExecutor(len(groups), mp_context=context, initializer=_init,
                             initargs=(counters, schema_registry)) as pool:
        futures = [pool.submit(_read, i, config, topic, group) for i, group in enumerate(groups)]
        _follow(futures, counters, progress)
        parts = [f.result() for f in futures]  # raises the first worker's error, as one line in the CLI
    merged, skipped = parts[0][0], parts[0][1]
    for columns, part_skipped in parts[1:]:
        merged.merge(columns)
        skipped += part_skipped
    return merged, skipped


def _follow(futures: list[Future[tuple[Columns, int]]], counters: list[Any], progress: Progress | None) -> None:
    """Until every worker is done (or one failed): report the records read since the last look."""
    reported = 0
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in done):
            return
        total = sum(c.value for c in counters)
        if progress is not None and total > reported:
            progress(total - reported)
            reported = total
