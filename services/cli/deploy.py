"""`rendezvous deploy|undeploy`: run a challenger's workers beside the champion on this machine.

Each replica is a detached `rendezvous model serve` process (it outlives this command), with
its log and the deployment's pids under `<cache>/deployments/<name>/`. The same worker runs in
docker-compose; `deploy` prints the service block to add there instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from services.core.errors import ConfigError
from services.core.kafka import wait_for_groups
from services.core.settings import KafkaSettings, setting
from services.localkafka.config import cache_dir
from services.model_worker.models import load_model
from services.model_worker.settings import trust_model_file_setting


@dataclass(frozen=True)
class DeploySettings(KafkaSettings):
    """Start (or stop) the workers of one model."""

    model: str = setting("", "deploy: model spec (demo:challenger, pkg.module:factory, model.joblib, model.onnx).")
    replicas: int = setting(1, "deploy: worker processes sharing the model's consumer group.")
    version: str = setting("", "deploy: version written on its scores (default: the model's own).")
    start_at: str = setting("", "deploy: catch up from this time (ISO, epoch ms, or e.g. 1h ago as '1h') first.")
    wait_s: float = setting(60.0, "deploy: how long to wait for the replicas to join their group (s).")
    trust_model_file: bool = trust_model_file_setting()

    def validate(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be >= 1, got {self.replicas}")


def _state_file(name: str) -> Path:
    return cache_dir() / "deployments" / name / "state.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_pids(name: str) -> list[int]:
    path = _state_file(name)
    if not path.exists():
        return []
    pids = [int(p) for p in json.loads(path.read_text()).get("pids", [])]
    return [p for p in pids if _alive(p)]


def cmd_deploy(settings: DeploySettings, name: str, console: Console) -> int:
    if not settings.model:
        raise ConfigError("deploy needs --model SPEC")
    if running_pids(name):
        raise ConfigError(f"{name} is already deployed here (pids {running_pids(name)}); `rendezvous undeploy {name}`")
    # Fail here, with the loader's message, not in a detached process.
    load_model(settings.model, trust_model_file=settings.trust_model_file)
    folder = _state_file(name).parent
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap, "RDV_TOPIC_PREFIX": settings.topic_prefix}
    pids = []
    for replica in range(settings.replicas):
        args = ["model", "serve", "--model", settings.model, "--name", name, "--instance", f"{name}-{replica}"]
        args += ["--version", settings.version] if settings.version else []
        args += ["--start-at", settings.start_at] if settings.start_at else []
        args += ["--trust-model-file"] if settings.trust_model_file else []
        with (folder / f"replica-{replica}.log").open("ab") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "services.cli.main", *args], stdout=log_file,
                                       stderr=subprocess.STDOUT, env=env, start_new_session=True)
        pids.append(process.pid)
    _state_file(name).write_text(json.dumps({"name": name, "model": settings.model, "pids": pids}))
    wait_for_groups(settings.librdkafka(), [f"{settings.topic_prefix}model.{name}"], timeout=settings.wait_s,
                    members=settings.replicas)
    console.print(f"deployed {name} ({settings.model}) x{settings.replicas}: pids {pids}, logs in {folder}")
    console.print("it scores every request; its answers are only logged until you `rendezvous promote " f"{name}`.")
    console.print("In docker-compose, add instead:\n" + compose_block(name, settings))
    return 0


def compose_block(name: str, settings: DeploySettings) -> str:
    command = ["model", "serve", "--model", settings.model, "--name", name]
    if settings.start_at:
        command += ["--start-at", settings.start_at]
    if settings.trust_model_file:
        command += ["--trust-model-file"]
    return (
        f"  {name}:\n    <<: *rdv\n    command: {json.dumps(command)}\n"
        + (f"    deploy:\n      replicas: {settings.replicas}\n" if settings.replicas > 1 else "")
    )


def cmd_undeploy(name: str, console: Console, timeout_s: float = 20.0) -> int:
    pids = running_pids(name)
    if not pids:
        console.print(f"{name} is not deployed here")
        return 1
    for pid in pids:
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting for the workers to drain and exit
    for pid in (p for p in pids if _alive(p)):
        os.killpg(pid, signal.SIGKILL)
    _state_file(name).unlink(missing_ok=True)
    console.print(f"undeployed {name} (pids {pids})")
    return 0
