"""Services as real OS processes, so faults are real: kill -9, SIGTERM, restarts.

Readiness is the service's own /readyz endpoint (never a sleep); the metrics it exports on
the same port are read with `metric()`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from services.core.runtime import PARENT_PID_ENV, stop_processes
from services.localkafka.config import free_port
from tests.integration.harness import wait_until


@dataclass
class Proc:
    """One `rendezvous ...` process; `start()` again after a kill restarts it with the same args."""

    args: list[str]
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self, ready_timeout: float = 90.0) -> Proc:
        """Started, and ready; stopped again if it does not become ready (a test failing there
        left it running, its parent gone: a review traced a `model serve` found after a failed
        run to this). It is sent SIGTERM if pytest dies too (PARENT_PID_ENV: start from the thread
        that lives as long as the test, as every test here does)."""
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", *self.args, "--metrics-port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, PARENT_PID_ENV: str(os.getpid()), **self.env},
            )
        self.starts += 1
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        try:
            wait_until(self.ready, timeout, f"{self.args[:2]} to be ready (/readyz)", check=self._running)
        except AssertionError as err:
            raise AssertionError(f"{err}; log:\n{self.tail()}") from None

    def _running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"{self.args[:2]} exited ({self.process.returncode}); log:\n{self.tail()}")

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        return self._get("/readyz")[0] == 200

    def readiness(self) -> tuple[int, str]:
        return self._get("/readyz")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels` (0 if absent)."""
        status, text = self._get("/metrics")
        if status != 200:
            return float("nan")
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            stop_processes([self.process], timeout=20)

    def rss_peak_kb(self) -> int:
        """Peak resident memory of the live process (VmHWM)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


until = wait_until
