"""TLS on a real broker: a listener with a certificate from a CA the project generates.

Services, the CLI and a client connect with that CA; a client given another CA fails at once
with one clear line (not after its connect timeout).
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.client.client import Client
from services.core.settings import Topics
from services.localkafka import LocalBroker, ephemeral_broker
from services.localkafka.tls import TLS_LISTENER, TlsFiles, generate, tls_broker_options, tls_client_config
from services.model_worker.models import demo_rows
from tests.integration.harness import Services

pytestmark = pytest.mark.kafka

# Well under the connect timeout the commands are given (a loaded host starts a Python process
# slowly; a command that waited the timeout out takes 300 s).
CONNECT_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[LocalBroker]:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the TLS tests start their own Kafka broker: install {' and '.join(missing)}")
    with ephemeral_broker(tmp_path_factory.mktemp("kafka-tls"), **tls_broker_options(tls)) as running:
        yield running


def cli(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    return done, time.monotonic() - started


def tls_flags(ca: Path) -> list[str]:
    return ["--kafka-config", "security.protocol=SSL", "--kafka-config", f"ssl.ca.location={ca}",
            "--connect-timeout-s", str(CONNECT_TIMEOUT_S)]


def test_services_cli_and_client_work_over_tls(broker: LocalBroker, tls: TlsFiles) -> None:
    address = broker.listener(TLS_LISTENER)
    prefix = f"t{uuid.uuid4().hex[:8]}."
    created, _ = cli("topics", "create", "--bootstrap", address, "--topic-prefix", prefix, *tls_flags(tls.ca))
    assert created.returncode == 0, created.stderr
    kafka_config = ("security.protocol=SSL", f"ssl.ca.location={tls.ca}")
    services = Services(threading.Event())
    try:
        services.worker(address, prefix, "demo:champion", kafka_config=kafka_config)
        services.rendezvous(address, prefix, models=("champion",), kafka_config=kafka_config)
        with Client(tls_client_config(address, tls.ca), Topics.from_prefix(prefix), reply_partition=0,
                    answer_wait_s=60) as client:
            answers = [client.score(row, budget_ms=20_000) for row in demo_rows(3, seed=5)]
        assert [a.status for a in answers] == ["OK"] * 3, answers
    finally:
        services.stop_all()


def test_a_wrong_ca_fails_at_once_in_one_line(broker: LocalBroker, tmp_path: Path) -> None:
    other = generate(tmp_path / "other", name="somebody else")
    done, took = cli("topics", "create", "--bootstrap", broker.listener(TLS_LISTENER),
                     "--topic-prefix", "wrongca.", *tls_flags(other.ca))
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    assert "TLS handshake" in lines[0] and "ssl.ca.location" in lines[0], lines[0]
    # At once: the wait's own message ("no Kafka broker answered") would come only after 300 s,
    # past the command's timeout of 120 s.
    print(f"FIGURES wrong CA refused in {took:.2f}s: {lines[0]}")


def test_a_tls_client_at_the_plaintext_listener_is_told_what_it_looks_like(broker: LocalBroker, tls: TlsFiles) -> None:
    """It said 'no Kafka broker answered' and nothing of the TLS handshakes the listener closed (a
    review). Not at once: a proxy or a broker restarting closes connections so too."""
    done, took = cli("topics", "create", "--bootstrap", broker.bootstrap, "--topic-prefix", "tlsplain.",
                     "--kafka-config", "security.protocol=SSL", "--kafka-config", f"ssl.ca.location={tls.ca}",
                     "--connect-timeout-s", "5")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    assert "closed the TLS handshake, as a plaintext listener does: security.protocol=PLAINTEXT?" in lines[0]
    print(f"FIGURES TLS client at a plaintext listener said in {took:.2f}s: {lines[0]}")


def test_a_plaintext_client_at_the_tls_listener_is_told_what_it_looks_like(broker: LocalBroker) -> None:
    """The hint of a first request closed: librdkafka says it in its log alone, where the wait did
    not look (a review: the hint never fired)."""
    done, _took = cli("topics", "create", "--bootstrap", broker.listener(TLS_LISTENER), "--topic-prefix",
                      "plaintls.", "--connect-timeout-s", "5")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    assert "as a TLS listener does to a plaintext client: security.protocol=SSL?" in lines[0], lines[0]


def test_the_server_properties_holding_the_key_are_readable_by_their_owner_only(broker: LocalBroker) -> None:
    assert "PRIVATE KEY" in broker.properties_file.read_text()
    assert stat.S_IMODE(broker.properties_file.stat().st_mode) == 0o600
