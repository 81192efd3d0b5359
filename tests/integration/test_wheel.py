"""The package works outside the checkout: a wheel installed into a fresh virtualenv runs the demo
from another directory (the schemas travel inside the package)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert done.returncode == 0, f"{args[:3]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def test_a_wheel_in_a_fresh_venv_runs_the_demo_from_another_directory(tmp_path: Path, bootstrap: str) -> None:
    dist, elsewhere = tmp_path / "dist", tmp_path / "elsewhere"
    elsewhere.mkdir()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)], tmp_path, 600)
    (wheel,) = dist.glob("rendezvous_serving-*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], tmp_path, 900)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RDV_SCHEMA_DIR", "VIRTUAL_ENV")}
    env["RDV_CACHE_DIR"] = str(tmp_path / "cache")
    located = run([str(python), "-c", "import services.core.codec as c; print(c.schemas_dir())"], elsewhere, 60, env)
    assert str(ROOT) not in located and "site-packages" in located, located
    output = run([str(tmp_path / "venv" / "bin" / "rendezvous"), "demo", "--duration", "6", "--rate", "50",
                  "--bootstrap", bootstrap, "--topic-prefix", f"w{uuid.uuid4().hex[:8]}.", "--metrics-base-port", "0"],
                 elsewhere, 300, env)
    assert "deadlines met" in output and "champion" in output, output[-2000:]
