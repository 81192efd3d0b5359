"""The host's CPU shares from /proc/stat text (no process needed)."""

from pathlib import Path

from services.core import hostcpu

# The aggregate line first, per-CPU lines and others after, as the kernel writes them.
STAT = """cpu  1000 50 300 8000 100 20 30 500 0 0
cpu0 500 25 150 4000 50 10 15 250 0 0
intr 12345 0 0
ctxt 999
"""


def test_the_aggregate_line_is_read_with_its_steal_column() -> None:
    times = hostcpu.parse(STAT)
    assert times == hostcpu.CpuTimes(busy=1000 + 50 + 300 + 20 + 30, steal=500, total=1400 + 8000 + 100 + 500)


def test_a_kernel_without_the_steal_column_reads_as_nothing_stolen() -> None:
    times = hostcpu.parse("cpu  10 0 10 80 0 0 0\n")
    assert times == hostcpu.CpuTimes(busy=20, steal=0, total=100)


def test_text_without_a_usable_cpu_line_gives_none() -> None:
    assert hostcpu.parse("intr 1 2 3\n") is None
    assert hostcpu.parse("cpu  10 x 10 80 0 0 0\n") is None
    assert hostcpu.parse("cpu  10 10\n") is None


def test_shares_between_two_readings() -> None:
    before = hostcpu.CpuTimes(busy=100, steal=10, total=1000)
    after = hostcpu.CpuTimes(busy=160, steal=40, total=1200)
    share = hostcpu.between(before, after)
    assert share == hostcpu.CpuShare(busy_pct=30.0, steal_pct=15.0)


def test_no_figure_without_both_readings_or_without_time_passing() -> None:
    reading = hostcpu.CpuTimes(busy=1, steal=0, total=10)
    assert hostcpu.between(None, reading) is None
    assert hostcpu.between(reading, None) is None
    assert hostcpu.between(reading, reading) is None


def test_sums_of_differences_make_one_share() -> None:
    first = hostcpu.CpuTimes(10, 0, 100).minus(hostcpu.CpuTimes(0, 0, 0))
    second = hostcpu.CpuTimes(90, 50, 300).minus(hostcpu.CpuTimes(40, 10, 200))
    assert hostcpu.share(first.plus(second)) == hostcpu.CpuShare(busy_pct=30.0, steal_pct=20.0)


def test_a_missing_file_gives_none(tmp_path: Path) -> None:
    assert hostcpu.read(tmp_path / "no-such-stat") is None


def test_this_hosts_file_is_read_when_there_is_one() -> None:
    if not hostcpu.PROC_STAT.exists():
        assert hostcpu.read() is None
        return
    times = hostcpu.read()
    assert times is not None and times.total >= times.busy + times.steal > 0
