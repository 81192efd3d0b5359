"""`run_service` (services/cli/common.py): the health endpoint is up while the service is built."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest

from services.cli.common import run_service
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
