"""Composition of the report: settings -> range read from the topic -> summary (used by the CLI)."""

from __future__ import annotations

from collections.abc import Callable

from services.compare_report.reader import Progress, ReadResult, read_range
from services.compare_report.settings import CompareSettings
from services.compare_report.summary import Report, summarize


def report_from_topic(
    settings: CompareSettings, *, on_plan: Callable[[int], None] | None = None, progress: Progress | None = None
) -> tuple[Report, ReadResult]:
    """Read the range of the log topic and summarize it; also returns what the read did (timings)."""
    topic = settings.topics().log
    bounds = settings.bounds()
    result = read_range(
        settings.librdkafka(), topic, bounds, timeout=settings.connect_timeout_s,
        max_records=settings.max_records, workers=settings.workers, on_plan=on_plan, progress=progress,
        schema_registry=settings.schema_registry,
    )  # fmt: skip
    source = f"{topic} {bounds.describe()}"
    report = summarize(result.columns.frame(), settings.champion or None, settings.bucket_ms(),
                       source=source, notes=_notes(result, settings))  # fmt: skip
    return report, result


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
