"""The broker goes away for 30 s mid-stream and comes back: services wait, report not-ready,
don't spin, don't crash; afterwards every request is answered (or explicitly timed out) once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from services.cli.common import ensure_topics
from services.core.kafka import end_offsets
from services.core.settings import Topics
from services.localkafka.broker import LocalBroker
from tests.faults.procs import Proc, until
from tests.faults.test_crashes import Sender
from tests.integration.harness import read_topic

pytestmark = pytest.mark.kafka

OUTAGE_S = 30.0


def cpu_seconds(proc: Proc) -> float:
    assert proc.process is not None
    fields = Path(f"/proc/{proc.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_transactions(config: dict[str, Any], topics: list[str]) -> dict[str, tuple[int, int]]:
    """Partitions whose last stable offset is short of their end: "topic[p]" -> (stable, end)."""
    partitions = [(topic, p) for topic in topics for p in range(4)]
    stable = end_offsets(config, partitions, committed=True)
    written = end_offsets(config, partitions, committed=False)
    return {f"{t}[{p}]": (stable[t, p], written[t, p]) for t, p in partitions if stable[t, p] < written[t, p]}


def test_broker_down_for_30s_every_request_answered_or_timed_out(own_broker: LocalBroker, tmp_path: Path) -> None:
    bootstrap = own_broker.bootstrap
    config: dict[str, Any] = {"bootstrap.servers": bootstrap}
    topics = Topics.from_prefix("rdv.")
    ensure_topics(config, topics, partitions=4)
    common = ["--bootstrap", bootstrap, "--connect-timeout-s", "60"]
    worker = Proc(["model", "serve", *common, "--model", "demo:champion", "--instance", "champion-0"],
                  tmp_path / "champion.log").start()
    rendezvous = Proc(["serve", *common, "--models", "champion", "--instance", "rdv-0", "--linger-ms", "200"],
                      tmp_path / "rendezvous.log").start()
    try:
        sender = Sender(config, topics.requests, total=12_000, rate=200.0, budget_ms=2_000).start()
        until(lambda: rendezvous.metric("rdv_answers_total") >= 1000, 60, "answers before the outage")

        own_broker.stop(keep_data=True)
        cpu_before = {p.args[0]: cpu_seconds(p) for p in (worker, rendezvous)}
        until(lambda: rendezvous.readiness()[0] == 503 and worker.readiness()[0] == 503, 20,
              "both services to report not-ready")
        not_ready = rendezvous.readiness()[1]
        outage_ends = time.monotonic() + OUTAGE_S

        def still_down_and_alive() -> None:
            assert worker.alive() and rendezvous.alive(), "no crash while the broker is away"
            assert rendezvous.readiness()[0] != 200 and worker.readiness()[0] != 200, "not-ready all along"

        # The outage itself, watched: every poll checks both services are alive and not ready.
        until(lambda: time.monotonic() >= outage_ends, OUTAGE_S + 10, "the end of the outage",
              check=still_down_and_alive)
        cpu_used = {p.args[0]: cpu_seconds(p) - cpu_before[p.args[0]] for p in (worker, rendezvous)}
        own_broker.start(fresh=False)

        try:
            until(lambda: rendezvous.ready() and worker.ready(), 180, "both services ready again")
        except AssertionError as err:
            # Say whether the broker left a transaction hanging (docs/failover.md) and what the
            # rendezvous reported, not only that it was not ready.
            raise AssertionError(f"{err}; rendezvous readiness: {rendezvous.readiness()}; open transactions: "
                                 f"{open_transactions(config, [topics.answers, topics.log]) or 'none'}") from None
        sender.join()
        answers = read_topic(config, topics.answers, expect=len(sender.ids), decode="answer", timeout=180)
        hanging = open_transactions(config, [topics.answers, topics.log])
    finally:
        rendezvous.stop()
        worker.stop()

    ids = Counter(a["request_id"] for a in answers)
    statuses = Counter(a["status"] for a in answers)
    print(f"FIGURES broker down {OUTAGE_S:.0f}s: sent={len(sender.ids)} (sent again by a new client: "
          f"{sender.resent}) answered={len(ids)} "
          f"duplicated={sum(n - 1 for n in ids.values())} statuses={dict(statuses)} "
          f"cpu_during_outage={ {k: round(v, 2) for k, v in cpu_used.items()} }s not_ready='{not_ready}' "
          f"open_transactions={hanging}")
    # A transaction the broker left hanging across its restart stalls recovery (docs/failover.md):
    # the verdict says so rather than only counting answers.
    assert set(ids) == set(sender.ids) and len(answers) == len(sender.ids), (
        f"every request answered exactly once; transactions still open at the end: {hanging or 'none'}")
    assert statuses["TIMEOUT"] > 0, "requests whose deadline passed during the outage get an explicit TIMEOUT"
    assert sum(statuses.values()) == len(sender.ids)
    assert all(v < OUTAGE_S * 0.25 for v in cpu_used.values()), f"no busy retry loop: {cpu_used}"
    assert "broker unreachable" in not_ready


def test_sigterm_ends_a_rendezvous_whose_broker_is_gone_for_good(own_broker: LocalBroker, tmp_path: Path) -> None:
    """The broker stops and never comes back; the rendezvous, with answers to commit, retries and
    then replaces its transactional producer, whose registration waits for the coordinator.
    SIGTERM must still end it: after its drain timeout, not when the broker returns."""
    config: dict[str, Any] = {"bootstrap.servers": own_broker.bootstrap}
    topics = Topics.from_prefix("rdv.")
    ensure_topics(config, topics, partitions=4)
    # A session longer than the wait below: at the default 6 s, the group session sometimes ran out
    # first (the broker gone), the partitions were lost with the answers not yet committed, and
    # nothing was left to commit: the producer was never replaced (1 CI run in 3 on a busy host).
    # Answers to commit when the broker goes: with commits every 100 ms and a clean stop (which
    # serves the requests in flight), the answers seen were at times all committed first, nothing
    # was left to commit, and the producer was never replaced (a CI run). A commit every 30 s and
    # a kill leave the first answers uncommitted but once in ~300 runs (a commit within the poll
    # between the first answer and the kill).
    rendezvous = Proc(["serve", "--bootstrap", own_broker.bootstrap, "--models", "champion", "--instance", "rdv-0",
                       "--drain-timeout-s", "5", "--session-timeout-ms", "180000", "--commit-interval-ms", "30000",
                       "--transaction-timeout-ms", "60000"],
                      tmp_path / "rendezvous.log").start()
    try:
        sender = Sender(config, topics.requests, total=200, rate=100.0, budget_ms=1_000).start()
        sender.join()
        until(lambda: rendezvous.metric("rdv_answers_total") >= 1, 60, "a first answer")
        own_broker.kill()
        until(lambda: "replacing the producer" in rendezvous.log_file.read_text(), 180,
              "the rendezvous to replace its producer while the broker is away")
        rendezvous.kill(signal.SIGTERM)
        asked = time.monotonic()
        try:
            code = rendezvous.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 120 s after SIGTERM; log:\n{rendezvous.tail()}")
        print(f"FIGURES exited {time.monotonic() - asked:.1f}s after SIGTERM with code {code}")
    finally:
        rendezvous.stop()
    assert code != 0, "it could not commit what it had: an error exit, saying why"
    assert "stopped while waiting for the transaction coordinator" in rendezvous.log_file.read_text()
