"""Where numba's cache goes (services/core/compiled.py): never a directory it cannot write to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.core import compiled


def test_the_package_directory_when_writable_else_ours_else_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    package = Path(compiled.__file__).resolve().parents[1]
    writable: set[Path] = {package}
    monkeypatch.setattr(compiled, "_writable", lambda directory: directory in writable)
    monkeypatch.setattr(compiled.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(compiled.numba_config, "CACHE_DIR", str(tmp_path / "configured"))
    assert compiled._cache_dir() == ""  # numba's default: __pycache__ next to the sources
    writable = {tmp_path / "configured"}
    assert compiled._cache_dir() == str(tmp_path / "configured")
    ours = tmp_path / f"rendezvous-numba-{os.getuid()}"
    writable = {ours}
    assert compiled._cache_dir() == str(ours)
    writable = set()
    assert compiled._cache_dir() is None


def test_a_directory_that_cannot_be_made_is_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert not compiled._writable(blocker / "cache")
    assert compiled._writable(tmp_path / "cache")
