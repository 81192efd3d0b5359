"""The figures a promotion gate checks: the `rendezvous compare` report of the last `--window`.

The candidate's row of that report, measured against the champion on the same requests, is
the evidence; the gate only renames its columns to the figure names `--require` accepts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from services.compare_report.report import report_from_topic
from services.compare_report.settings import CompareSettings
from services.compare_report.summary import ChampionNotInRange, Report
from services.core.errors import ConfigError
from services.core.settings import KafkaSettings

NAN = float("nan")


def gate_figures(settings: KafkaSettings, window: str, candidate: str, champion: str,
                 progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """The candidate's figures over the last `window` of the log (ending at its end, as
    `compare --since` does), measured against `champion` on the same requests. Read with every
    connection setting of the command: its registry (the log's records may be registry-framed: read
    without it they were skipped, and the gate saw no evidence) and its connect timeout too."""
    connection = {f.name: getattr(settings, f.name) for f in dataclasses.fields(KafkaSettings)}
    compare = CompareSettings(**connection, since=window, champion=champion, workers=1)
    try:
        report, _read = report_from_topic(compare, progress=progress, only=(candidate, champion))
    except ChampionNotInRange:
        # The report's words name its own flag, which promote has not: say it for the gate.
        raise ConfigError(f"the champion {champion} has no output in the log over the last {window}: nothing to "
                          "measure the candidate against (widen --window, or check the champion scores)") from None
    return figures_of(report, candidate, champion)


def figures_of(report: Report, candidate: str, champion: str) -> dict[str, float]:
    """The gate's figures of `candidate` in `report` (one measured against `champion`)."""
    row = next((m for m in report.models if m.name == candidate), None)
    # The champion's own figures, for the gate's default clauses (services/control/gates.py): its
    # errors and deadlines met over the requests the candidate was measured on.
    champion_figures = {
        "champion_error_rate": row.expected_champion_errors / row.expected_champion_outputs
        if row is not None and row.expected_champion_outputs else NAN,
        "champion_deadline_met": row.expected_champion_met / row.expected if row is not None and row.expected else NAN,
    }
    if row is None:
        return {"n": 0.0, **champion_figures}
    # Agreement counts a missing label against the candidate (the report's figure), and the
    # deadlines met are over every request it was expected to score: the report's deadline_met
    # counts only the candidate's own outputs, so one that scores a sliver would pass on that sliver.
    return {
        **champion_figures,
        # What each share is a share of: the gate shows its 95% interval (`gates.share_interval`).
        "agreement_of": float(row.labelled),
        "error_rate_of": float(row.n),
        "coverage_of": float(row.expected),
        "deadline_met_of": float(row.expected),
        "n": float(row.paired),
        "agreement": row.agreement,
        "labelled": float(row.labelled),
        "p50": row.latency_ms.get("p50", NAN),
        "p90": row.latency_ms.get("p90", NAN),
        "p99": row.latency_ms.get("p99", NAN),
        "p999": row.latency_ms.get("p99.9", NAN),
        "mad": row.mad,
        "correlation": row.correlation,
        "ks": row.ks,
        "error_rate": row.errors / row.n if row.n else NAN,
        "coverage": row.expected_output / row.expected if row.expected else NAN,
        "versions": float(len(row.versions)),
        "deadline_met": row.expected_met / row.expected if row.expected else NAN,
    }
