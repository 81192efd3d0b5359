"""Process plumbing every service shares: the wall clock, a stop flag and signal handling.

Signals only flip a flag (no work inside a handler); the service skeleton's poll loop
(services/core/service.py) sees it and returns, and everything closes through an ExitStack.
A second SIGINT/SIGTERM exits at once.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from functools import cache
from types import FrameType

log = logging.getLogger(__name__)


def now_ms() -> int:
    """Wall clock in epoch milliseconds: the time base of the records we write (docs/architecture.md)."""
    return time.time_ns() // 1_000_000


# Young-generation collections start after this many net container allocations (CPython: 700).
GC_YOUNG_THRESHOLD = 10_000


@cache  # once per process: tests and benches start several services in one
def tune_gc() -> None:
    """Collect less often, and never look at what start-up left, for a process that handles records.

    Every record a service handles allocates containers (decoded dicts, mailboxes, answers), and
    CPython's collector scans the young ones after every 700 net allocations, and now and then
    everything alive (a rendezvous remembers up to 200,000 answers for repeats: one full
    collection over them took 31 ms). At that default the rendezvous' work per request without
    Kafka spent a fifth of its CPU in the collector, at 10,000 a thirtieth; with Kafka, its
    thread's CPU per request fell by about a tenth (docs/benchmarks.md, "The collector").
    What start-up built (modules, schemas, models) lives as long as the process: frozen, the
    collector no longer walks it. Reference counting still frees every acyclic object at once;
    only cyclic garbage waits longer. What later services of the same process leave is not frozen.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


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
