"""`rendezvous compare`: read a range of the comparison log, print the table, write the HTML.

The table goes to stdout (the command's output); the progress bar and notes go to stderr, so
`rendezvous compare ... > report.txt` keeps only the report.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from services.cli.common import console, messages, write_output
from services.cli.shown import counted, now_and_then, print_note
from services.compare_report.report import report_from_topic
from services.compare_report.settings import CompareSettings
from services.compare_report.table import print_report, print_report_json

# Wide enough for every column when stdout is a file or a pipe (rich would assume 80).
PIPE_WIDTH = 1000  # piped: as wide as the table needs, never '…' in place of a figure


class _Rate(ProgressColumn):
    """Records per second (rich's speed columns speak bytes)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} rec/s" if task.speed else "", style="progress.data.speed")


class _Bar:
    """A progress bar that appears once the range is known, so a broker error prints no empty bar."""

    def __init__(self, console: Console, topic: str):
        self._console, self._topic = console, topic
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._counted: Callable[[int], None] | None = None  # no terminal: a plain line now and then

    def start(self, total: int) -> None:
        if not self._console.is_terminal:  # rich draws a bar on a terminal only: silent until the end
            self._counted = counted(now_and_then(self._console, f"reading {self._topic}"),
                                    lambda read: f"{read:,} of at most {total:,} records")
            return
        columns = (TextColumn("reading {task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
                   TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
        self._progress = Progress(*columns, console=self._console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(self._topic, total=total)

    def advance(self, n: int) -> None:
        if self._counted is not None:
            self._counted(n)
        elif self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def stop(self, completed: int | None = None) -> None:
        """Show the bar full (the range may end in offsets that hold no record) and stop it."""
        if self._progress is not None and self._task is not None:
            if completed is not None:
                self._progress.update(self._task, completed=completed)
            self._progress.stop()
            self._progress = None


def ignored_flags(settings: CompareSettings) -> list[str]:
    """Flags given that this run makes no use of, each said."""
    notes = []
    if settings.bucket and not settings.html:
        notes.append("--bucket sets the agreement-over-time plot's buckets: with no --html, it draws nothing")
    if settings.max_records and settings.given("workers"):
        notes.append("--workers is not used with --max-records: the range is read in one process, to stop at the "
                     "count in log order")
    return notes


def run_compare(settings: CompareSettings, out: Console | None = None, err: Console | None = None) -> int:
    """The report of the range on `out`, progress on `err`; the HTML file when asked."""
    out = out or console(width=None if sys.stdout.isatty() else PIPE_WIDTH, no_color=not sys.stdout.isatty())
    err = err or messages()
    for note in ignored_flags(settings):  # accepted and ignored without a word (a review)
        print_note(err, note)
    bar = _Bar(err, settings.topics().log)
    try:
        report, result = report_from_topic(settings, on_plan=bar.start, progress=bar.advance)
        bar.stop(completed=result.offsets)
    finally:
        bar.stop()
    write_output(lambda: print_report_json(report) if settings.format == "json" else print_report(report, out))
    if settings.html:
        from services.compare_report.html import write_html  # matplotlib loads in ~1 s: only when asked

        path = write_html(report, settings.html)
        err.print(f"HTML report written to {path}")
    return 0
