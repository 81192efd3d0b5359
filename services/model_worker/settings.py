"""Settings of one model worker process."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from services.core.errors import ConfigError
from services.core.settings import KafkaSettings, setting


@dataclass(frozen=True)
class WorkerSettings(KafkaSettings):
    """A worker runs one model under a name and version in its own consumer group."""

    model: str = setting(
        "", "Model spec: demo:<champion|challenger|canary|slow|flaky>, module.path:factory, "
        "a scikit-learn .joblib/.pkl file, or an .onnx file."
    )
    name: str = setting("", "Model name written on every score (default: the model's own name).")
    version: str = setting("", "Model version written on every score (default: the model's own).")
    group: str = setting("", "Consumer group (default: <prefix>model.<name>); replicas of a model share it.")
    instance: str = setting("", "Replica id written on every score (default: host-pid).")
    max_batch: int = setting(256, "Largest micro-batch handed to the model.")
    start_from: str = setting(
        "earliest", "Where a new consumer group starts: earliest (nothing missed) or latest."
    )
    metrics_port: int = setting(0, "Port of the Prometheus /metrics endpoint (0 = off).")
    dead_letter: bool = setting(
        False, "Also dead-letter undecodable requests (the rendezvous already does; off avoids duplicates)."
    )

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("--model is required (e.g. --model demo:champion)")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.start_from not in ("earliest", "latest"):
            raise ConfigError(f"--start-from must be earliest or latest, got {self.start_from!r}")

    def instance_id(self) -> str:
        return self.instance or f"{socket.gethostname()}-{os.getpid()}"

    def group_id(self, model_name: str) -> str:
        return self.group or f"{self.topic_prefix}model.{model_name}"
