"""`rendezvous precompile` makes a cache that a process started elsewhere loads instead of compiling
(as a container does from the one its image was built with: deploy/Dockerfile)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def precompile(env: dict[str, str]) -> tuple[int, int]:
    """(loaded, compiled) as the command reports them."""
    done = subprocess.run([sys.executable, "-m", "services.cli.main", "precompile"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"(\d+) loops loaded from it, (\d+) compiled now", done.stdout)
    assert found, done.stdout
    return int(found.group(1)), int(found.group(2))


def test_a_seeded_process_loads_every_loop_the_build_compiled(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_") and k != "RDV_NUMBA_SEED"}
    env["NUMBA_CPU_NAME"] = "generic"  # as the image: code for any x86-64
    built, compiled_at_build = precompile({**env, "NUMBA_CACHE_DIR": str(tmp_path / "image")})
    assert (built, compiled_at_build > 0) == (0, True)  # an empty cache: everything compiled
    loaded, compiled_at_start = precompile(
        {**env, "NUMBA_CACHE_DIR": str(tmp_path / "container"), "RDV_NUMBA_SEED": str(tmp_path / "image")})
    assert (loaded > 0, compiled_at_start) == (True, 0)
    assert not list((tmp_path / "container").rglob("*.part"))  # every copy renamed whole
