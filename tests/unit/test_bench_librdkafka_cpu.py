"""The benches' split of a process' CPU into its librdkafka threads (bench/common.py), read from a
/proc tree laid out as Linux lays it out."""

from __future__ import annotations

import math
import os
from pathlib import Path

from bench.common import librdkafka_seconds


def stat_line(tid: int, name: str, utime: int, stime: int) -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    return f"{tid} ({name}) S 1 1 1 0 -1 4194560 10 0 0 0 {utime} {stime} 0 0 20 0 9 0 100 0 0\n"


def proc_tree(root: Path, pid: int, threads: dict[int, tuple[str, int, int]]) -> Path:
    for tid, (name, utime, stime) in threads.items():
        task = root / str(pid) / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "stat").write_text(stat_line(tid, name, utime, stime))
    return root


def test_only_the_threads_librdkafka_named_are_counted(tmp_path: Path) -> None:
    proc = proc_tree(tmp_path, 42, {
        42: ("python", 500, 100),  # the main thread
        43: ("rdk:main", 3, 1),
        44: ("rdk:broker1", 40, 20),
        45: ("python", 70, 7),  # another Python thread
        46: ("with ) paren", 9, 9),  # a name with a parenthesis is not librdkafka's
    })
    assert librdkafka_seconds(42, proc) == (3 + 1 + 40 + 20) / os.sysconf("SC_CLK_TCK")


def test_a_process_that_is_gone_reads_as_unknown(tmp_path: Path) -> None:
    assert math.isnan(librdkafka_seconds(42, tmp_path))


def test_a_thread_that_ended_while_read_is_left_out(tmp_path: Path) -> None:
    proc = proc_tree(tmp_path, 7, {8: ("rdk:broker1", 5, 5)})
    (proc / "7" / "task" / "9").mkdir()  # listed, its stat already gone
    assert librdkafka_seconds(7, proc) == 10 / os.sysconf("SC_CLK_TCK")


def test_this_process_reads_without_a_pid() -> None:
    assert librdkafka_seconds() >= 0.0
