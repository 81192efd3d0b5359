"""The benches' CPU of a process (bench/common.py `cpu_seconds`) counts the processes it started:
a model worker's rescue process went uncounted in CPU per request."""

from __future__ import annotations

import math
import subprocess
import sys

from bench.common import cpu_seconds

# The child burns half a second of CPU, says so and waits; the parent (the process measured) only waits.
CHILD = "import sys, time\nwhile time.process_time() < 0.5: pass\nprint('burnt', flush=True)\nsys.stdin.read()\n"
PARENT = (f"import subprocess, sys\nchild = subprocess.Popen([sys.executable, '-c', {CHILD!r}], "
          "stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)\n"
          "print(child.stdout.readline().strip(), flush=True)\nsys.stdin.read()\n")


def test_the_cpu_of_a_process_includes_the_processes_it_started() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "burnt"
        assert cpu_seconds(parent.pid) >= 0.5
    finally:
        parent.kill()
        parent.wait()


def test_a_process_gone_reads_nan() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert math.isnan(cpu_seconds(gone.pid))
