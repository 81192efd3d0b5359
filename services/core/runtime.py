"""Process plumbing every service shares: the wall clock, a stop flag and signal handling.

Signals only flip a flag (no work inside a handler); the service skeleton's poll loop
(services/core/service.py) sees it and returns, and everything closes through an ExitStack.
A second SIGINT/SIGTERM exits at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from types import FrameType
from typing import Any

from services.core.errors import Stopped, StoppedStarting

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


_interruptible: str | None = None  # what the process is doing that a stop ends it in, if anything


@contextmanager
def interruptible(what: str) -> Iterator[None]:
    """Run the block so that SIGTERM/SIGINT during it ends the process at once, exit status 0,
    its log saying 'asked to stop while `what`', instead of setting a stop flag looked at once
    the block is done.

    A model loading for minutes kept a SIGTERM waiting until it had loaded: past Kubernetes' grace
    period, the worker was SIGKILLed with nothing in its log. Nothing was read yet, so there is
    nothing to drain or commit. Nor is the block interrupted by an exception: a load's own code
    would run on (a `with ThreadPoolExecutor()` waits for its tasks; a review), and a load on
    another thread could set no signal handler of its own. The handler runs when the main thread
    next runs Python: a block in C code that never returns to Python still holds it off."""
    global _interruptible
    _interruptible = what  # first: a signal after the check below ends the process from its handler
    try:
        if stop_requested():
            raise StoppedStarting(f"asked to stop before {what}")
        yield
    finally:
        _interruptible = None


@dataclass
class WindUp:
    """Whether a command was asked to stop, and by which signal (`wind_up_on_first_signal`). Until
    `armed` (the command has begun the work it can report on), a signal stops it at once."""

    signum: int | None = None
    armed: bool = False
    cut: bool = False  # the command left work undone for it (a signal after the last step cut nothing)

    @property
    def asked(self) -> bool:
        return self.signum is not None


@contextmanager
def wind_up_on_first_signal(notice: str) -> Iterator[WindUp]:
    """Within the block, the first SIGINT/SIGTERM/SIGHUP only marks the command as asked to stop
    (it winds up at its next step and reports what it did), and `notice` is written to stderr;
    a second raises `Stopped` where the command is, as without the block. A long command stopped
    by one Ctrl-C otherwise threw away all it had done (a replay's hours of scoring). Outside the
    main thread, where no handler can be set, signals act as without it."""
    wind_up = WindUp()

    def handle(signum: int, _frame: FrameType | None) -> None:
        if wind_up.asked or not wind_up.armed:
            raise Stopped(signum)
        wind_up.signum = signum
        with contextlib.suppress(OSError):  # stderr gone (`| tee` ended by the same Ctrl-C): still wound up
            os.write(2, f"\n{notice}\n".encode())  # not `log`: its lock may be held where the signal came

    with signals_taken((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), handle):
        yield wind_up


@contextmanager
def signals_taken(signums: Iterable[signal.Signals], handler: Callable[[int, FrameType | None], None]
                  ) -> Iterator[None]:
    """`take_signals` within the block; the handlers it replaced put back after it."""
    before = take_signals(signums, handler)
    try:
        yield
    finally:
        for signum, replaced in before.items():
            if replaced is not None:  # None: set outside Python, and not one signal() takes back
                signal.signal(signum, replaced)


def take_signals(signums: Iterable[signal.Signals], handler: Callable[[int, FrameType | None], None]
                 ) -> dict[signal.Signals, Any]:
    """Set `handler` for each signal, and return the handlers it replaced (to put back). A
    terminal's signal (SIGINT, SIGHUP) the process was started ignoring stays ignored: `nohup`
    ignores SIGHUP and a shell's background job SIGINT, and a command taking them back died at the
    logout or at a Ctrl-C meant for the foreground (a review). SIGTERM is always taken: it is how a
    supervisor stops a process, whatever its parent ignored. Outside the main thread, where none
    can be set, it sets none."""
    before: dict[signal.Signals, Any] = {}
    for signum in signums:
        try:
            if signum != signal.SIGTERM and signal.getsignal(signum) is signal.SIG_IGN:
                continue
            before[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread
            break
    return before


def _exit_stopped(what: str) -> None:
    log.info("asked to stop while %s: stopping without waiting for it", what)
    logging.shutdown()
    os._exit(0)


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGINT/SIGTERM/SIGHUP set `stop`; a second one ends the process immediately."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()
        _stop_requested.set()
        if _interruptible is not None:
            _exit_stopped(_interruptible)

    # SIGHUP: its terminal closed, drain and commit, as for SIGTERM; unless started ignoring it
    # (`nohup`), as a background job ignores SIGINT (take_signals).
    take_signals((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), handle)


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
