"""SASL/SCRAM-SHA-512 on a real broker: refused credentials fail fast and clearly; secrets never show.

The module's broker has a SASL_PLAINTEXT listener (user alice, created when the storage is
formatted) beside its PLAINTEXT one; every client here talks to the SASL listener only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.cli.common import ensure_topics
from services.client.client import Client
from services.core.errors import BrokerError
from services.core.kafka import wait_for_broker, wait_for_groups
from services.core.settings import Topics
from services.localkafka import LocalBroker, ephemeral_broker, sasl_broker_options, sasl_client_config
from services.model_worker.models import demo_rows
from services.rendezvous.settings import RendezvousSettings
from tests.integration.harness import Services, read_topic

pytestmark = pytest.mark.kafka

USER = "alice"
PASSWORD = "alice-secret"
WRONG = "WRONG-pw-8c1d"  # distinctive, so "it appears nowhere" means something
REFUSED = "error: Kafka refused the credentials at "
# "Quickly": well under the connect timeout the commands are given (a loaded host starts a Python
# process slowly; a command that waited the timeout out takes 300 s).
CONNECT_TIMEOUT_S = 300


def kafka_flags(password: str) -> list[str]:
    pairs = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
             "sasl.username": USER, "sasl.password": password}
    return [arg for key, value in pairs.items() for arg in ("--kafka-config", f"{key}={value}")]


def kafka_config_tuple(password: str) -> tuple[str, ...]:
    return tuple(kafka_flags(password)[1::2])


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    # A shared cluster (KAFKA_BOOTSTRAP_SERVERS) cannot be given a SCRAM listener: this needs our own.
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the SASL tests start their own Kafka broker: install {' and '.join(missing)}")
    with ephemeral_broker(tmp_path_factory.mktemp("kafka-sasl"), **sasl_broker_options(USER, PASSWORD)) as running:
        yield running


@pytest.fixture(scope="module")
def sasl(broker: LocalBroker) -> str:
    return broker.listener("SASL")


@pytest.fixture(scope="module")
def sasl_config(sasl: str) -> dict[str, Any]:
    return sasl_client_config(sasl, USER, PASSWORD)


@pytest.fixture
def prefix(sasl_config: dict[str, Any]) -> str:
    """Fresh topics, created through the SASL listener with the right credentials."""
    value = f"s{uuid.uuid4().hex[:10]}."
    ensure_topics(sasl_config, Topics.from_prefix(value), partitions=2)
    return value


def rendezvous_cli(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                            timeout=timeout, env=dict(os.environ), check=False)
    return result, time.monotonic() - started


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_wrong_password_is_one_clear_line_fast_and_never_shown(sasl: str, prefix: str, level: str) -> None:
    result, elapsed = rendezvous_cli(
        "--log-level", level, "serve", "--bootstrap", sasl, "--topic-prefix", prefix,
        "--models", "champion", "--connect-timeout-s", str(CONNECT_TIMEOUT_S), *kafka_flags(WRONG),
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(REFUSED + sasl), errors[0]
    assert "check sasl.username/sasl.password" in errors[0]
    # At once, not after --connect-timeout-s (300 s): the command's own timeout (120 s) would end it
    # first, and the message would be the wait's ("no Kafka broker answered"), not the refusal.
    print(f"FIGURES refused credentials reported in {elapsed:.2f}s ({level})")
    output = result.stdout + result.stderr
    assert WRONG not in output
    assert PASSWORD not in output
    if level == "INFO":
        assert "Traceback" not in result.stderr
        assert errors[0] == result.stderr.splitlines()[-1]


def test_wait_for_broker_raises_on_refused_credentials_at_once(sasl: str) -> None:
    with pytest.raises(BrokerError) as refused:
        wait_for_broker(sasl_client_config(sasl, USER, WRONG), timeout=CONNECT_TIMEOUT_S)
    # The refusal's message, not the timeout's ("no Kafka broker answered ... within 300s"): it did not wait.
    assert str(refused.value).startswith(f"Kafka refused the credentials at {sasl}: ")
    assert WRONG not in str(refused.value)
    unknown_user = sasl_client_config(sasl, "mallory", PASSWORD)
    with pytest.raises(BrokerError, match="refused the credentials"):
        wait_for_broker(unknown_user, timeout=CONNECT_TIMEOUT_S)


def test_a_sasl_client_at_the_listener_without_sasl_is_told_so_not_to_check_its_password(
    broker: LocalBroker,
) -> None:
    """'Kafka refused the credentials ...; check sasl.username/sasl.password', for a listener that
    takes no SASL at all (a review)."""
    with pytest.raises(BrokerError) as refused:
        wait_for_broker(sasl_client_config(broker.bootstrap, USER, PASSWORD), timeout=CONNECT_TIMEOUT_S)
    assert str(refused.value).startswith(f"the listener at {broker.bootstrap} does not use SASL"), refused.value
    assert PASSWORD not in str(refused.value)


def test_right_password_at_debug_logs_no_secret(
    sasl: str, sasl_config: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    """A real run with the right password at DEBUG, then SIGTERM: the password is in no output."""
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "--log-level", "DEBUG", "serve", "--bootstrap", sasl,
             "--topic-prefix", prefix, "--models", "champion", "--connect-timeout-s", "30",
             *kafka_flags(PASSWORD)],
            stdout=stdout, stderr=stderr, env=dict(os.environ),
        )  # fmt: skip
        try:
            group = RendezvousSettings(topic_prefix=prefix).group_id()
            wait_for_groups(sasl_config, [group], timeout=60)  # joined: it authenticated
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
    output = out.read_text() + err.read_text()
    assert code == 0, output[-3000:]
    assert "DEBUG" in output
    assert PASSWORD not in output


def test_models_and_rendezvous_answer_over_sasl(
    services: Services, sasl: str, sasl_config: dict[str, Any], prefix: str
) -> None:
    credentials = kafka_config_tuple(PASSWORD)
    services.worker(sasl, prefix, "demo:champion", kafka_config=credentials)
    services.worker(sasl, prefix, "demo:challenger", kafka_config=credentials)
    services.rendezvous(sasl, prefix, models=("champion", "challenger"), kafka_config=credentials)
    topics = Topics.from_prefix(prefix)
    with Client(sasl_config, topics, budget_ms=10_000, answer_wait_s=60) as client:
        answers = client.score_many(demo_rows(20, seed=11))

    assert len(answers) == 20
    assert {(a.model, a.status) for a in answers} == {("champion", "OK")}
    logged = read_topic(sasl_config, topics.log, expect=20, decode="comparison")
    assert {r["request_id"] for r in logged} == {a.request_id for a in answers}


def test_deployed_processes_inherit_the_full_kafka_settings(
    sasl: str, sasl_config: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    """`deploy` passes every Kafka setting — SASL credentials included — to the processes it
    starts (which could not join over this listener otherwise), through their environment and
    never on their command line."""
    env = {**os.environ, "RDV_CACHE_DIR": str(tmp_path)}
    common = ["--bootstrap", sasl, "--topic-prefix", prefix, *kafka_flags(PASSWORD)]
    deployed = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "deploy", "champion", "--model", "demo:champion",
         "--replicas", "2", "--wait-s", "60", *common], capture_output=True, text=True, timeout=120, env=env,
        check=False,
    )  # fmt: skip
    try:
        assert deployed.returncode == 0, deployed.stderr[-2000:]
        group = f"{prefix}model.champion"
        wait_for_groups(sasl_config, [group], timeout=60, members=2)  # both joined: both authenticated
        state = json.loads((tmp_path / "deployments" / "champion" / "state.json").read_text())
        for pid in state["replicas"].values():
            assert PASSWORD not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert PASSWORD not in deployed.stdout + deployed.stderr
    finally:
        undeployed = subprocess.run([sys.executable, "-m", "services.cli.main", "undeploy", "champion"],
                                    capture_output=True, text=True, timeout=60, env=env, check=False)
    assert undeployed.returncode == 0, undeployed.stderr
