"""Files written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path


def write_whole(path: Path, text: str, mode: int | None = None) -> None:
    """Write `text` to `path` through `<path>.part` and a rename, so a write that fails (a full
    disk, a crash) leaves the old file as it was, and no part behind it. `mode`: the new file's
    permissions (e.g. 0o600 for one that holds secrets), set before anything is written."""
    part = path.with_name(path.name + ".part")
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
        if mode is not None:
            os.fchmod(fd, mode)  # a part left by an earlier attempt keeps its mode through O_TRUNC
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
