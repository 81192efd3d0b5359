"""Text from outside made safe to print (services/core/terminal.py)."""

from __future__ import annotations

from services.core.terminal import printable


def test_what_a_terminal_acts_on_is_escaped_and_the_rest_kept() -> None:
    assert printable("m\x1b]0;title\x07\x1b[2J") == "m\\x1b]0;title\\x07\\x1b[2J"
    assert printable("a\u202eb\u200bc") == "a\\u202eb\\u200bc"  # a bidi override, a zero-width space
    assert printable("line\nnext\tcol", keep="\n\t") == "line\nnext\tcol"
    assert printable("line\nnext") == "line\\x0anext"
    for kept in ("café", "中文 model", "🙂 v2", "", "plain ascii [/bold] $x$"):
        assert printable(kept) == kept
