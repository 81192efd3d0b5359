"""Where numba's cache goes (services/core/compiled.py): never a directory it cannot write to."""

from __future__ import annotations

import ast
import importlib
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from services.core import compiled


def test_numba_cache_dir_when_writable_else_the_package_directory_else_ours_else_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(compiled, "PACKAGE", tmp_path / "package")  # its real cache is not touched
    in_package = tmp_path / "package" / "__pycache__" / "numba"
    writable: set[Path] = {in_package, tmp_path / "configured"}
    monkeypatch.setattr(compiled, "_writable", lambda directory: directory.parent in writable)
    monkeypatch.setattr(compiled.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(compiled.numba_config, "CACHE_DIR", str(tmp_path / "configured"))
    assert compiled._cache_dir("loops-1") == str(tmp_path / "configured" / "loops-1")  # set by the user: it wins
    writable = {in_package}
    assert compiled._cache_dir("loops-1") == str(in_package / "loops-1")
    ours = tmp_path / f"rendezvous-numba-{os.getuid()}"
    writable = {ours}
    assert compiled._cache_dir("loops-1") == str(ours / "loops-1")
    writable = set()
    assert compiled._cache_dir("loops-1") is None


def test_a_numba_cache_dir_that_cannot_be_written_is_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """It was passed over silently (the misconfiguration probe): whoever set it learnt nothing."""
    monkeypatch.setattr(compiled, "PACKAGE", tmp_path / "package")  # where it falls back to: not the real one
    monkeypatch.setattr(compiled.numba_config, "CACHE_DIR", str(tmp_path / "file" / "below"))
    (tmp_path / "file").write_text("")
    with caplog.at_level("WARNING", logger=compiled.__name__):
        assert compiled._cache_dir("loops-1") == str(tmp_path / "package" / "__pycache__" / "numba" / "loops-1")
    assert f"NUMBA_CACHE_DIR={tmp_path / 'file' / 'below'} is not a writable directory" in caplog.text


def test_an_edit_of_a_step_a_loop_inlines_from_another_file_starts_a_new_cache(tmp_path: Path) -> None:
    """numba keys a loop by its own file: an edit of avro_walk.py alone loaded the loops compiled
    before it (the walks inline its steps), until `make clean-numba`."""
    package = tmp_path / "package"
    for name in compiled.LOOP_FILES:
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_bytes((compiled.PACKAGE / name).read_bytes())
    before = compiled.loops_digest(package)
    assert before is not None and before == compiled.loops_digest()
    walk = package / "core" / "avro_walk.py"
    walk.write_text(walk.read_text() + "\n# an edit\n")
    after = compiled.loops_digest(package)
    assert after is not None and after != before and after.startswith(compiled.LOOPS_PREFIX)
    walk.unlink()
    assert compiled.loops_digest(package) is None  # no sources: no cache, as numba's own


def test_a_new_cache_removes_those_of_other_loops_nothing_wrote_to_for_a_day(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not those in use: a process saving to a cache whose directory went fails (a review)."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(compiled.numba_config, "CACHE_DIR", str(cache))
    day_old = time.time() - compiled.STALE_AFTER_S - 60
    for name, written in (("rendezvous-loops-old", day_old), ("rendezvous-loops-recent", time.time()),
                          ("someone-elses", day_old)):
        (cache / name / "core_ab").mkdir(parents=True)
        (cache / name / "core_ab" / "walks.nbi").write_bytes(b"index")
        for path in (cache / name / "core_ab" / "walks.nbi", cache / name / "core_ab", cache / name):
            os.utime(path, (written, written))
    assert compiled._cache_dir("rendezvous-loops-new") == str(cache / "rendezvous-loops-new")
    assert sorted(p.name for p in cache.iterdir()) == [
        "rendezvous-loops-new", "rendezvous-loops-recent", "someone-elses"]
    (cache / "rendezvous-loops-new" / "walks.nbi").write_bytes(b"new")
    assert compiled._cache_dir("rendezvous-loops-new") == str(cache / "rendezvous-loops-new")
    assert (cache / "rendezvous-loops-new" / "walks.nbi").read_bytes() == b"new"  # in use: kept as it is


def _files_a_loop_reads(loop: Any) -> set[Path]:
    """The loop's own file and that of every module of the project it takes a name from (a step
    it inlines, a constant numba freezes into its code)."""
    function = loop.py_func
    tree = ast.parse(Path(function.__code__.co_filename).read_text())
    imported = {alias.asname or alias.name: node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("services.")
                for alias in node.names}
    files = {Path(function.__code__.co_filename).resolve()}
    for name in function.__code__.co_names:
        value = function.__globals__.get(name)
        if isinstance(value, ModuleType) and value.__name__.startswith("services."):
            files.add(Path(str(value.__file__)).resolve())
        elif name in imported:
            files.add(Path(str(importlib.import_module(imported[name]).__file__)).resolve())
    return files


def test_every_file_a_loop_reads_starts_a_new_cache_when_edited() -> None:
    import services.comparison.kernels
    import services.core.compiled_decode
    import services.rendezvous.compiled_records  # noqa: F401 - with compiled_requests: every loop

    ours = [loop for loop in compiled.LOOPS if loop.py_func.__module__.startswith("services.")]
    read = set().union(*(_files_a_loop_reads(loop) for loop in ours))
    listed = {compiled.PACKAGE / name for name in compiled.LOOP_FILES}
    assert len(ours) >= 20 and compiled.PACKAGE / "core" / "comparison_columns.py" in read
    assert read <= listed, sorted(str(f) for f in read - listed)


def test_a_seed_is_taken_from_its_directory_for_these_loops(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seed, cache = tmp_path / "image", tmp_path / "container" / "loops-1"
    (seed / "loops-1" / "core_ab").mkdir(parents=True)
    (seed / "loops-1" / "core_ab" / "walks.walk-1.py311.nbi").write_bytes(b"index")
    (seed / "loops-0").mkdir()  # made by other code
    (seed / "loops-0" / "walks.walk-1.py311.nbi").write_bytes(b"stale")
    cache.mkdir(parents=True)
    monkeypatch.setenv(compiled.SEED_ENV, str(seed))
    compiled._seed(str(cache), "loops-1")
    assert [p.relative_to(cache).as_posix() for p in cache.rglob("*.nbi")] == ["core_ab/walks.walk-1.py311.nbi"]
    with caplog.at_level("WARNING", logger=compiled.__name__):
        compiled._seed(str(tmp_path / "other"), "loops-2")
    assert f"{compiled.SEED_ENV}={seed} holds no loops-2" in caplog.text
    assert not (tmp_path / "other").exists()


def test_a_seed_fills_in_the_cache_files_missing_and_keeps_the_others(tmp_path: Path) -> None:
    seed, cache = tmp_path / "seed", tmp_path / "cache"
    (seed / "core_ab").mkdir(parents=True)
    (seed / "core_ab" / "walks.walk-1.py311.nbi").write_bytes(b"index")
    (seed / "core_ab" / "walks.walk-1.py311.1.nbc").write_bytes(b"code")
    (seed / "core_ab" / "notes.txt").write_text("not numba's")
    (cache / "core_ab").mkdir(parents=True)
    (cache / "core_ab" / "walks.walk-1.py311.nbi").write_bytes(b"newer index")
    assert compiled.seed_cache(seed, cache) == 1
    assert (cache / "core_ab" / "walks.walk-1.py311.1.nbc").read_bytes() == b"code"
    assert (cache / "core_ab" / "walks.walk-1.py311.nbi").read_bytes() == b"newer index"
    names = sorted(p.name for p in (cache / "core_ab").iterdir())
    assert names == ["walks.walk-1.py311.1.nbc", "walks.walk-1.py311.nbi"]
    assert compiled.seed_cache(seed, cache) == 0  # nothing left to copy
    assert compiled.seed_cache(seed, seed) == 0  # a cache is not its own seed


def test_a_directory_that_cannot_be_made_is_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert not compiled._writable(blocker / "cache")
    assert compiled._writable(tmp_path / "cache")


def _calls_an_allocating_loop(loop: Any) -> list[str]:
    """The loops that make arrays which `loop`, compiled without reference counting, names."""
    if loop.targetoptions.get("_nrt", True):
        return []
    function = loop.py_func
    cells = [cell.cell_contents for cell in function.__closure__ or ()]
    named = [*(function.__globals__.get(name) for name in function.__code__.co_names), *cells]
    return [other.py_func.__name__ for other in named
            if any(other is made for made in compiled.LOOPS) and other.targetoptions.get("_nrt", True)]


def test_no_loop_without_reference_counting_calls_one_that_makes_arrays() -> None:
    """Such a call compiles, and leaks every array the callee makes (services/core/compiled.py)."""
    import services.comparison.kernels
    import services.core.compiled_decode
    import services.rendezvous.compiled_records  # noqa: F401 - with compiled_requests: every loop
    from services.core.compiled_requests import walk_request

    @compiled.compiled()
    def leaking(buf: Any) -> int:  # never called: compiled only at a first call
        return int(walk_request(buf, 0)[0])

    assert _calls_an_allocating_loop(leaking) == ["walk_request"]  # the check sees such a call
    loops = [loop for loop in compiled.LOOPS if loop is not leaking]
    assert len(loops) >= 20 and not any(_calls_an_allocating_loop(loop) for loop in loops)


def test_cache_counts_tell_loops_loaded_compiled_and_inside_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """numba counts a loop loaded only where it is called directly, and compiled wherever:
    `precompile` said 19 compiled on an empty cache, then "7 loaded", which read as 12 missing."""
    import types

    def loop(hits: int, misses: int) -> Any:
        stats = types.SimpleNamespace(cache_hits={"sig": hits}, cache_misses={"sig": misses})
        return types.SimpleNamespace(stats=stats)

    monkeypatch.setattr(compiled, "LOOPS", [loop(1, 0), loop(0, 0), loop(0, 0), loop(0, 2)])
    assert compiled.cache_counts() == (1, 1, 2)
