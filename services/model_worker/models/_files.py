"""Helpers shared by the file-backed adapters (scikit-learn, onnx): version stamps and sidecars."""

from __future__ import annotations

import hashlib
import json
import os
from io import BufferedReader
from pathlib import Path

from services.core.errors import ModelSpecError
from services.core.signatures import Signature

SIDECAR_SUFFIX = ".features.json"


def stream_version(path: Path, opened: BufferedReader) -> str:
    """`<stem>-<first 8 hex of sha256>` of the file open as `opened` (the one loaded, whatever is at
    `path` now): changes whenever the file's bytes change."""
    opened.seek(0)
    return f"{path.stem}-{hashlib.file_digest(opened, 'sha256').hexdigest()[:8]}"


def opened_model_file(path: Path) -> BufferedReader:
    try:
        return path.open("rb")
    except OSError as err:
        raise ModelSpecError(f"model {str(path)!r}: cannot read it ({err.strerror or err})") from None


def same_file(opened: BufferedReader, path: Path) -> bool:
    """Whether `path` still names the file open as `opened`, unchanged (not renamed over, not written to)."""
    try:
        now = path.stat()
    except OSError:
        return False
    then = os.fstat(opened.fileno())
    return (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (then.st_dev, then.st_ino, then.st_size,
                                                                     then.st_mtime_ns)


def sidecar_paths(path: Path) -> list[Path]:
    """Where a feature-name sidecar may live: `model.joblib.features.json`, then `model.features.json`;
    for a model reached through a symbolic link (`current.skops -> v5/model.skops`), beside the
    link first, then beside the file it names: looked for beside the link alone, the sidecar of
    `v5/` was not found, and the model was served without its ranges, without a word (a review)."""
    named = [path, path.resolve()] if path.is_symlink() else [path]
    return [p.with_name(name + SIDECAR_SUFFIX) for p in named for name in (p.name, p.stem)]


def read_sidecar(path: Path) -> Signature | None:
    """The input contract in the model's sidecar JSON list, or None when there is no sidecar.

    Each entry is a feature name (required) or an object
    {"name": "age", "required": false, "default": 40.0, "minimum": 0, "maximum": 120}
    (see services/core/signatures.py).
    """
    for candidate in sidecar_paths(path):
        if candidate.is_file():
            break
    else:
        return None
    where = f"model {str(path)!r}: feature sidecar {str(candidate)!r}"
    example = '["mean_radius", {"name": "age", "default": 40.0}]'
    try:
        items = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelSpecError(f"{where}: cannot read it ({err}); it must be a JSON list like {example}") from err
    try:
        return Signature.from_records(items, where)
    except ModelSpecError as err:
        raise ModelSpecError(f"{err}; it must be a JSON list of distinct features like {example}") from None


def sidecar_hint(path: Path) -> str:
    return f"write its feature names, in column order, as a JSON list to {str(sidecar_paths(path)[0])!r}"
