"""The report as a terminal table (rich): one row per model, the champion first."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.compare_report.summary import LATENCY_QUANTILES, ModelSummary, Report
from services.core.ranges import format_ms
from services.core.terminal import printable

DASH = "-"


def _number(digits: int) -> Callable[[float], str]:
    return lambda v: f"{v:,.{digits}f}" if math.isfinite(v) else DASH  # inf (scores of ±1e308) is no figure either


def _percent(v: float) -> str:
    return f"{100 * v:.2f}%" if math.isfinite(v) else DASH


# (header, how to get the text of a cell); paired columns read "-" for the champion itself.
COLUMNS: tuple[tuple[str, Callable[[ModelSummary], str]], ...] = (
    ("version", lambda m: ",".join(m.versions)),
    ("n", lambda m: f"{m.n:,}"),
    *((f"{name} ms", lambda m, name=name: _number(1)(m.latency_ms[name])) for name, _ in LATENCY_QUANTILES),
    ("agree", lambda m: _percent(m.agreement)),
    ("KS", lambda m: _number(3)(m.ks)),
    ("PSI", lambda m: _number(4)(m.psi)),
    ("MAD", lambda m: _number(4)(m.mad)),
    ("corr", lambda m: _number(3)(m.correlation)),
    ("errors", lambda m: f"{m.errors:,}"),
    ("late", lambda m: f"{m.late:,}"),
    ("deadline met", lambda m: _percent(m.deadline_met)),
)


def build_table(report: Report) -> Table:
    # Every text from the log as Text, never as a string rich reads markup in: a model named
    # "[/bold]" raised (no table), one named "[link=...]x[/link]" showed as another name. And
    # printable: one holding ESC sequences set the terminal's title and cleared it (a review).
    title = f"rendezvous compare: {report.source}" if report.source else "rendezvous compare"
    table = Table(title=Text(printable(title)), caption=Text(printable(caption(report), keep="\n")),
                  caption_justify="left")
    rows = [[printable(cell(model)) for _, cell in COLUMNS] for model in report.models]
    # Names and versions fold onto more lines; the figures never give way: squeezed by a long
    # name or a few versions, they read "1,…" and "100.…", or nothing at all (a review).
    table.add_column("model", overflow="fold")
    for i, (header, _) in enumerate(COLUMNS):
        if header == "version":
            table.add_column(header, justify="left", overflow="fold")
        else:
            widest = max([len(header), *(len(row[i]) for row in rows)])
            table.add_column(header, justify="right", no_wrap=True, min_width=widest)
    for model, cells in zip(report.models, rows, strict=True):
        name = printable(model.name)
        table.add_row(Text.assemble((name, "bold"), " ★") if model.champion else Text(name), *map(Text, cells))
    return table


def caption(report: Report) -> str:
    """Request-level lines under the table: counts, span, champion, answers, notes."""
    lines = [f"{report.records:,} records"]
    if report.first_ms is not None and report.last_ms is not None:
        lines[0] += f", requests created {format_ms(report.first_ms)} to {format_ms(report.last_ms)}"
    lines.append(f"champion ★: {report.champion or DASH} ({report.champion_source}); agree/KS/PSI/MAD/corr "
                 "are against it, on the same requests")  # fmt: skip
    absent = sum(model.absent for model in report.models)
    if absent:
        lines.append(f"{absent:,} records answered without an output of their champion (the chosen model of the "
                     "latest OK answer, or --champion): each a deadline it missed, in its row's deadline met")
    statuses = ", ".join(f"{name} {count:,}" for name, count in report.statuses.items() if count)
    lines.append(f"answers: {statuses or DASH}; answered by the deadline: {_percent(report.answered_by_deadline)}")
    lines.extend(report.notes)
    return "\n".join(lines)


def print_report(report: Report, console: Console) -> None:
    """The table, or one clear line when the range holds no records."""
    if not report.records:
        where = f" ({report.source})" if report.source else ""
        console.print(Text(printable(f"no records in range{where}")))
        for note in report.notes:
            console.print(Text(printable(note)))
        return
    console.print(build_table(report))


def report_dict(report: Report) -> dict[str, Any]:
    """The report's figures for scripts (`--format json`): the table's content, no plots."""
    def number(value: float) -> float | None:
        # NaN and the infinities -> null: JSON has none (a mean difference of far-apart finite
        # scores overflows to inf, and json.dumps wrote Infinity, which no JSON parser reads).
        return float(value) if math.isfinite(value) else None

    models = [{
        "model": m.name, "versions": list(m.versions), "champion": m.champion, "n": m.n, "errors": m.errors,
        "late": m.late, "deadline_met": number(m.deadline_met),
        "latency_ms": {k: number(v) for k, v in m.latency_ms.items()}, "agreement": number(m.agreement),
        "ks": number(m.ks), "psi": number(m.psi), "mad": number(m.mad), "correlation": number(m.correlation),
        "paired": m.paired, "absent": m.absent,
    } for m in report.models]
    return {"records": report.records, "champion": report.champion, "champion_source": report.champion_source,
            "statuses": dict(report.statuses), "answered_by_deadline": number(report.answered_by_deadline),
            "first_ms": report.first_ms, "last_ms": report.last_ms, "models": models,
            "notes": list(report.notes)}  # records left out or skipped, and why, as under the table


def print_report_json(report: Report) -> None:
    sys.stdout.write(json.dumps(report_dict(report), indent=2, allow_nan=False) + "\n")
