"""What the CLI prints of text it did not write itself: table cells and notes.

A model name from the scores topic or a version's comment is anyone's word: printed as rich markup
it could change the table's styling, printed raw its terminal escapes could clear the screen
(core/terminal.py). Every command prints such text through here.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from services.core.terminal import printable


def shown(text: str) -> Text:
    """`text` as a cell: no markup read in it, and what a terminal would act on escaped."""
    return Text(printable(text))


def print_note(console: Console, note: str) -> None:
    """A yellow `note:` line; `note` is plain text (any markup in it is printed as written)."""
    console.print(Text.assemble(("note", "yellow"), ": ", printable(note)))


def print_notes(console: Console, notes: list[str]) -> None:
    for note in notes:
        print_note(console, note)
