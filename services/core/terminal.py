"""Text that came from outside (a log's model names, a record's labels) made safe to print.

A terminal acts on some characters instead of showing them: ESC starts sequences that clear the
screen, set the window title or rewrite what was printed before; bidirectional overrides and
zero-width characters make a name read as another. Such characters are written as escapes.
"""

from __future__ import annotations


def printable(text: str, keep: str = "") -> str:
    """`text` with every character Python calls non-printable (controls, format characters such as
    bidi overrides, separators other than a space) written as \\xNN, \\uNNNN or \\UNNNNNNNN;
    those in `keep` (e.g. a message's own line breaks) stay."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else _escaped(c) for c in text)


def _escaped(c: str) -> str:
    code = ord(c)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shortened(text: str, chars: int) -> str:
    """`text` cut to `chars` characters, the last one an ellipsis when it was longer."""
    return text if len(text) <= chars else text[: chars - 1] + "…"
