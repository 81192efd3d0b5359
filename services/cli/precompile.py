"""`rendezvous precompile`: compile every numba loop of the services now, into numba's cache.

A service compiles its loops when it starts, unless the cache holds them (services/core/compiled.py):
5-15 s on two cores for the rendezvous, a model worker or the comparison service. An image runs
this command at build time, with NUMBA_CACHE_DIR set to a directory it ships and NUMBA_CPU_NAME=generic
(code for any x86-64), and names that directory in RDV_NUMBA_SEED: its containers then start with
the loops loaded, not compiled (deploy/Dockerfile).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from numba.core import config as numba_config

from services.core.errors import ConfigError

DESCRIPTION = (
    "Compiles the loops the rendezvous, the model workers and the comparison service compile when they start "
    "(5-15 s each on two cores), into numba's cache: NUMBA_CACHE_DIR if set and writable, else the "
    "package's __pycache__ if writable, else under the temp directory (in a directory named by the loops' "
    "digest). Run at an image's build with NUMBA_CPU_NAME=generic and RDV_NUMBA_SEED naming that cache at "
    "run time, containers start without compiling (deploy/Dockerfile). "
    "Prints how many were loaded from the cache and how many compiled."
)


def warm_every_loop() -> None:
    """Every service's warm-up: together they make ready every loop the services call."""
    from services.comparison import kernels
    from services.core import compiled_decode, compiled_requests
    from services.rendezvous import compiled_records

    compiled_records.warm_up()  # the rendezvous' walks of requests and scores
    compiled_requests.warm_up_features()  # a model worker's walk
    compiled_decode.warm_up()  # the comparison service's (and the report's) decoder
    kernels.warm_up()  # the comparison service's grouping


def cmd_precompile(_args: argparse.Namespace) -> int:
    from services.core import compiled

    directory = compiled.cache_directory()
    if directory is None:
        raise ConfigError("no writable directory for numba's cache (set NUMBA_CACHE_DIR to one): nothing would be kept")
    started = time.monotonic()
    warm_every_loop()
    loaded, made, inside = compiled.cache_counts()
    cpu = numba_config.CPU_NAME or "this host's"  # type: ignore[attr-defined]
    sys.stdout.write(f"numba cache {directory} (code for {cpu} CPU): {loaded} loops loaded from it, {made} compiled "
                     f"now, {inside} inside the loops that call them, in {time.monotonic() - started:.1f} s\n")
    return 0


def register(commands: Any, _selection: Any) -> None:
    parser = commands.add_parser("precompile", help="compile the services' numba loops into the cache now "
                                 "(images do it at build time)", description=DESCRIPTION)
    parser.set_defaults(handler=cmd_precompile)
