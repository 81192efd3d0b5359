"""Starting service processes from a command (demo, deploy) with the command's own Kafka settings.

A child gets everything the parent was told about Kafka — bootstrap, topic prefix and
overrides, every pass-through librdkafka setting (SASL/TLS credentials included), the connect
timeout — through the environment variables its settings read, never on its command line,
where every user of the machine could read a password with `ps`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from services.core.errors import ConfigError
from services.core.kafka_config import safe_key
from services.core.runtime import PARENT_PID_ENV
from services.core.settings import KafkaSettings
from services.model_worker.settings import worker_name


def service_env(settings: KafkaSettings) -> dict[str, str]:
    """This process's environment plus `settings` as the variables a child's settings read."""
    env = dict(os.environ)
    env["KAFKA_BOOTSTRAP_SERVERS"] = settings.bootstrap
    env["RDV_TOPIC_PREFIX"] = settings.topic_prefix
    env["RDV_CONNECT_TIMEOUT_S"] = str(settings.connect_timeout_s)
    env["RDV_WIRE_FORMAT"] = settings.wire_format
    env["RDV_SCHEMA_REGISTRY"] = settings.schema_registry
    if any(";" in item for item in settings.kafka_config):
        # The key is shown if it looks like one, never the value: it may be a password (and an item
        # without '=' is all value: it was shown whole, a review).
        keys = [key if safe_key(key) else f"item {position}" for position, item in enumerate(settings.kafka_config, 1)
                if ";" in item for key in [item.partition("=")[0].strip()]]
        raise ConfigError(f"--kafka-config {', '.join(keys)}: a value holding ';' cannot be handed to the processes "
                          "this command starts (RDV_KAFKA_CONFIG separates settings by ';'); start them yourself "
                          "with the flag")
    for name, value in (("RDV_TOPIC", ",".join(settings.topic)), ("RDV_KAFKA_CONFIG", ";".join(settings.kafka_config))):
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    return env


# Where each process spawned here began writing: its log file and that file's size then (logs are
# appended across runs, so the end of the file may be another run's).
_LOG_STARTS: dict[int, tuple[Path, int]] = {}


def output_of(process: subprocess.Popen[bytes]) -> str:
    """What `process` (spawned here) wrote to its log, as text ('' if unknown)."""
    start = _LOG_STARTS.get(process.pid)
    if start is None:
        return ""
    log_file, offset = start
    try:
        with log_file.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def spawn(args: list[str], log_file: Path, env: dict[str, str], *, detached: bool = False) -> subprocess.Popen[bytes]:
    """Run `rendezvous <args>` with its output appended to `log_file`; `detached` outlives us, any
    other is sent SIGTERM when we die, even killed with -9 (`stop_with_parent`), and not the
    terminal's Ctrl-C (its own process group: we stop it)."""
    env = {key: value for key, value in env.items() if key != PARENT_PID_ENV}
    if not detached:
        env[PARENT_PID_ENV] = str(os.getpid())
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as handle:
        offset = handle.tell()
        # A process group of its own either way: in ours, a Ctrl-C at the terminal reached it too,
        # and our SIGTERM after it was its second signal, which ends a service at once, undrained
        # (a review). We stop it; our death stops it (PARENT_PID_ENV) if we are killed. `-P`: the
        # shell's directory is not put first on its import path, as `python -m` does (the console
        # script never does): a confluent_kafka.py in a model bundle's folder ran in every replica
        # deployed from there (a review).
        process = subprocess.Popen([sys.executable, "-P", "-m", "services.cli.main", *args], stdout=handle,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=detached,
                                   process_group=None if detached else 0)
    _LOG_STARTS[process.pid] = (log_file, offset)
    return process


def model_workers(models: Sequence[tuple[str, str]], co_host: bool) -> dict[str, list[str]]:
    """`model serve` arguments by worker for (name, spec) pairs: one worker per model, or with
    `co_host` one scoring with all of them. A worker's name is what its consumer group is named
    after (`model_group`)."""
    if co_host and len(models) > 1:
        (first, spec), others = models[0], models[1:]
        co_hosted = ",".join(f"{name}={other}" for name, other in others)
        worker = worker_name([name for name, _ in models])
        return {worker: ["model", "serve", "--model", spec, "--name", first, "--co-host", co_hosted]}
    return {name: ["model", "serve", "--model", spec, "--name", name] for name, spec in models}
