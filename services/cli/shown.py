"""What the CLI prints of text it did not write itself: table cells and notes.

A model name from the scores topic or a version's comment is anyone's word: printed as rich markup
it could change the table's styling, printed raw its terminal escapes could clear the screen
(core/terminal.py). Every command prints such text through here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.text import Text

from services.core.rate_limit import OncePerPeriod
from services.core.terminal import printable

PROGRESS_EVERY_S = 10.0


def shown(text: str) -> Text:
    """`text` as a cell: no markup read in it, and what a terminal would act on escaped."""
    return Text(printable(text))


def print_note(console: Console, note: str) -> None:
    """A yellow `note:` line; `note` is plain text (any markup in it is printed as written)."""
    console.print(Text.assemble(("note", "yellow"), ": ", printable(note)))


def print_notes(console: Console, notes: list[str]) -> None:
    for note in notes:
        print_note(console, note)


def now_and_then(err: Console, label: str, clock: Callable[[], float] = time.monotonic) -> Callable[[str], None]:
    """Progress as a plain `label: what` line at most every PROGRESS_EVERY_S, for a stderr that is no
    terminal: rich draws its status lines and bars on a terminal only, and a long read in a job,
    under nohup or with 2>file said nothing until its end (a review)."""
    lines = OncePerPeriod[str](PROGRESS_EVERY_S, clock)
    lines.passes("progress")  # the start: the first line comes a period after it

    def say(what: str) -> None:
        if lines.passes("progress") is not None:
            err.print(f"{label}: {what}", soft_wrap=True)

    return say


def counted(say: Callable[[str], None], line: Callable[[int], str]) -> Callable[[int], None]:
    """A progress callback hearing how many more records were read: it says `line(read so far)`."""
    read = 0

    def heard(more: int) -> None:
        nonlocal read
        read += more
        say(line(read))

    return heard
