"""The benches' split of a process' CPU into its librdkafka threads (bench/common.py), read from a
/proc tree laid out as Linux lays it out."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest

from bench.common import LibrdkafkaCpu

TICK = 1 / os.sysconf("SC_CLK_TCK")


def stat_line(tid: int, name: str, utime: int, stime: int, start: int = 100) -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    # cutime cstime priority nice num_threads itrealvalue starttime ...
    return f"{tid} ({name}) S 1 1 1 0 -1 4194560 10 0 0 0 {utime} {stime} 0 0 20 0 9 0 {start} 0 0\n"


def write_threads(root: Path, pid: int, threads: dict[int, tuple[str, int, int]], start: int = 100) -> Path:
    for tid, (name, utime, stime) in threads.items():
        task = root / str(pid) / "task" / str(tid)
        task.mkdir(parents=True, exist_ok=True)
        (task / "stat").write_text(stat_line(tid, name, utime, stime, start))
        (task / "comm").write_text(name + "\n")
    return root


def test_only_the_threads_librdkafka_named_are_counted(tmp_path: Path) -> None:
    proc = write_threads(tmp_path, 42, {
        42: ("python", 500, 100),  # the main thread
        43: ("rdk:main", 3, 1),
        44: ("rdk:broker1", 40, 20),
        45: ("python", 70, 7),  # another Python thread
        46: ("with ) paren", 9, 9),  # a name with a parenthesis is not librdkafka's
    })
    assert LibrdkafkaCpu(42, proc)() == pytest.approx((3 + 1 + 40 + 20) * TICK)


def test_a_process_that_is_gone_reads_as_unknown(tmp_path: Path) -> None:
    assert math.isnan(LibrdkafkaCpu(42, tmp_path)())


def test_a_thread_that_ends_keeps_what_it_had_used_so_a_span_never_goes_negative(tmp_path: Path) -> None:
    proc = write_threads(tmp_path, 7, {8: ("rdk:broker1", 5, 5), 9: ("rdk:main", 1, 1)})
    reader = LibrdkafkaCpu(7, proc)
    before = reader()
    write_threads(proc, 7, {8: ("rdk:broker1", 6, 6)})  # used 2 more ticks, then ended
    shutil.rmtree(proc / "7" / "task" / "8")
    (proc / "7" / "task" / "10").mkdir()  # listed, its stat already gone
    assert reader() - before == 0.0  # what it used after the last reading is lost, nothing more
    write_threads(proc, 7, {9: ("rdk:main", 3, 1)})
    assert reader() - before == pytest.approx(2 * TICK)


def test_a_thread_id_handed_out_again_is_another_thread(tmp_path: Path) -> None:
    proc = write_threads(tmp_path, 7, {8: ("rdk:broker1", 50, 0)}, start=100)
    reader = LibrdkafkaCpu(7, proc)
    before = reader()
    write_threads(proc, 7, {8: ("rdk:broker2", 1, 0)}, start=900)  # the old 8 ended, a new one
    assert reader() - before == pytest.approx(1 * TICK)


def test_this_process_reads_without_a_pid() -> None:
    assert LibrdkafkaCpu()() >= 0.0
