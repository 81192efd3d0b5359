"""The broker goes away for 15 s under a rendezvous and a model worker: their logs say so in a few
lines (librdkafka retries a connection every 50 to 100 ms, each refusal reported twice: before
kafka_logs, some 700 lines a service in 15 s), and the services come back when the broker does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from services.cli.common import ensure_topics
from services.core.settings import Topics
from services.localkafka.broker import LocalBroker
from tests.faults.procs import Proc, until

pytestmark = pytest.mark.kafka

OUTAGE_S = 15.0
MAX_KAFKA_LINES = 60  # a service's lines from its Kafka clients during the outage


def since(proc: Proc, offset: int) -> list[str]:
    with proc.log_file.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace").splitlines()


def from_kafka_clients(lines: list[str]) -> list[str]:
    return [line for line in lines if " librdkafka: " in line or "services.core.kafka: kafka client:" in line]


def test_a_broker_outage_is_said_in_a_few_lines_and_the_services_recover(
        own_broker: LocalBroker, tmp_path: Path) -> None:
    bootstrap = own_broker.bootstrap
    config: dict[str, Any] = {"bootstrap.servers": bootstrap}
    ensure_topics(config, Topics.from_prefix("rdv."), partitions=4)
    common = ["--bootstrap", bootstrap, "--connect-timeout-s", "60"]
    worker = Proc(["model", "serve", *common, "--model", "demo:champion", "--instance", "champion-0"],
                  tmp_path / "champion.log").start()
    rendezvous = Proc(["serve", *common, "--models", "champion", "--instance", "rdv-0"],
                      tmp_path / "rendezvous.log").start()
    procs = (worker, rendezvous)
    try:
        marks = {p.args[0]: p.log_file.stat().st_size for p in procs}
        own_broker.stop(keep_data=True)
        stopped = time.monotonic()

        def alive() -> None:
            assert all(p.alive() for p in procs), "no crash while the broker is away"

        until(lambda: all(p.readiness()[0] == 503 for p in procs), 20, "both services to report not-ready",
              check=alive)
        until(lambda: all("Connection refused" in "\n".join(since(p, marks[p.args[0]])) for p in procs), 20,
              "each log to say the broker refuses connections", check=alive)
        # The outage itself, watched: what each service logs while librdkafka keeps retrying.
        until(lambda: time.monotonic() - stopped >= OUTAGE_S, OUTAGE_S + 10, "the end of the outage", check=alive)
        during = {p.args[0]: since(p, marks[p.args[0]]) for p in procs}

        own_broker.start(fresh=False)
        until(lambda: all(p.ready() for p in procs), 180, "both services ready again", check=alive)
        until(lambda: all("broker reachable again" in "\n".join(since(p, marks[p.args[0]])) for p in procs), 30,
              "each log to say the broker is back", check=alive)
        after = {p.args[0]: since(p, marks[p.args[0]]) for p in procs}
    finally:
        rendezvous.stop()
        worker.stop()

    kafka_lines = {name: from_kafka_clients(lines) for name, lines in during.items()}
    print(f"FIGURES broker down {OUTAGE_S:.0f}s: lines logged "
          f"{ {name: len(lines) for name, lines in during.items()} }, from Kafka clients "
          f"{ {name: len(lines) for name, lines in kafka_lines.items()} }")
    for name, lines in kafka_lines.items():
        assert len(lines) < MAX_KAFKA_LINES, f"{name} logged {len(lines)} lines from its Kafka clients in " \
                                             f"{OUTAGE_S:.0f} s of outage:\n" + "\n".join(lines[:80])
        assert any("Connection refused" in line for line in lines), f"{name}: the outage is said"
        assert any("brokers are down" in line for line in lines), f"{name}: the outage is said"
    for name, lines in after.items():
        assert any("broker reachable again" in line for line in lines), name
