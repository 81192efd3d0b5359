"""`run_service` (services/cli/common.py): the health endpoint is up while the service is built,
and a stop while it is built (`unless_stopped`, services/core/runtime.py) is not kept waiting."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from services.cli.common import run_service
from services.core import runtime
from services.core.errors import ModelSpecError, StoppedStarting
from services.core.runtime import unless_stopped
from services.core.settings import ServiceSettings
from services.localkafka.config import free_port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_probes_answer_while_a_model_loads_not_ready_and_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker loading a model refused every probe until it had loaded, and a liveness probe
    restarted it, with nothing in its log (a review)."""
    monkeypatch.setattr("services.cli.common.install_signal_handlers", lambda _stop: None)  # pytest's stay
    port = free_port()
    seen: dict[str, tuple[int, str]] = {}

    class Ran:
        ran = False

        def run(self, _stop: threading.Event) -> None:
            self.ran = True

    def build() -> Ran:  # the load: the endpoint answers meanwhile
        seen["readyz"] = _get(f"http://127.0.0.1:{port}/readyz")
        seen["healthz"] = _get(f"http://127.0.0.1:{port}/healthz")
        return service

    service = Ran()
    run_service(build, ServiceSettings(metrics_port=port), starting="loading the model(s)")
    assert seen["readyz"][0] == 503 and "loading the model(s)" in seen["readyz"][1]
    assert seen["healthz"][0] == 200 and service.ran


def test_a_stop_during_a_load_is_not_kept_waiting_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM while a model loaded was acted on only once it had loaded, minutes later: past
    Kubernetes' grace period, SIGKILL, nothing in the log (a review)."""
    monkeypatch.setattr("services.core.runtime._stop_requested", threading.Event())
    loading, never = threading.Event(), threading.Event()

    def load() -> None:
        loading.set()
        never.wait()

    def stop_once_loading() -> None:
        loading.wait()
        runtime._stop_requested.set()

    threading.Thread(target=stop_once_loading, daemon=True).start()
    with pytest.raises(StoppedStarting, match=r"asked to stop while loading the model from x\.joblib"):
        unless_stopped(load, "loading the model from x.joblib")
    never.set()


def test_what_the_work_gives_or_raises_comes_back_to_the_caller() -> None:
    assert unless_stopped(lambda: 41 + 1, "adding") == 42
    with pytest.raises(ModelSpecError, match="no such model"):
        unless_stopped(lambda: (_ for _ in ()).throw(ModelSpecError("no such model")), "loading")


def test_run_service_stops_cleanly_when_asked_while_it_builds(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("services.cli.common.install_signal_handlers", lambda _stop: None)

    def build() -> Any:
        raise StoppedStarting("asked to stop while loading the model from x.joblib: stopping without waiting for it")

    with caplog.at_level(logging.INFO):
        run_service(build, ServiceSettings(metrics_port=free_port()))  # returns: no error, exit status 0
    assert "asked to stop while loading the model from x.joblib" in caplog.text


def test_a_worker_asked_to_stop_while_its_model_loads_exits_without_waiting(tmp_path: Path) -> None:
    """The whole command: a model whose load would take an hour, SIGTERM once it is loading."""
    (tmp_path / "slow_model.py").write_text("import time\n\ndef make():\n    time.sleep(3600)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    worker = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "model", "serve", "--model", "slow_model:make", "--name", "slow",
         "--bootstrap", "127.0.0.1:1", "--metrics-port", str(free_port())],
        stderr=subprocess.PIPE, text=True, env=env)
    assert worker.stderr is not None
    lines = []
    for line in worker.stderr:  # until the load has begun
        lines.append(line)
        if "loading model from slow_model:make" in line:
            break
    worker.send_signal(signal.SIGTERM)
    try:
        _, rest = worker.communicate(timeout=60)  # the load alone would take an hour
    finally:
        worker.kill()
    assert worker.returncode == 0, "".join(lines) + rest
    assert "asked to stop while loading the model from slow_model:make" in rest
