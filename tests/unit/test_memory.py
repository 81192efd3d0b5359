"""How much memory a command may still take (services/core/memory.py), on cgroup files written here."""

from __future__ import annotations

from pathlib import Path

from services.core.memory import _cgroup_available, available_bytes

GIB = 2**30


def test_a_pods_page_cache_counts_as_free(tmp_path: Path) -> None:
    """A 2 GiB pod holding 0.2 GiB and 1.7 GiB of reclaimable cache read as 0.1 GiB free, and
    `compare` refused a range that fits (a review)."""
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text(f"{2 * GIB}\n")
    (v2 / "memory.current").write_text(f"{int(1.9 * GIB)}\n")
    (v2 / "memory.stat").write_text(f"anon {int(0.2 * GIB)}\ninactive_file {int(1.7 * GIB)}\n")
    assert available_bytes(v2, tmp_path / "none") == 2 * GIB - (int(1.9 * GIB) - int(1.7 * GIB))


def test_a_cgroup_v1_limit_is_read_and_no_limit_is_none(tmp_path: Path) -> None:
    """Only v2 was read: under v1 (this project's CI host) the guard never saw a pod's limit."""
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(f"{GIB}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{GIB // 2}\n")
    (v1 / "memory.stat").write_text(f"cache 1\ntotal_inactive_file {GIB // 4}\n")
    assert available_bytes(tmp_path / "none", v1) == GIB - GIB // 4
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert _cgroup_available(tmp_path / "none", v1) is None  # the host's MemAvailable alone then
