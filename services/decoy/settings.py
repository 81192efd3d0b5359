"""Settings of the decoy (archives every request exactly as received)."""

from __future__ import annotations

from dataclasses import dataclass

from services.core.errors import ConfigError
from services.core.settings import MAX_BATCH, ServiceSettings, check_writable_directory, setting


@dataclass(frozen=True)
class DecoySettings(ServiceSettings):
    """The decoy reads the requests topic like a model, scores nothing, archives the bytes."""

    archive_dir: str = setting("", "Directory of the archive (Avro container files + manifest.json).")
    roll_mb: float = setting(64.0, "Seal the current file once it is this large (MiB).", above=0)
    roll_seconds: float = setting(300.0, "Seal the current file once it is this old (s), even if nothing follows.",
                                  above=0)
    retain_hours: float = setting(
        0.0, "Delete sealed archive files whose newest request was appended more than this many hours ago "
        "(checked once a minute; the manifest says from when on the archive is whole). 0 keeps every file: "
        "the archive grows until its disk is full, which stops the decoy.", minimum=0)
    codec: str = setting("deflate", "Avro block codec of the archive files: null or deflate.")
    group: str = setting("", "Consumer group (default: <prefix>decoy).", identifier=True)
    start_from: str = setting("earliest", "Where a new consumer group starts: earliest or latest.")
    max_batch: int = setting(1000, "Most records read per poll (the archive is fsynced before each commit).",
                             minimum=1, maximum=MAX_BATCH)

    def validate(self) -> None:
        if not self.archive_dir:
            raise ConfigError("--archive-dir is required (where the archive files go)")
        check_writable_directory(self.archive_dir, "--archive-dir")
        if self.codec not in ("null", "deflate"):
            raise ConfigError(f"--codec must be null or deflate, got {self.codec!r}")
        if self.roll_mb <= 0 or self.roll_seconds <= 0 or self.max_batch < 1:
            raise ConfigError("--roll-mb, --roll-seconds and --max-batch must be positive")
        if self.start_from not in ("earliest", "latest"):
            raise ConfigError(f"--start-from must be earliest or latest, got {self.start_from!r}")

    def group_id(self) -> str:
        return self.group or f"{self.topic_prefix}decoy"
