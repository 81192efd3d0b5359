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


def opened_model_file(path: Path, named_as: Path) -> BufferedReader:
    """`path` open for reading; an error names the model as it was given (`named_as`)."""
    try:
        return path.open("rb")
    except OSError as err:
        raise ModelSpecError(f"model {str(named_as)!r}: cannot read it ({err.strerror or err})") from None


def resolved_model_path(path: Path) -> Path:
    """The file `path` names now, through every symbolic link: a model is loaded, and its sidecar
    read, from it, so that a link moved to another version meanwhile (`ln -sfn v6 current`) cannot
    pair one version's model with another's sidecar (a review)."""
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError) as err:  # RuntimeError: a loop of links
        raise ModelSpecError(f"model {str(path)!r}: cannot read it ({getattr(err, 'strerror', None) or err})") from None


def file_state(opened: BufferedReader) -> tuple[int, ...]:
    """What says a file changed: its identity, size and times (taken as it is opened)."""
    return _state(os.fstat(opened.fileno()))


def unchanged(state: tuple[int, ...], path: Path) -> bool:
    """Whether `path` names the file of `state` still, as it was then: not renamed over, not
    written to (unless within one tick of the file system's clock: only hashing it again is exact)."""
    try:
        return _state(path.stat()) == state
    except OSError:
        return False


def _state(info: os.stat_result) -> tuple[int, ...]:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def sidecar_paths(path: Path, named_as: Path | None = None) -> list[Path]:
    """Where a feature-name sidecar may live: `model.joblib.features.json`, then `model.features.json`,
    beside the model file `path`; for a model named through a symbolic link (`named_as`,
    `current.skops -> v5/model.skops`), beside the link after: looked for beside the link alone,
    the sidecar of `v5/` was not found, and the model was served without its ranges, without a
    word (a review). The file's own first: one beside the link stays as the link moves on."""
    named = [path] if named_as is None else [path, named_as]
    found = (p.absolute().with_name(name + SIDECAR_SUFFIX) for p in named for name in (p.name, p.stem))
    return list(dict.fromkeys(found))  # the name given may be the file itself (relative): each asked once


def read_sidecar(path: Path, named_as: Path | None = None) -> Signature | None:
    """The input contract in the model's sidecar JSON list, or None when there is no sidecar;
    `path` is the model file, `named_as` the name it was given (`sidecar_paths`).

    Each entry is a feature name (required) or an object
    {"name": "age", "required": false, "default": 40.0, "minimum": 0, "maximum": 120}
    (see services/core/signatures.py).
    """
    for candidate in sidecar_paths(path, named_as):
        if candidate.is_file():
            break
    else:
        return None
    where = f"model {str(named_as or path)!r}: feature sidecar {str(candidate)!r}"
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
