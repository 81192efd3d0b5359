"""One thread of a live process stopped while its other threads run: a hung poll loop, made on
purpose. SIGSTOP stops every thread (librdkafka's heartbeats too: that is a crash to the group);
ptrace stops exactly one (PTRACE_SEIZE, then PTRACE_INTERRUPT), as a deadlock or a call that never
returns would, while librdkafka's own threads go on heartbeating."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import random
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_PTRACE_DETACH = 17
_PTRACE_SEIZE = 0x4206
_PTRACE_INTERRUPT = 0x4207
_PTRACE_EVENT_STOP = 128  # status >> 16 of the stop PTRACE_INTERRUPT makes
_WALL = 0x40000000  # waitpid's __WALL: a traced thread's stop is reported to its tracer

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long

# A thread stopped inside a librdkafka call is no hang to librdkafka: a consumer's poll that blocks
# counts as polling for max.poll.interval.ms (the first try here stopped the loop waiting in its
# poll, and the group kept its partitions for good). A hang is in the application's own code.
_LIBRDKAFKA = "librdkafka"
# Between two stops the process runs for a moment. Stopped back to back, 2,000 stops in about 4 s
# found it outside its own code every time in a CI run (the likely cause: its main thread ran
# only in the gaps, and was found again in the wait it was stopped in); the failure now says
# where the stops found it.
_RUN_BETWEEN_S = (0.001, 0.01)


class _Gone(Exception):
    """The process ended while it was being stopped."""


def _ptrace(request: int, pid: int, data: int = 0) -> None:
    if _libc.ptrace(request, pid, None, ctypes.c_void_p(data)) != 0:
        code = ctypes.get_errno()
        hint = " (ptrace not permitted here?)" if code == errno.EPERM else ""
        raise OSError(code, f"ptrace({request:#x}, {pid}): {os.strerror(code)}{hint}")


@contextmanager
def frozen(process: subprocess.Popen[bytes], give_up_s: float) -> Iterator[int]:
    """The main thread of `process` (its poll loop) stopped in its own code, not in a system call
    nor under a librdkafka call, inside the block; let go after it. Yields how many stops it took
    to find it there; `AssertionError` after `give_up_s` of trying. Call from one thread only
    (ptrace's tracer is a thread). While it runs the Popen's own exit check is held off: a ptrace
    stop read by it would pass for an exit."""
    # CPython's Popen.poll() skips its waitpid while another holds this lock (a private name,
    # stable since 3.8): the stops are taken here, and an exit is handed back to it below.
    with process._waitpid_lock:  # type: ignore[attr-defined]
        missed: Counter[str] = Counter()
        give_up_at = time.monotonic() + give_up_s
        while time.monotonic() < give_up_at:
            signal = _stop(process)
            try:
                where = _where(process.pid) if signal == 0 else f"stopped for signal {signal}"
                if where == _OWN_CODE:
                    yield sum(missed.values()) + 1
                    return
                missed[where] += 1
            finally:
                _let_go(process, signal)
            time.sleep(random.uniform(*_RUN_BETWEEN_S))  # pacing the stops (above), not waiting for a condition
    raise AssertionError(f"the main thread of {process.pid} was never in its own code in {give_up_s:.0f} s: "
                         f"{dict(missed.most_common())}")


def _stop(process: subprocess.Popen[bytes]) -> int:
    """Seize and stop the main thread; 0 for the interrupt's own stop, else the signal it
    stopped for (handed back at the detach, not swallowed)."""
    try:
        _ptrace(_PTRACE_SEIZE, process.pid)
    except OSError:
        _raise_if_ended(process)  # between two stops (not reaped while the lock is held): no EPERM to explain
        raise
    try:
        _ptrace(_PTRACE_INTERRUPT, process.pid)
    except OSError:
        _let_go(process, 0)
        raise
    status = _taken(process)
    return 0 if status >> 16 == _PTRACE_EVENT_STOP else os.WSTOPSIG(status)


def _taken(process: subprocess.Popen[bytes]) -> int:
    """The thread's stop, taken (the status waitpid gives); an exit taken instead is handed to
    the Popen, whose own wait can no longer see it, and raised as `_Gone`."""
    _pid, status = os.waitpid(process.pid, _WALL)
    if not os.WIFSTOPPED(status):
        process.returncode = os.waitstatus_to_exitcode(status)
        raise _Gone(f"{process.pid} ended while being stopped ({process.returncode})")
    return status


def _let_go(process: subprocess.Popen[bytes], signal: int) -> None:
    """Detach; ESRCH is a process gone, or one seized and not stopped (an interrupt never made,
    or its stop never taken): that one is stopped first, as a detach needs."""
    pid = process.pid
    try:
        _ptrace(_PTRACE_DETACH, pid, signal)
    except OSError as err:
        if err.errno != errno.ESRCH:
            raise
        if not _traced_by_us(pid):
            return
        with contextlib.suppress(ProcessLookupError, _Gone):  # one ending now: its exit is the Popen's
            _ptrace(_PTRACE_INTERRUPT, pid)
            _taken(process)
            _ptrace(_PTRACE_DETACH, pid, signal)


def _raise_if_ended(process: subprocess.Popen[bytes]) -> None:
    """`_Gone`, its exit handed to the Popen, if the process has ended."""
    pid, status = os.waitpid(process.pid, os.WNOHANG)
    if pid == process.pid:
        process.returncode = os.waitstatus_to_exitcode(status)
        raise _Gone(f"{process.pid} ended while being stopped ({process.returncode})")


def _traced_by_us(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("State", "").split()[:1] in (["Z"], ["X"]):  # ended, not yet reaped
        return False
    return fields.get("TracerPid", "").strip() == str(threading.get_native_id())  # the tracer is a thread: this one


_OWN_CODE = "own code"


def _where(pid: int) -> str:
    """`_OWN_CODE` when the stopped thread is in user space (/proc's syscall is "-1 sp pc") with no
    librdkafka code at its instruction nor among the return addresses on its stack (a stop at a
    libc call librdkafka made is inside librdkafka's call: a review saw 19 of 50 so); else where
    it is instead. A stale word of an earlier call may refuse a good stop; the caller stops it again."""
    fields = Path(f"/proc/{pid}/syscall").read_text().split()
    if not fields or fields[0] != "-1":
        return f"system call {fields[0] if fields else '?'}"
    sp, pc = int(fields[-2], 16), int(fields[-1], 16)
    code, stack_end = _librdkafka_code_and_stack_end(pid, sp)
    if stack_end is None:
        return "stack not found"
    if any(low <= pc < high for low, high in code):
        return "in librdkafka"
    with open(f"/proc/{pid}/mem", "rb") as memory:  # readable by the tracer
        memory.seek(sp)
        words = memory.read(stack_end - sp)
    usable = len(words) // 8 * 8
    called = any(low <= word < high for (word,) in struct.iter_unpack("<Q", words[:usable]) for low, high in code)
    return "under a librdkafka call" if called else _OWN_CODE


def _librdkafka_code_and_stack_end(pid: int, sp: int) -> tuple[list[tuple[int, int]], int | None]:
    code, stack_end = [], None
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        span, perms, *rest = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in span.split("-"))
        if _LIBRDKAFKA in (rest[-1] if len(rest) == 4 else "") and "x" in perms:
            code.append((low, high))
        if low <= sp < high:
            stack_end = high
    return code, stack_end
