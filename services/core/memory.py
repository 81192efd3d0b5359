"""How much memory this process may still take: the host's available memory, or its cgroup's
(a pod's limit) if that is lower. Linux only; None where it cannot be read."""

from __future__ import annotations

from pathlib import Path

_MEMINFO = Path("/proc/meminfo")
# cgroup v2 (memory.max, memory.current) or v1 (memory.limit_in_bytes, memory.usage_in_bytes), as
# a container sees its own.
_CGROUP_V2 = Path("/sys/fs/cgroup")
_CGROUP_V1 = Path("/sys/fs/cgroup/memory")
_NO_LIMIT_V1 = 1 << 62  # v1 writes "no limit" as a number near 2^63


def available_bytes(v2: Path = _CGROUP_V2, v1: Path = _CGROUP_V1) -> int | None:
    """The lower of the host's MemAvailable and the cgroup's limit less its working set (a pod's
    free memory: /proc/meminfo shows the node's); None if neither can be read."""
    figures = [f for f in (_host_available(), _cgroup_available(v2, v1)) if f is not None]
    return min(figures) if figures else None


def _host_available() -> int | None:
    kilobytes = _figure(_MEMINFO, "MemAvailable:")
    return None if kilobytes is None else kilobytes * 1024


def _cgroup_available(v2: Path, v1: Path) -> int | None:
    """The limit less the working set: the use less the page cache the kernel can reclaim (its
    inactive files, as Kubernetes counts it). Counted with the cache, a pod whose cache had filled
    its limit read as having nothing free, and a range that fits was refused (a review)."""
    for limit_file, usage_file, inactive in ((v2 / "memory.max", v2 / "memory.current", "inactive_file"),
                                             (v1 / "memory.limit_in_bytes", v1 / "memory.usage_in_bytes",
                                              "total_inactive_file")):
        try:
            limit_text = limit_file.read_text().strip()
            limit = None if limit_text == "max" else int(limit_text)
            if limit is None or limit >= _NO_LIMIT_V1:
                return None
            used = int(usage_file.read_text().strip()) - (_figure(limit_file.parent / "memory.stat", inactive) or 0)
            return max(0, limit - max(0, used))
        except (OSError, ValueError):
            continue
    return None


def _figure(path: Path, key: str) -> int | None:
    """The number after `key` on its line of a `key value` file (/proc/meminfo, memory.stat); None
    if the file or the line is not there, or does not read as a number."""
    try:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == key:
                return int(parts[1])
    except (OSError, ValueError):
        pass
    return None
