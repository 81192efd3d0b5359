"""numba, set up once for every compiled loop of the project (`compiled`).

Compiled code is cached on disk, so that a process loads it in a fraction of a second instead of
compiling it for seconds. numba keeps it in __pycache__ next to the source, or in NUMBA_CACHE_DIR,
and where it can write to neither (a package installed by root and run as another user, as in
deploy/Dockerfile; a read-only root file system, as in the Helm chart's pods) it refuses to import
the module at all. So: the package's own directory when it is writable, else NUMBA_CACHE_DIR when
that is, else a directory of ours under the temp directory (/tmp, an emptyDir in the chart's pods),
else no cache: every process then compiles at start (seconds; the services do it before they
subscribe, see their `warm_up` calls).
"""

from __future__ import annotations

import logging
import os
import tempfile
from functools import partial
from pathlib import Path

from numba import njit
from numba.core import config as numba_config

log = logging.getLogger(__name__)


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _cache_dir() -> str | None:
    """Where numba is to cache ("" for its default, next to the sources), or None for nowhere."""
    if _writable(Path(__file__).resolve().parents[1]):
        return ""
    configured = numba_config.CACHE_DIR  # type: ignore[attr-defined]
    if configured and _writable(Path(configured)):
        return str(configured)
    ours = Path(tempfile.gettempdir()) / f"rendezvous-numba-{os.getuid()}"
    return str(ours) if _writable(ours) else None


_CACHE = _cache_dir()
if _CACHE:
    numba_config.CACHE_DIR = _CACHE  # type: ignore[attr-defined]
elif _CACHE is None:
    log.warning("no writable directory for numba's cache: compiled loops are compiled in every process")

# A loop compiled at its first call (or loaded from the cache), which runs without the GIL.
compiled = partial(njit, cache=_CACHE is not None, nogil=True)
