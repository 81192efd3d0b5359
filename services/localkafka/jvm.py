"""The broker's JVM command-line options, and `RDV_BROKER_JVM_OPTS` for experiments.

Pure: nothing here starts a process.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from services.core.errors import ConfigError

JVM_OPTS_ENV = "RDV_BROKER_JVM_OPTS"

# C1 only (TieredStopAtLevel=1): a single-node broker on a small machine spent about half its CPU
# in the C2 compiler threads during the first minutes; without them the bench at 200 req/s met
# more deadlines in each of three paired runs (100/93/97% vs 96/93/74%) at lower broker CPU.
# Peak throughput of long-running code is lower: this broker is for laptops, CI and demos.
# The heap starts at its maximum: G1 sizes the young generation from the heap it has, and from
# 256 MB it collected twice as often (each pause as long, 15-30 ms; at 500 req/s 9-11 pauses,
# 174-198 ms in all, against 5-6 and 63-103 ms in 30 s; docs/benchmarks.md).
DEFAULT_JVM_OPTIONS: tuple[str, ...] = (
    "-Xms512m",
    "-Xmx512m",
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseG1GC",
    "-Djava.awt.headless=true",
    "-XX:+ExitOnOutOfMemoryError",
)
# The storage tool runs for a second: a quick-start JIT is all it needs.
TOOL_JVM_OPTIONS: tuple[str, ...] = (
    "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
)  # fmt: skip


# The collectors a -XX:+Use...GC option chooses (others of that shape, e.g.
# -XX:+UseAdaptiveSizePolicyWithSystemGC, are tuning: they dropped G1 without a word, a review).
_COLLECTORS = frozenset({"-XX:+UseG1GC", "-XX:+UseSerialGC", "-XX:+UseParallelGC", "-XX:+UseZGC",
                         "-XX:+UseShenandoahGC", "-XX:+UseEpsilonGC"})


def _is_gc_choice(option: str) -> bool:
    return option in _COLLECTORS


def _is_heap_size(option: str) -> bool:
    return option.startswith(("-Xms", "-Xmx"))


def with_overrides(defaults: Sequence[str], extra: str | None) -> tuple[str, ...]:
    """`defaults` followed by the shell-split `extra` (e.g. `$RDV_BROKER_JVM_OPTS`).

    The JVM takes the last of repeated options (`-Xmx`, `-XX:...`), so appending overrides. The
    collector cannot be repeated: one chosen in `extra` drops the default one. Nor can the heap be
    set in part: a `-Xmx256m` after the default `-Xms512m` was refused by the JVM (an initial heap
    above the maximum), so a heap size in `extra` drops both default ones.
    """
    try:
        added = shlex.split(extra or "")
    except ValueError as exc:  # e.g. an unclosed quote
        raise ConfigError(f"{JVM_OPTS_ENV}: {exc}") from None
    base = [o for o in defaults if not (_is_gc_choice(o) and any(map(_is_gc_choice, added)))
            and not (_is_heap_size(o) and any(map(_is_heap_size, added)))]
    return (*base, *added)
