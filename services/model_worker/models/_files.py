"""Helpers shared by the file-backed adapters (joblib, onnx): version stamps and sidecars."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from services.core.errors import ModelSpecError

SIDECAR_SUFFIX = ".features.json"


def file_version(path: Path) -> str:
    """`<stem>-<first 8 hex of sha256>`: changes whenever the file's bytes change."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{path.stem}-{digest.hexdigest()[:8]}"


def sidecar_paths(path: Path) -> tuple[Path, Path]:
    """Where a feature-name sidecar may live: `model.joblib.features.json`, then `model.features.json`."""
    return path.with_name(path.name + SIDECAR_SUFFIX), path.with_name(path.stem + SIDECAR_SUFFIX)


def read_sidecar(path: Path) -> tuple[str, ...] | None:
    """Feature names from the model's sidecar JSON list, or None when there is no sidecar."""
    for candidate in sidecar_paths(path):
        if candidate.is_file():
            break
    else:
        return None
    try:
        names = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelSpecError(
            f"model {str(path)!r}: cannot read feature sidecar {str(candidate)!r} ({err}); "
            'it must be a JSON list of feature names, e.g. ["mean_radius", "mean_texture"]'
        ) from err
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise ModelSpecError(
            f"model {str(path)!r}: feature sidecar {str(candidate)!r} must be a non-empty JSON list of "
            'distinct feature-name strings, e.g. ["mean_radius", "mean_texture"]'
        )
    return tuple(names)


def sidecar_hint(path: Path) -> str:
    return f"write its feature names, in column order, as a JSON list to {str(sidecar_paths(path)[0])!r}"
