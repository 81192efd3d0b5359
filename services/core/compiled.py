"""numba, set up once for every compiled loop of the project (`compiled`).

Compiled code is cached on disk, so that a process loads it in a fraction of a second instead of
compiling it for seconds. numba keeps it in __pycache__ next to the source, or in NUMBA_CACHE_DIR,
and where it can write to neither (a package installed by root and run as another user, as in
deploy/Dockerfile; a read-only root file system, as in the Helm chart's pods) it refuses to import
the module at all. So: NUMBA_CACHE_DIR when it is set and writable, else the package's own
directory when that is, else a directory of ours under the temp directory (/tmp, an emptyDir in
the chart's pods), else no cache: every process then compiles at start (seconds; the services do
it before they subscribe, see their `warm_up` calls).

A cache made ahead of time (`rendezvous precompile`, which the image runs at build) seeds the
cache directory of a process that starts without one: RDV_NUMBA_SEED names it, and its files are
copied in before the first loop is loaded (numba only uses a cache it can write to). Code compiled
for one CPU is used only on that CPU model; with NUMBA_CPU_NAME=generic (the image) it is used on
any x86-64.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from numba import njit
from numba.core import config as numba_config
from numba.core.cpu import CPUTargetOptions

log = logging.getLogger(__name__)

SEED_ENV = "RDV_NUMBA_SEED"
CACHE_FILES = (".nbi", ".nbc")  # numba's index of a function's compiled versions, and each version


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _cache_dir() -> str | None:
    """Where numba is to cache ("" for its default, next to the sources), or None for nowhere."""
    configured = numba_config.CACHE_DIR  # type: ignore[attr-defined]
    if configured and _writable(Path(configured)):
        return str(configured)
    if configured:  # said, not silent: the operator set it for a reason (a read-only image, a shared cache)
        log.warning("NUMBA_CACHE_DIR=%s is not a writable directory: compiled loops are cached elsewhere", configured)
    if _writable(Path(__file__).resolve().parents[1]):
        return ""
    ours = Path(tempfile.gettempdir()) / f"rendezvous-numba-{os.getuid()}"
    return str(ours) if _writable(ours) else None


def seed_cache(seed: Path, cache: Path) -> int:
    """Copy the compiled code cached under `seed` into `cache` (the same layout: both are a
    NUMBA_CACHE_DIR), keeping the files already there; how many files were copied. Each file
    appears whole (copied under a temporary name, then renamed): another process starting at the
    same time reads the old state or the new one, never half a file."""
    if seed.resolve() == cache.resolve():
        return 0
    copied = 0
    for source in sorted(seed.rglob("*")):
        target = cache / source.relative_to(seed)
        if source.suffix not in CACHE_FILES or not source.is_file() or target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
        copied += 1
    return copied


def _seed(cache: str | None) -> None:
    seed = os.environ.get(SEED_ENV, "")
    if not seed or not cache:  # nothing to seed from, or numba's own in-tree cache (its own layout)
        return
    if not Path(seed).is_dir():
        log.warning("%s=%s is no directory: compiled loops are compiled where the cache lacks them", SEED_ENV, seed)
        return
    try:
        copied = seed_cache(Path(seed), Path(cache))
    except OSError as err:
        log.warning("numba's cache not seeded from %s (%s): compiled loops are compiled where it lacks them",
                    seed, err)
        return
    if copied:
        log.info("numba's cache %s seeded with %d files from %s", cache, copied, seed)


_CACHE = _cache_dir()
if _CACHE:
    numba_config.CACHE_DIR = _CACHE  # type: ignore[attr-defined]
elif _CACHE is None:
    log.warning("no writable directory for numba's cache: compiled loops are compiled in every process")
_seed(_CACHE)

LOOPS: list[Any] = []  # every loop made by `compiled`, for `cache_counts`
# A numba without the option (it is underscore-named) runs every loop with reference counting:
# slower, never wrong, and said once.
_NRT_OPTION = hasattr(CPUTargetOptions, "_nrt")
if not _NRT_OPTION:
    log.warning("this numba has no _nrt option: compiled loops run with reference counting (slower)")


def compiled(*, allocates: bool = False, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """A loop compiled at its first call (or loaded from the cache), which runs without the GIL.

    A loop that makes no array (`allocates` False: it only reads and writes those it is given)
    runs without numba's reference counting (its `jit` target option `_nrt`, underscore-named;
    numba's own tests turn it off so): with it, every array a step takes (`avro_walk.varint(buf,
    ...)`, inlined dozens of times per record) is counted in and out with atomic operations that
    the optimiser cannot remove across the walks' many exits. They were nearly three quarters of
    the comparison walk's time (1.05 against 0.30 µs a record) and half of the request walk's (2.2
    against 1.1 µs). Without it, making an array fails at compile time. Two things compile and
    then fail at run time, so such a loop must do neither: return an array (called from a loop
    that counts, it is freed twice) or call a loop that makes one (it is never freed);
    tests/unit/test_compiled_cache.py checks the second.

    numba's cache keys a loop by its own file's contents and bytecode: not by these flags, nor
    by the files of the steps it inlines or calls. After changing either, `make clean-numba`."""

    def compile_later(function: Callable[..., Any]) -> Any:
        flags = {"cache": _CACHE is not None, "nogil": True}
        if _NRT_OPTION:
            flags["_nrt"] = allocates
        loop = njit(**{**flags, **options})(function)
        LOOPS.append(loop)
        return loop

    return compile_later


def cache_directory() -> str | None:
    """The directory numba caches in ("" for next to the sources), None when it cannot cache."""
    return _CACHE


def cache_counts() -> tuple[int, int]:
    """(loaded from the cache, compiled) versions of every loop made ready in this process so far."""
    stats = [loop.stats for loop in LOOPS]
    return sum(sum(s.cache_hits.values()) for s in stats), sum(sum(s.cache_misses.values()) for s in stats)
