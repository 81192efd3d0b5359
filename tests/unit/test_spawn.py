"""A service stops when asked while it waits for a broker, and when the command that started it
(the demo) is killed with -9.

Real processes, no broker: the service is `rendezvous serve` pointed at a port where no broker
answers, so it would wait for one for minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import wait_until

PARENT = """
import os, signal, sys
from pathlib import Path
from services.cli.spawn import spawn
signal.signal(signal.SIGINT, signal.default_int_handler)  # a test runner's worker may ignore it: we inherit that
child = spawn(["--log-level", "DEBUG", "serve"], Path(sys.argv[1]), dict(os.environ))
print(child.pid, flush=True)
signal.pause()  # the parent stays until the test kills it
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, waiting for its (new) parent to reap it


NO_BROKER = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "RDV_CONNECT_TIMEOUT_S": "300"}
ROOT = Path(__file__).resolve().parents[2]


def _started(log: Path) -> bool:
    """Waiting for its broker, its own SIGTERM handler installed: its 'starting with' line comes
    before, and a signal then ended the command (143, no 'asked to stop'), not the wait (forced
    with the service held up 0.5 s after that line: both SIGTERM tests failed)."""
    return "kafka client, waiting for the broker" in (log.read_text() if log.exists() else "")


def test_a_service_waiting_for_a_broker_stops_at_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        service = subprocess.Popen([sys.executable, "-m", "services.cli.main", "--log-level", "DEBUG", "serve"],
                                   stdout=out, stderr=subprocess.STDOUT, env=NO_BROKER, cwd=ROOT)
    try:
        wait_until(lambda: _started(log), 60, "the service to start")
        service.terminate()
        assert service.wait(timeout=30) == 0
        assert "asked to stop while waiting for a Kafka broker at '127.0.0.1:1'" in log.read_text()
    finally:
        service.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_a_service_the_demo_started_stops_when_the_demo_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(log)], stdout=subprocess.PIPE, env=NO_BROKER,
                              cwd=ROOT)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        wait_until(lambda: _started(log), 60, "the child to start")
        assert not _gone(child)
        parent.kill()
        parent.wait()
        wait_until(lambda: _gone(child), 30, "the child to stop with its killed parent")
    finally:
        parent.kill()
        if child and not _gone(child):
            os.kill(child, signal.SIGKILL)


def test_a_service_the_demo_started_is_not_sent_the_terminals_ctrl_c(tmp_path: Path) -> None:
    """In the demo's process group, a Ctrl-C reached the services too, and the demo's SIGTERM after
    it was their second signal, which ends a service at once, undrained (a review). Their own group
    now: only the demo hears the terminal, and stops them once."""
    log = tmp_path / "serve.log"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(log)], stdout=subprocess.PIPE, env=NO_BROKER,
                              cwd=ROOT, start_new_session=True)  # as a shell starts a command: a group of its own
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        wait_until(lambda: _started(log), 60, "the child to start")
        os.killpg(parent.pid, signal.SIGINT)  # the terminal's Ctrl-C: to the foreground group
        parent.wait(timeout=30)
        wait_until(lambda: _gone(child), 30, "the child to stop with its parent")
        assert log.read_text().count("asked to stop") == 1  # one signal: SIGTERM from its parent's end
    finally:
        parent.kill()
        if child and not _gone(child):
            os.kill(child, signal.SIGKILL)


def test_a_dead_demo_process_is_said_with_its_own_error_not_an_earlier_runs(tmp_path: Path) -> None:
    """The newest `error:` line of any demo log was quoted: an earlier run's (logs are appended
    across runs), or another process's, blamed on the one that died (a review)."""
    from services.cli import demo
    from services.cli.spawn import spawn
    from services.core.errors import ConfigError

    log = tmp_path / "rendezvous-0.log"
    log.write_text("error: --metrics-port 9100: address already in use (an earlier run)\n")
    process = spawn(["acl", "show", "--topic-prefix", "prod"], log, dict(os.environ))
    assert process.wait(60) == 2
    (tmp_path / "worker.log").write_text("error: another process's line\n")  # the newest log now
    with pytest.raises(ConfigError) as dead:
        demo._check_alive([process], tmp_path)
    assert "needs a --topic-prefix ending in" in str(dead.value)
    assert "earlier run" not in str(dead.value) and "another process" not in str(dead.value)


def test_a_spawned_service_imports_nothing_from_the_shells_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m` puts the working directory first on the import path: a confluent_kafka.py in a
    model bundle's folder ran in every replica deployed from there (a review)."""
    from services.cli.spawn import spawn

    marker = tmp_path / "imported"
    (tmp_path / "confluent_kafka.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path)
    process = spawn(["acl", "show", "--topic-prefix", "prod"], tmp_path / "log", dict(os.environ))
    assert process.wait(60) == 2 and not marker.exists()
