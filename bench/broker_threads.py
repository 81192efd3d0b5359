"""The broker's CPU by thread group: JIT compiler, GC, network threads, request handlers, ...

Per-thread CPU comes from /proc/<pid>/task/<tid>/stat (utime and stime), a thread's name from
/proc/<pid>/task/<tid>/comm. Linux cuts those names to 15 characters, and "data-plane-kafk" is
both the network threads and the request handlers; so when the JDK's `jcmd` is there, the full
Java thread names are read from `jcmd <pid> Thread.print` (its `nid` is the Linux thread id).
Call `java_thread_names` after the measured time: attaching costs the broker a little CPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# (group, pattern matched at the start of the full name or of the 15-character comm); first wins.
GROUPS: tuple[tuple[str, str], ...] = (
    ("JIT compiler", r"C\d CompilerThre|Sweeper thread"),
    ("GC + VM thread", r"GC Thread|G1 |VM Thread"),
    ("network threads", r"data-plane-kafka-(network-thread|socket-acceptor)"),
    ("request handlers", r"data-plane-kafka-request-handler"),
    ("network + request handlers", r"data-plane-kafk"),  # only the cut comm is known
    ("coordinators + purgatory", r"group-coord|transaction-|TxnMarker|AddPartitionsTo|ExpirationReape|share-"),
    ("KRaft controller + metadata", r"kafka-\d+-(raft|metad|snaps)|quorum-contr|controller-|broker-\d+-|raft-"),
    ("main (start-up)", r"(main|java)$"),
)
OTHER = "other"
ENDED = "(threads that ended, tick rounding)"
_NID = re.compile(r'^"(?P<name>.*)" .*\bnid=(?P<nid>0x[0-9a-fA-F]+)')


@dataclass(frozen=True)
class ThreadTimes:
    comm: str
    user_s: float
    system_s: float
    start: int = 0  # when the thread started (clock ticks after boot): an id the kernel reuses is another thread


def stat_fields(stat: Path) -> list[str]:
    """The fields of a /proc stat file after "(comm)" (a name may hold spaces and parentheses):
    utime, stime, cutime, cstime and starttime are [11], [12], [13], [14] and [19]."""
    return stat.read_text().rpartition(")")[2].split()


def thread_times(pid: int, proc: Path = Path("/proc")) -> dict[int, ThreadTimes]:
    """CPU seconds (user, system) of each live thread of `pid` since it started; {} if the process is gone."""
    tick = os.sysconf("SC_CLK_TCK")
    threads: dict[int, ThreadTimes] = {}
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return threads
    for task in tasks:
        try:  # utime, stime and starttime are fields 14, 15 and 22 of stat, counted after "(comm)"
            fields = stat_fields(task / "stat")
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended meanwhile
        threads[int(task.name)] = ThreadTimes(comm, int(fields[11]) / tick, int(fields[12]) / tick, int(fields[19]))
    return threads


def java_thread_names(pid: int) -> dict[int, str]:
    """{Linux thread id: full Java thread name} from `jcmd <pid> Thread.print`; {} without a JDK."""
    jcmd = shutil.which("jcmd")
    if jcmd is None:
        return {}
    try:
        out = subprocess.run([jcmd, str(pid), "Thread.print"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    names = {}
    for line in out.stdout.splitlines():
        found = _NID.match(line)
        if found:
            names[int(found["nid"], 16)] = found["name"]
    return names


def group_of(name: str) -> str:
    for group, pattern in GROUPS:
        if re.match(pattern, name):
            return group
    return OTHER


def by_group(
    before: Mapping[int, ThreadTimes],
    after: Mapping[int, ThreadTimes],
    names: Mapping[int, str],
    process_cpu_s: float | None = None,
) -> dict[str, dict[str, float]]:
    """CPU used between two snapshots per thread group: {group: {cpu_s, user_s, system_s, threads}}.

    Threads born in between count from zero. With `process_cpu_s` (the process's CPU over the
    same time), what the live threads do not explain is shown apart (threads that ended meanwhile).
    """
    groups: dict[str, dict[str, float]] = {}
    for tid, now in after.items():
        then = before.get(tid, ThreadTimes(now.comm, 0.0, 0.0))
        entry = groups.setdefault(group_of(names.get(tid, now.comm)),
                                  {"cpu_s": 0.0, "user_s": 0.0, "system_s": 0.0, "threads": 0})
        entry["user_s"] += now.user_s - then.user_s
        entry["system_s"] += now.system_s - then.system_s
        entry["cpu_s"] = entry["user_s"] + entry["system_s"]
        entry["threads"] += 1
    if process_cpu_s is not None:
        ended = process_cpu_s - sum(g["cpu_s"] for g in groups.values())
        if abs(ended) > 0.1:  # each thread's times are cut to clock ticks: small remainders are noise
            groups[ENDED] = {"cpu_s": ended, "user_s": float("nan"), "system_s": float("nan"), "threads": 0}
    return dict(sorted(groups.items(), key=lambda item: -item[1]["cpu_s"]))
