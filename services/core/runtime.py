"""Process plumbing every service shares: the wall clock, a stop flag and signal handling.

Signals only flip a flag (no work inside a handler); the service skeleton's poll loop
(services/core/service.py) sees it and returns, and everything closes through an ExitStack.
A second SIGINT/SIGTERM exits at once.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from functools import cache
from types import FrameType
from typing import TypeVar, cast

from services.core.errors import StoppedStarting

log = logging.getLogger(__name__)


# No request of this system was created before 2000-01-01: an earlier created_at (1970 + seconds,
# a client's clock not set) is no time a report, a window or a dashboard can be made of.
EARLIEST_PLAUSIBLE_MS = 946_684_800_000
EARLIEST_PLAUSIBLE_YEAR = 2000


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


# Set with the service's own stop flag by the handlers below: waits that come before a service's
# poll loop (for a broker, above all) read it here instead of being handed the flag.
_stop_requested = threading.Event()


def stop_requested() -> bool:
    """True once SIGINT/SIGTERM reached a process that installed `install_signal_handlers`."""
    return _stop_requested.is_set()


T = TypeVar("T")
_STOP_LOOK_S = 0.2  # how often `unless_stopped` looks at the stop flag: one Event cannot wait on two


def unless_stopped(work: Callable[[], T], what: str) -> T:
    """`work()`'s result, worked out in a daemon thread while this one waits for it, or raise
    `StoppedStarting` once SIGTERM/SIGINT came (`what` says what was being done).

    A model loading for minutes kept a SIGTERM waiting until it had loaded (Python runs a signal's
    handler between bytecodes of the main thread, and a stop flag is looked at only after): past
    Kubernetes' grace period, the worker was SIGKILLed with nothing in its log. Nothing was read
    yet, so there is nothing to drain; the thread is left to the process' exit."""
    outcome: list[tuple[bool, object]] = []
    done = threading.Event()

    def call() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which raises it
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=call, name="rdv-starting", daemon=True).start()
    while not done.wait(_STOP_LOOK_S):
        if stop_requested():
            raise StoppedStarting(f"asked to stop while {what}: stopping without waiting for it")
    ok, value = outcome[0]
    if not ok:
        raise cast(BaseException, value)
    return cast(T, value)


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGINT/SIGTERM/SIGHUP set `stop`; a second one ends the process immediately."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()
        _stop_requested.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGHUP, handle)  # its terminal closed: drain and commit, as for SIGTERM


# Set by services/cli/spawn.py in the children of a command (the demo's services): the pid they
# stop with. Read once, at start (`stop_with_parent`).
PARENT_PID_ENV = "RDV_STOP_WITH_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> bool:
    """Have the kernel send this process SIGTERM when the thread that forked it ends; whether it
    could (Linux only). Async-signal-safe enough for a `preexec_fn`: one libc call."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # no libc prctl: not Linux
        return False


def stop_with_parent() -> None:
    """In a child of a command that started it (the demo's services): be sent SIGTERM (drain,
    commit, exit) when that command dies, even by SIGKILL, which runs no clean-up of its own.

    Linux only (prctl); elsewhere the children outlive a killed parent as before. The kernel sends
    the signal when the *thread* that forked us ends: the commands spawn from their main thread.
    The parent may have died before this call: then there is no one to wait for, and we stop."""
    parent = os.environ.pop(PARENT_PID_ENV, "")  # not handed on to our own children
    if not parent.isdigit() or not die_with_parent():
        return
    if os.getppid() != int(parent):
        log.warning("the command that started this process (pid %s) has already exited: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)


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
