"""Values this process must never print, and the masking every output line goes through.

The Kafka pass-through settings register their values here as they are parsed (see
`services/core/kafka_config.py`); every log line (`MaskingFormatter`) and the CLI's `error:`
line pass through `mask`, so a secret stays out of the output whatever path carries it there
(a librdkafka message, an exception text, a debug dump). This is the second line of defence:
the first is that no message is built from a setting's value in the first place.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"
# Shorter values are not worth masking everywhere: a 1- or 2-character value would mask
# every such token of every line. Messages never quote a value anyway (the first line).
MIN_LENGTH = 3

_lock = threading.Lock()
_values: set[str] = set()
_pattern: re.Pattern[str] | None = None


def never_print(value: str) -> None:
    """Remember a value (a password, a token, a malformed setting) that output must not show."""
    global _pattern
    value = value.strip()
    if len(value) < MIN_LENGTH or value == MASK:
        return
    with _lock:
        if value in _values:
            return
        _values.add(value)
        # Longest first, so a value containing another is masked whole. Word-character edges
        # only match at a word boundary: a secret `true` masks "true", not "untrue".
        alternatives = [_bounded(v) for v in sorted(_values, key=len, reverse=True)]
        _pattern = re.compile("|".join(alternatives))


def _bounded(value: str) -> str:
    head = r"(?<!\w)" if re.match(r"\w", value) else ""
    tail = r"(?!\w)" if re.search(r"\w$", value) else ""
    return head + re.escape(value) + tail


def mask(text: str) -> str:
    """`text` with every remembered value replaced by ***."""
    pattern = _pattern
    return text if pattern is None else pattern.sub(MASK, text)


def forget_all() -> None:
    """Forget every remembered value (tests only)."""
    global _pattern
    with _lock:
        _values.clear()
        _pattern = None


class MaskingFormatter(logging.Formatter):
    """A formatter whose every line, exception text included, is masked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))
