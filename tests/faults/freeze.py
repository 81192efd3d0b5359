"""One thread of a live process stopped while its other threads run: a hung poll loop, made on
purpose. SIGSTOP stops every thread (librdkafka's heartbeats too: that is a crash to the group);
ptrace stops exactly one (PTRACE_SEIZE, then PTRACE_INTERRUPT), as a deadlock or a call that never
returns would, while librdkafka's own threads go on heartbeating."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_PTRACE_DETACH = 17
_PTRACE_SEIZE = 0x4206
_PTRACE_INTERRUPT = 0x4207
_WALL = 0x40000000  # waitpid's __WALL: a traced thread's stop is reported to its tracer

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def _ptrace(request: int, tid: int) -> None:
    if _libc.ptrace(request, tid, None, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"ptrace({request:#x}, {tid}): {os.strerror(errno)} (ptrace not permitted here?)")


# A thread stopped inside a librdkafka call is no hang to librdkafka: a consumer's poll that blocks
# counts as polling for max.poll.interval.ms (the first try here stopped the loop waiting in its
# poll, and the group kept its partitions for good). A hang is in the application's own code.
_LIBRDKAFKA = "librdkafka"
_TRIES = 2_000


@contextmanager
def frozen(pid: int) -> Iterator[int]:
    """The main thread of `pid` (its poll loop) stopped in its own code, not in a system call nor
    in librdkafka, inside the block; let go after it. Yields how many stops it took to find it
    there. Call from one thread only (ptrace's tracer is a thread), and do not poll the process
    for its exit meanwhile: each stop is taken here, so nothing else waits on it."""
    for attempt in range(1, _TRIES + 1):
        _ptrace(_PTRACE_SEIZE, pid)
        try:
            _ptrace(_PTRACE_INTERRUPT, pid)
            os.waitpid(pid, _WALL)  # the stop, taken: a Popen.poll() would read it as a status
            if _in_own_code(pid):
                yield attempt
                return
        finally:
            _ptrace(_PTRACE_DETACH, pid)
    raise AssertionError(f"the main thread of {pid} was in a system call or librdkafka in {_TRIES} stops")


def _in_own_code(pid: int) -> bool:
    """Whether the stopped thread is in user space (/proc's syscall is "-1 sp pc"), at an
    instruction of no librdkafka library."""
    fields = Path(f"/proc/{pid}/syscall").read_text().split()
    if not fields or fields[0] != "-1":
        return False
    pc = int(fields[-1], 16)
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        span, *rest = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in span.split("-"))
        if low <= pc < high:
            return _LIBRDKAFKA not in (rest[-1] if len(rest) == 5 else "")
    return False
