"""JSON read by people's files and flags with every key once: `json` keeps the last of a key
given twice without a word, so a row, a schedule file or a manifest edited by hand would be taken
for something other than what was written."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["DuplicateKey", "loads_unique"]


class DuplicateKey(ValueError):
    """A key given twice in one JSON object; `key` is it."""

    def __init__(self, key: str):
        super().__init__(f"key {key[:40]!r} is given twice")
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _value in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def loads_unique(text: str) -> Any:
    """`json.loads(text)`, raising DuplicateKey (a ValueError) for a key given twice in an object."""
    return json.loads(text, object_pairs_hook=_refuse_duplicates)
