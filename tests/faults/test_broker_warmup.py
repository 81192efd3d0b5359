"""The local broker's warm-up on a real broker: it sends its traffic, cleans up after itself,
is recorded in the broker's state, and `RDV_BROKER_WARMUP=off` skips it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from services.localkafka import warmup
from services.localkafka.broker import ephemeral_broker

pytestmark = pytest.mark.kafka


def _needs_own_broker() -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or not (shutil.which("java") and shutil.which("mvn")):
        pytest.fail("this test starts a broker of its own: it needs Java 17 and Maven")


def _leftovers(bootstrap: str) -> tuple[list[str], list[str]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(warmup.TOPIC)]
    groups = [g.group_id for g in admin.list_consumer_groups(request_timeout=10).result().valid
              if g.group_id.startswith(warmup.TOPIC)]
    return topics, groups


def test_a_started_broker_was_warmed_up_and_nothing_of_it_is_left(tmp_path: Path) -> None:
    _needs_own_broker()
    with ephemeral_broker(tmp_path) as broker:
        done = broker.status()["warm_up"]
        assert done["error"] == "", done
        assert done["transactions"] >= warmup.MIN_ROUNDS, done
        assert done["records"] == (warmup.PLAIN_PER_ROUND + 2) * done["transactions"], done
        assert done["fetched"] > 0, done
        assert _leftovers(broker.bootstrap) == ([], [])


def test_the_warm_up_can_be_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_own_broker()
    monkeypatch.setenv(warmup.WARMUP_ENV, "off")
    with ephemeral_broker(tmp_path) as broker:
        assert broker.status()["warm_up"] == "off"


def test_a_resume_that_failed_on_a_bad_property_keeps_the_broker_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$RDV_BROKER_PROPERTIES was written into the kept server.properties before the broker took it:
    a bad value failed every later start too (and a mistyped log.dirs made the next one format a
    new cluster over the topics)."""
    from services.core.errors import BrokerError
    from services.localkafka import config

    _needs_own_broker()
    with ephemeral_broker(tmp_path) as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic("kept", 1)])["kept"].result(30)
        kept = broker.properties_file.read_text()
        broker.stop(keep_data=True)
        monkeypatch.setenv(config.PROPERTIES_ENV, "message.max.bytes=10MB")
        with pytest.raises(BrokerError):
            broker.start(wait_timeout=60, fresh=False)
        assert broker.properties_file.read_text() == kept
        monkeypatch.delenv(config.PROPERTIES_ENV)
        broker.start(wait_timeout=90, fresh=False)  # as it was: resumed, its topic there
        assert "kept" in AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics


def test_fresh_or_tls_asked_of_a_running_broker_is_refused_not_ignored(tmp_path: Path) -> None:
    """`broker start --fresh` or `--tls` on a running broker said "already runs" and exited 0,
    deleting nothing and adding no listener (a review of the local broker)."""
    import subprocess
    import sys

    _needs_own_broker()
    env = {**os.environ, "RDV_CACHE_DIR": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli.main", "broker", *args], capture_output=True,
                              text=True, timeout=180, env=env)

    assert cli("start").returncode == 0
    try:
        for flag in ("--fresh", "--tls"):
            refused = cli("start", flag)
            assert refused.returncode == 2, refused.stderr
            assert f"{flag} cannot apply to it; `rendezvous broker stop` first" in refused.stderr
        assert cli("start").returncode == 0  # plain: the running one, as before
    finally:
        assert cli("stop").returncode == 0


CHILD = """
import signal, sys
from services.localkafka.broker import ephemeral_broker
with ephemeral_broker(sys.argv[1]) as broker:
    print(broker.pid, flush=True)
    signal.pause()  # held until the test kills this process
"""


def test_a_tests_broker_stops_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    """Killed by SIGKILL (or a SIGTERM that runs no clean-up), the process left its broker, half
    a GiB of JVM, running for good (a test run stopped by `timeout` left one on this host)."""
    import signal
    import subprocess
    import sys

    from tests.integration.harness import wait_until

    _needs_own_broker()
    parent = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        os.kill(pid, 0)  # the broker runs
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as stat:  # exited, not yet reaped by init: gone too
            return stat.read().split(") ", 1)[1].startswith("Z")

    try:
        wait_until(gone, 60, "the broker to stop with its parent")
    finally:
        if not gone():
            os.kill(pid, signal.SIGKILL)  # not left behind by this test either
