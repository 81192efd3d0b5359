"""numba, set up once for every compiled loop of the project (`compiled`).

Compiled code is cached on disk, so a process loads it in a fraction of a second instead of
compiling for seconds. numba keeps it in __pycache__ next to the source and, where it cannot write
there (a package installed by root and run as another user: deploy/Dockerfile) nor in a home
directory, refuses to import the module at all: a directory of our own under the temp directory
then (/tmp, an emptyDir, in the Helm chart's read-only pods).
"""

from __future__ import annotations

import os
import tempfile
from functools import partial
from pathlib import Path

from numba import njit
from numba.core import config as numba_config

if not numba_config.CACHE_DIR and not os.access(Path(__file__).parent, os.W_OK):  # type: ignore[attr-defined]
    numba_config.CACHE_DIR = str(Path(tempfile.gettempdir()) / f"rendezvous-numba-{os.getuid()}")  # type: ignore[attr-defined]

# A loop compiled at its first call (or loaded from the cache), without the GIL's help needed.
compiled = partial(njit, cache=True, nogil=True)
