"""Small OS helpers for the broker process: liveness by pid, group signalling, log tails."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

_PROC = Path("/proc")
_ERROR_LINE = re.compile(r"^\[[^]]+\] (ERROR|FATAL) |^Caused by: |^[\w.$]+(Exception|Error)\b")


def pid_alive(pid: int, *, must_contain: tuple[str, ...] = ()) -> bool:
    """True if `pid` runs (not a zombie) and, where /proc exists, its command line holds `must_contain`.

    The command-line check guards against a recycled pid after a reboot or a crash.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = _PROC / str(pid)
    if not _PROC.is_dir():
        return True
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[:1]
    if state == ["Z"]:
        return False
    return all(token in cmdline for token in must_contain)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group led by `pid` (the broker runs in its own session)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def wait_until(done: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `done` until it returns True or `timeout` seconds pass; returns its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def is_stack_frame(line: str) -> bool:
    return line.startswith(("\tat ", "\t... "))


def _read_end(path: Path) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode(errors="replace")
    except OSError:
        return []
    return [ln for ln in data.rstrip().splitlines() if not is_stack_frame(ln)]


def tail(path: Path, lines: int = 20) -> str:
    """Last `lines` lines of a text file without Java stack frames ('' if it does not exist)."""
    return "\n".join(_read_end(path)[-lines:])


def error_lines(path: Path, lines: int = 12) -> str:
    """The last `lines` distinct ERROR/FATAL log lines and exception causes of a log file."""
    found = dict.fromkeys(ln for ln in _read_end(path) if _ERROR_LINE.match(ln))  # dedupe, keep order
    return "\n".join(list(found)[-lines:])
