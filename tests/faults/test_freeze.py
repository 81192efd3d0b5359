"""The ptrace harness of the hang tests (freeze.py), on plain processes: no broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.freeze import _Gone, frozen
from tests.integration.harness import wait_until


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_busy_main_thread_is_stopped_in_its_own_code_and_let_go_after() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with frozen(busy, give_up_s=10.0) as stops:
            assert stops >= 1
            assert _state(busy.pid) == "t", "stopped by its tracer inside the block"
        wait_until(lambda: _state(busy.pid) in ("R", "S"), 10, "the process running again")
        assert busy.poll() is None
    finally:
        busy.kill()
        busy.wait(10)


def test_a_process_that_ended_before_a_stop_is_said_to_have_ended_not_that_ptrace_is_refused() -> None:
    """Its exit is not reaped while the harness holds the Popen's lock: a seize of the zombie
    fails with EPERM, and the failure said "ptrace not permitted here?" (a review)."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_until(lambda: _state(ended.pid) == "Z", 10, "the process ended, not yet reaped")
    with pytest.raises(_Gone, match="ended while being stopped"), frozen(ended, give_up_s=5.0):
        pass
    assert ended.returncode == 0, "its exit is handed to the Popen"
