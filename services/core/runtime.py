"""Process plumbing every service shares: the wall clock, a stop flag and signal handling.

Signals only flip a flag (no work inside a handler); the service skeleton's poll loop
(services/core/service.py) sees it and returns, and everything closes through an ExitStack.
A second SIGINT/SIGTERM exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from types import FrameType

log = logging.getLogger(__name__)


def now_ms() -> int:
    """Wall clock in epoch milliseconds: the time base of the records we write (docs/architecture.md)."""
    return time.time_ns() // 1_000_000


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGINT/SIGTERM set `stop`; a second one ends the process immediately."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def stop_processes(processes: Iterable[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM every live child (they drain and commit), then SIGKILL whichever outlives `timeout`."""
    live = [p for p in processes if p.poll() is None]
    for proc in live:
        proc.terminate()
    for proc in live:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
