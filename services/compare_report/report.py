"""Composition of the report: settings -> range read from the topic -> summary (used by the CLI)."""

from __future__ import annotations

from collections.abc import Callable, Collection

from services.compare_report.reader import Progress, ReadResult, read_range
from services.compare_report.settings import CompareSettings
from services.compare_report.summary import Report, summarize
from services.core.errors import ConfigError
from services.core.memory import available_bytes


def report_from_topic(
    settings: CompareSettings, *, on_plan: Callable[[int], None] | None = None, progress: Progress | None = None,
    only: Collection[str] | None = None,
) -> tuple[Report, ReadResult]:
    """Read the range of the log topic and summarize it (rows for the models in `only`, if given);
    also returns what the read did (timings)."""
    topic = settings.topics().log
    bounds = settings.bounds()

    def planned(offsets: int) -> None:
        check_fits(min(offsets, settings.max_records or offsets), bounds.describe())
        if on_plan is not None:
            on_plan(offsets)

    result = read_range(
        settings.librdkafka(), topic, bounds, timeout=settings.connect_timeout_s,
        max_records=settings.max_records, workers=settings.workers, on_plan=planned, progress=progress,
        schema_registry=settings.schema_registry,
    )  # fmt: skip
    source = f"{topic} {bounds.describe()}"
    report = summarize(result.columns.frame(), settings.champion or None, settings.bucket_ms(), only=only,
                       source=source, notes=_notes(result, settings))  # fmt: skip
    return report, result


# The least a record of the log takes at the report's peak (its columns, then the summary's copy
# and sort): 441 MB for a million records of two outputs each, 516 MB of three (a review, measured
# with tracemalloc and the peak RSS). The least, so that only a range sure not to fit is refused.
PEAK_BYTES_PER_RECORD = 400


def check_fits(records: int, what: str, available: int | None = None) -> None:
    """ConfigError, before reading, if `records` of the log surely need more memory than is free
    (`available`; default: `memory.available_bytes`): the reader held the whole range, and a range
    too large for a CI job or a pod ended in the kernel's OOM kill, exit 137 without a word (a review)."""
    free = available_bytes() if available is None else available
    need = records * PEAK_BYTES_PER_RECORD
    if free is not None and need > free:
        raise ConfigError(f"the log holds {records:,} records {what}: reading them takes at least {need / 2**30:.1f} "
                          f"GiB of memory, and {free / 2**30:.1f} GiB is free here; give a shorter range (compare "
                          "--since or --from/--to, promote --window) or compare --max-records")


def _notes(result: ReadResult, settings: CompareSettings) -> tuple[str, ...]:
    notes = [f"read {len(result.columns):,} records at offsets {_offsets(result)} in {result.seconds:.1f}s"]
    if result.skipped:
        notes.append(f"{result.skipped:,} record(s) could not be decoded and were skipped")
    if result.truncated:
        notes.append(f"stopped at --max-records {settings.max_records:,}: the range holds more")
    return tuple(notes)


def _offsets(result: ReadResult) -> str:
    spans = [f"p{s.partition} {s.start}-{s.end}" for s in result.spans if s.size]
    if len(spans) > 6:
        return f"{len(spans)} partitions ({result.offsets:,} offsets)"
    return ", ".join(spans) if spans else "none"
