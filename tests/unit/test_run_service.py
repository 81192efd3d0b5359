"""`run_service` (services/cli/common.py): the health endpoint is up while the service is built,
and a stop while it is built (`interruptible`, services/core/runtime.py) is not kept waiting."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.cli.common import run_service
from services.core.errors import StoppedStarting
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


def test_run_service_stops_cleanly_when_asked_while_it_builds(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("services.cli.common.install_signal_handlers", lambda _stop: None)

    def build() -> Any:
        raise StoppedStarting("asked to stop while loading the model from x.joblib: stopping without waiting for it")

    with caplog.at_level(logging.INFO):
        run_service(build, ServiceSettings(metrics_port=free_port()))  # returns: no error, exit status 0
    assert "asked to stop while loading the model from x.joblib" in caplog.text


SLOW_LOADS = {
    "sleeping": "import time\n\ndef make():\n    time.sleep(3600)\n",
    # Its pool's threads are no daemons, and leaving the `with` waits for them (a review).
    "pooled": "import time\nfrom concurrent.futures import ThreadPoolExecutor\n\ndef make():\n"
              "    with ThreadPoolExecutor(2) as pool:\n        list(pool.map(time.sleep, [3600, 3600]))\n",
}


@pytest.mark.parametrize("load", sorted(SLOW_LOADS))
def test_a_worker_asked_to_stop_while_its_model_loads_exits_without_waiting(tmp_path: Path, load: str) -> None:
    """The whole command: a model whose load would take an hour, SIGTERM once it is loading."""
    (tmp_path / "slow_model.py").write_text(SLOW_LOADS[load])
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
    # 'while' once the load began; 'before' for a signal between the line that says it begins and the load
    assert re.search(r"asked to stop (while|before) loading the model from slow_model:make", rest), rest


def test_a_model_whose_load_sets_a_signal_handler_still_loads(tmp_path: Path) -> None:
    """A load on a thread of its own could set no signal handler ('signal only works in main
    thread'): a model bounding its load with SIGALRM no longer loaded (a review)."""
    (tmp_path / "alarm_model.py").write_text(
        "import signal\n\ndef make():\n    signal.signal(signal.SIGALRM, signal.SIG_DFL)\n"
        "    from services.model_worker.models import load_model\n    return load_model('demo:champion')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "model", "serve", "--model", "alarm_model:make", "--name", "alarm",
         "--bootstrap", "127.0.0.1:1", "--connect-timeout-s", "1", "--metrics-port", str(free_port())],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert "loaded model from alarm_model:make" in done.stderr, done.stderr
    assert "no Kafka broker answered" in done.stderr  # on to the broker, which is not there


def test_a_command_winding_up_hears_the_first_signal_and_stops_at_the_second_or_before_it_is_armed() -> None:
    """`wind_up_on_first_signal`: a long command (a replay) reports on what it did at the first
    signal; before it has begun that work, and at a second signal, it stops at once."""
    from services.core.errors import Stopped
    from services.core.runtime import wind_up_on_first_signal

    assert threading.current_thread() is threading.main_thread()  # else the signals would reach no handler
    with signals_handled(signal.SIGTERM, signal.SIGHUP):
        before = signal.getsignal(signal.SIGTERM)
        with pytest.raises(Stopped), wind_up_on_first_signal("winding up") as wind_up:
            os.kill(os.getpid(), signal.SIGTERM)  # not armed yet: at once
        assert wind_up.signum is None
        with wind_up_on_first_signal("winding up") as wind_up:
            wind_up.armed = True
            os.kill(os.getpid(), signal.SIGHUP)
            assert wind_up.signum == signal.SIGHUP
            with pytest.raises(Stopped) as second:
                os.kill(os.getpid(), signal.SIGTERM)
        assert second.value.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is before  # put back


@contextlib.contextmanager
def signals_handled(*signums: signal.Signals) -> Iterator[None]:
    """The signals a test sends, not ignored whatever the process inherited (CI's background job
    ignores SIGINT, `nohup` SIGHUP: a command leaves those ignored), put back after."""
    def noted(signum: int, _frame: object) -> None:
        raise AssertionError(f"signal {signum} reached no handler of the code under test")

    before = {signum: signal.signal(signum, noted) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_a_signal_the_command_was_started_ignoring_stays_ignored_and_a_gone_stderr_is_no_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`nohup` ignores SIGHUP, a shell's background job SIGINT: taken back, a replay died at the
    logout or at a Ctrl-C meant for the foreground. And the notice written to a stderr that the same
    Ctrl-C closed (`| tee`) raised BrokenPipeError out of the command (exit status 0; a review)."""
    from services.core import runtime
    from services.core.runtime import wind_up_on_first_signal

    assert threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_handled(signal.SIGTERM), wind_up_on_first_signal("winding up") as wind_up:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            wind_up.armed = True
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: nothing happens
            assert wind_up.signum is None

            def closed(_fd: int, _data: bytes) -> int:
                raise BrokenPipeError(32, "Broken pipe")

            monkeypatch.setattr(runtime.os, "write", closed)
            os.kill(os.getpid(), signal.SIGTERM)
            assert wind_up.signum == signal.SIGTERM
    finally:
        signal.signal(signal.SIGHUP, before)


def test_sigterm_is_taken_even_if_inherited_ignored_and_a_terminals_signals_are_left_ignored() -> None:
    """`nohup` and a shell's background job ignore SIGHUP and SIGINT: taken back, a command or a
    service died at the logout or at a Ctrl-C meant for the foreground. SIGTERM is a supervisor's
    stop, whatever the parent ignored (reviews)."""
    from services.core.runtime import install_signal_handlers

    assert threading.current_thread() is threading.main_thread()
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signums}
    try:
        install_signal_handlers(threading.Event())
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert callable(signal.getsignal(signal.SIGTERM))
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
