"""numba, set up once for every compiled loop of the project (`compiled`).

Compiled code is cached on disk, so that a process loads it in a fraction of a second instead of
compiling it for seconds. numba refuses to import a module whose loops it cannot cache where it
was told to (a package installed by root and run as another user, as in deploy/Dockerfile; a
read-only root file system, as in the Helm chart's pods). So: NUMBA_CACHE_DIR when it is set and
writable, else the package's own __pycache__ when that is, else a directory of ours under the
temp directory (/tmp, an emptyDir in the chart's pods), else no cache: every process then
compiles at start (seconds; the services do it before they subscribe, see their `warm_up` calls).

Within that directory the cache lives in `rendezvous-loops-<digest>`, the digest of the loops'
source files (LOOP_FILES): numba keys a loop by its own file alone, so a change to a step it
inlines from another file, to a constant it reads from one, or to the flags `compiled` sets would
otherwise load the code compiled before the change. A new digest starts an empty directory, and
removes those of other digests beside it that nothing was written to for a day (STALE_AFTER_S).

A cache made ahead of time (`rendezvous precompile`, which the image runs at build) seeds the
cache directory of a process that starts without one: RDV_NUMBA_SEED names it, and its files are
copied in before the first loop is loaded (numba only uses a cache it can write to). Code compiled
for one CPU is used only on that CPU model; with NUMBA_CPU_NAME=generic (the image) it is used on
any x86-64.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from numba import njit
from numba.core import config as numba_config
from numba.core.cpu import CPUTargetOptions

log = logging.getLogger(__name__)

SEED_ENV = "RDV_NUMBA_SEED"
CACHE_FILES = (".nbi", ".nbc")  # numba's index of a function's compiled versions, and each version
PACKAGE = Path(__file__).resolve().parents[1]
# Every file holding a compiled loop, a step one inlines or a constant one reads (numba freezes
# it into the code), under PACKAGE; this one for its flags. tests/unit/test_compiled_cache.py
# checks that every such file is here.
LOOP_FILES = ("core/compiled.py", "core/avro_walk.py", "core/compiled_requests.py", "core/compiled_decode.py",
              "core/comparison_columns.py", "rendezvous/compiled_records.py", "comparison/kernels.py")
LOOPS_PREFIX = "rendezvous-loops-"
# Caches of other loops (another version, another checkout) are removed once nothing was written
# to them for this long. Not sooner: a process using one may still save to it (numba fails the
# call if the directory goes meanwhile), and two versions taking turns on one host would each
# compile at every start.
STALE_AFTER_S = 86_400.0


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def loops_digest(package: Path = PACKAGE) -> str | None:
    """The name of the cache's directory for the loops as their files are now; None if a file
    cannot be read (an install without sources, where numba could not cache either)."""
    digest = hashlib.blake2b(digest_size=8)
    try:
        for name in LOOP_FILES:
            digest.update(name.encode() + b"\0" + (package / name).read_bytes() + b"\0")
    except OSError as err:
        log.warning("the compiled loops' sources cannot be read (%s): they are compiled in every process", err)
        return None
    return LOOPS_PREFIX + digest.hexdigest()


def _cache_dir(loops: str) -> str | None:
    """Where numba is to cache the loops named `loops` (loops_digest): under NUMBA_CACHE_DIR when
    it is writable, else under the package's __pycache__, else under a directory of ours in the
    temp directory; None for nowhere."""
    configured = numba_config.CACHE_DIR  # type: ignore[attr-defined]
    ours = [PACKAGE / "__pycache__" / "numba", Path(tempfile.gettempdir()) / f"rendezvous-numba-{os.getuid()}"]
    for base in [Path(configured), *ours] if configured else ours:
        cache = base / loops
        new = not cache.is_dir()
        if _writable(cache):
            if new:
                _remove_stale(base, cache)
            return str(cache)
        if configured and base == Path(configured):  # said: the operator set it for a reason
            log.warning("NUMBA_CACHE_DIR=%s is not a writable directory: compiled loops are cached elsewhere",
                        configured)
    return None


def _remove_stale(base: Path, keep: Path) -> None:
    horizon = time.time() - STALE_AFTER_S
    for other in base.glob(LOOPS_PREFIX + "*"):
        if other != keep and _last_written(other) < horizon:
            shutil.rmtree(other, ignore_errors=True)


def _last_written(directory: Path) -> float:
    """When anything under `directory` was last written (now, if another process moves it meanwhile)."""
    try:
        return max((path.stat().st_mtime for path in directory.rglob("*")), default=directory.stat().st_mtime)
    except OSError:
        return time.time()


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


def _seed(cache: str, loops: str) -> None:
    seed = os.environ.get(SEED_ENV, "")
    if not seed:
        return
    if not (Path(seed) / loops).is_dir():
        log.warning("%s=%s holds no %s (made by other code, or no directory): compiled loops are compiled "
                    "where the cache lacks them", SEED_ENV, seed, loops)
        return
    try:
        copied = seed_cache(Path(seed) / loops, Path(cache))
    except OSError as err:
        log.warning("numba's cache not seeded from %s (%s): compiled loops are compiled where it lacks them",
                    seed, err)
        return
    if copied:
        log.info("numba's cache %s seeded with %d files from %s", cache, copied, seed)


_LOOPS_NAME = loops_digest()
_CACHE = _cache_dir(_LOOPS_NAME) if _LOOPS_NAME else None
if _CACHE and _LOOPS_NAME:
    numba_config.CACHE_DIR = _CACHE  # type: ignore[attr-defined]
    _seed(_CACHE, _LOOPS_NAME)
elif _LOOPS_NAME:
    log.warning("no writable directory for numba's cache: compiled loops are compiled in every process")

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

    numba's cache keys a loop by its own file: a loop in a new file must be added to LOOP_FILES,
    whose digest names the cache (a change to a step inlined from another file, or to these flags,
    then starts a new cache)."""

    def compile_later(function: Callable[..., Any]) -> Any:
        flags = {"cache": _CACHE is not None, "nogil": True}
        if _NRT_OPTION:
            flags["_nrt"] = allocates
        loop = njit(**{**flags, **options})(function)
        LOOPS.append(loop)
        return loop

    return compile_later


def cache_directory() -> str | None:
    """The directory numba caches in, None when it cannot cache."""
    return _CACHE


def cache_counts() -> tuple[int, int, int]:
    """Of the loops made ready in this process so far: how many were loaded from the cache, how
    many compiled, and how many neither (loaded inside the loops that call them: numba counts a
    loop loaded only where it is called directly, but compiled wherever; "7 loaded" after "19
    compiled" read as 12 missing; a review)."""
    loaded = compiled = 0
    for loop in LOOPS:
        stats = loop.stats
        if sum(stats.cache_misses.values()):
            compiled += 1
        elif sum(stats.cache_hits.values()):
            loaded += 1
    return loaded, compiled, len(LOOPS) - loaded - compiled
