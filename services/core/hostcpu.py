"""The whole host's CPU time from /proc/stat: how busy it was, and how much the hypervisor stole.

On a virtual machine the hypervisor may give our virtual CPUs' time to other guests ("steal"
time, the 8th number of /proc/stat's `cpu` line). Latency measured while a third of the CPU is
stolen says more about the neighbours than about the software, so the demo's table and the
benches print the share stolen beside their figures: a noisy run shows itself as one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CpuTimes:
    """Clock ticks summed over all CPUs since boot."""

    busy: int  # user + nice + system + irq + softirq (guest time is inside user already)
    steal: int
    total: int  # busy + idle + iowait + steal

    def minus(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.busy - other.busy, self.steal - other.steal, self.total - other.total)

    def plus(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.busy + other.busy, self.steal + other.steal, self.total + other.total)


@dataclass(frozen=True)
class CpuShare:
    """Percentages of the host's CPU time between two readings."""

    busy_pct: float
    steal_pct: float


def parse(text: str) -> CpuTimes | None:
    """The aggregate `cpu` line of /proc/stat's text; None if there is none or it is malformed."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            try:
                user, nice, system, idle, iowait, irq, softirq, *rest = (int(f) for f in fields[1:])
            except ValueError:
                return None
            steal = rest[0] if rest else 0  # kernels before 2.6.11 have no steal column
            busy = user + nice + system + irq + softirq
            return CpuTimes(busy, steal, busy + idle + iowait + steal)
    return None


def read(path: Path = PROC_STAT) -> CpuTimes | None:
    """Now; None where there is no /proc/stat (not Linux): the figure is then left out."""
    try:
        return parse(path.read_text())
    except OSError:
        return None


def share(ticks: CpuTimes) -> CpuShare | None:
    """`ticks` (a difference of readings) as percentages; None if no tick passed."""
    if ticks.total <= 0:
        return None
    return CpuShare(100.0 * ticks.busy / ticks.total, 100.0 * ticks.steal / ticks.total)


def between(before: CpuTimes | None, after: CpuTimes | None) -> CpuShare | None:
    """The shares between two readings; None if either is missing or no tick passed."""
    if before is None or after is None:
        return None
    return share(after.minus(before))
