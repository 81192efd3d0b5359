"""How much memory this process may still take: the host's available memory, or its cgroup's
(a pod's limit) if that is lower. Linux only; None where it cannot be read."""

from __future__ import annotations

from pathlib import Path

_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")  # cgroup v2, as a container sees its own


def available_bytes() -> int | None:
    """The lower of the host's MemAvailable and the cgroup's limit less its use (a pod's free
    memory: /proc/meminfo shows the node's); None if neither can be read."""
    figures = [f for f in (_host_available(), _cgroup_available()) if f is not None]
    return min(figures) if figures else None


def _host_available() -> int | None:
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((_CGROUP / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None
