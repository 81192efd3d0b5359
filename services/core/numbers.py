"""Numbers typed by people (flags, variables, CSV cells, schedule edits), read as ASCII only.

Python's `int()` and `float()` take any Unicode decimal digit: `int("\\u0663")` (Arabic-Indic
three) is 3, and full-width digits read as theirs. Such a value in a flag, a variable or a file is
far more likely a paste gone wrong than a number meant, and it would be echoed back in logs as
something nobody typed; so it is refused like any other text that is no number. Underscores
between digits (`1_000`) stay accepted, as Python's literals and argparse's `type=int` take them.
"""

from __future__ import annotations


def ascii_int(text: str) -> int:
    """`int(text)`, refusing digits outside ASCII with ValueError (as for any other non-number)."""
    return int(_ascii(text))


def ascii_float(text: str) -> float:
    """`float(text)`, refusing digits outside ASCII with ValueError (as for any other non-number)."""
    return float(_ascii(text))


def _ascii(text: str) -> str:
    """`text` without the whitespace around it (of any kind, as int() takes it: a spreadsheet's
    no-break space), if the rest is ASCII."""
    number = text.strip()
    if not number.isascii():
        raise ValueError(f"not an ASCII number: {text!r}")
    return number
