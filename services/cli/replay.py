"""`rendezvous replay`: run a model over recorded requests and compare it with the champion."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

from services.core.errors import ConfigError
from services.core.settings import KafkaSettings, setting


@dataclass(frozen=True)
class ReplaySettings(KafkaSettings):
    """Score recorded requests with a model; nothing is written to Kafka."""

    model: str = setting("", "Model spec to replay (demo:challenger, pkg.module:factory, model.joblib, ...).")
    name: str = setting("", "Name of the replayed model in the report (default: the model's own).")
    source: str = setting("topic", "Where the requests come from: topic (the requests topic) or archive.")
    archive_dir: str = setting("", "The decoy's archive directory (with --source archive).")
    since: str = setting("", "Replay the last ... of requests, e.g. 10m (request record time).")
    from_: str = setting("", "Start: ISO time, epoch ms, or offset:N (topic only).", flag="--from")
    to: str = setting("", "End (exclusive): ISO time, epoch ms, or offset:N (topic only).")
    champion: str = setting("", "Champion to compare against (default: inferred from the log).")
    html: str = setting("", "Also write an HTML report with plots to this file.")
    batch: int = setting(1000, "Requests per model batch.")

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("replay needs --model SPEC")
        if self.source not in ("topic", "archive"):
            raise ConfigError(f"--source must be topic or archive, got {self.source!r}")
        if self.source == "archive" and not self.archive_dir:
            raise ConfigError("--source archive needs --archive-dir DIR")


def run_replay(settings: ReplaySettings, console: Console) -> int:
    raise ConfigError("replay is not wired yet")
