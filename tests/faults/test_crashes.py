"""Crash and overload faults on a real broker, with services as real processes.

Each test prints one `FIGURES ...` line (sent / answered / duplicated / dead-lettered) so a
run with `-s` shows what was measured.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message

from services.client.client import make_request
from services.core.codec import codec
from services.core.kafka import Producer
from services.core.settings import Topics
from services.decoy.archive import iter_archive
from services.model_worker.models import demo_rows
from tests.faults.procs import Proc, until
from tests.integration.harness import PacedSender, read_topic

pytestmark = pytest.mark.kafka


class Sender:
    """Produces `total` valid requests (no return address) at `rate`/s from a thread; with
    `garbage_every`, one undecodable record after every that many valid ones."""

    # Longer than any outage a test makes: a record queued while the broker is away is sent
    # once it is back, not timed out.
    MESSAGE_TIMEOUT_MS = 60_000

    def __init__(self, config: dict[str, Any], topic: str, total: int, rate: float, budget_ms: int = 60_000,
                 garbage_every: int = 0):
        self.topic, self.budget_ms, self.garbage_every = topic, budget_ms, garbage_every
        self.ids: list[str] = []
        self.garbage = 0
        self.resent = 0
        self.failures: list[str] = []
        self._unacknowledged = 0
        self._lock = threading.Lock()
        # After a broker restart librdkafka (2.16, issue #5430) once left this client without a
        # leader for every partition for good ("new leader-1 not found in cache": 11,000 requests
        # never sent). The project's producer replaces a client whose record times out while in
        # use and sends what the old one still queued again itself; the records that timed out
        # were never sent to a partition without a leader, and are sent again here, as an outside
        # client would (the broker is up then: a record is not in flight for a whole minute).
        self._producer = Producer({**config, "message.timeout.ms": self.MESSAGE_TIMEOUT_MS}, delivered=True,
                                  soft_topics=lambda _topic: True, on_soft_failure=self._undelivered)
        self._requests = codec("request")
        self._rows = demo_rows(500, seed=21)
        self._pace = PacedSender(self._send, total, rate, self._flush)

    @property
    def sent(self) -> int:
        return self._pace.sent

    def _produce(self, value: bytes, key: bytes) -> None:
        with self._lock:
            self._unacknowledged += 1
        self._producer.produce(self.topic, value, key=key, on_done=self._acknowledged)

    def _acknowledged(self) -> None:
        with self._lock:
            self._unacknowledged -= 1

    def _undelivered(self, msg: Message, err: KafkaError) -> None:
        if err.code() != KafkaError._MSG_TIMED_OUT:
            self.failures.append(err.str())
            return
        with self._lock:
            self.resent += 1
        self._produce(msg.value() or b"", msg.key() or b"")

    def _send(self, i: int) -> None:
        record = make_request(self._rows[i % len(self._rows)], budget_ms=self.budget_ms, reply_topic=None,
                              reply_partition=None)
        self.ids.append(record["request_id"])
        self._produce(self._requests.encode(record), record["request_id"].encode())
        if self.garbage_every and (i + 1) % self.garbage_every == 0:
            self._produce(b"\x00garbage " + str(i).encode(), b"bad")
            self.garbage += 1
        self._producer.poll(0)

    def _flush(self) -> None:
        # Polled, not flushed: a poll replaces a stuck client, whose records are sent again.
        until(lambda: (self._producer.poll(0.2), self._unacknowledged == 0)[1], 3 * self.MESSAGE_TIMEOUT_MS / 1000,
              "every request acknowledged by the broker")
        assert not self.failures, f"requests refused: {self.failures[:3]}"
        # Closed here, not when collected: the pacing thread's bound method keeps this object in a
        # reference cycle, which would keep the client reconnecting until the interpreter exits.
        self._producer.close()

    def start(self) -> Sender:
        self._pace.start()
        return self

    def join(self) -> None:
        self._pace.join()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def spawn(procs: list[Proc], tmp_path: Path, name: str, *args: str) -> Proc:
    proc = Proc(list(args), tmp_path / f"{name}.log")
    procs.append(proc)
    return proc.start()


def base(bootstrap: str, prefix: str) -> tuple[str, ...]:
    return ("--bootstrap", bootstrap, "--topic-prefix", prefix)


def test_rendezvous_killed_five_times_answers_every_request_exactly_once(
    procs: list[Proc], tmp_path: Path, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    spawn(procs, tmp_path, "champion", "model", "serve", *base(bootstrap, prefix), "--model", "demo:champion")
    rendezvous = spawn(procs, tmp_path, "rendezvous", "serve", *base(bootstrap, prefix), "--models", "champion",
                       "--instance", "rdv-0", "--linger-ms", "200")
    total = 20_000
    sender = Sender(config, topics.requests, total, rate=1000.0).start()
    rng = random.Random(7)
    for _kill in range(5):
        # A random moment of the stream: after a random number of answers from this incarnation.
        moment = rng.randrange(500, 2500)
        until(lambda m=moment: rendezvous.metric("rdv_answers_total") >= m or sender.sent >= total, 120,
              f"{moment} answers before the next kill")
        rendezvous.kill(signal.SIGKILL)
        rendezvous.wait(10)
        rendezvous.start()
    sender.join()

    answers = read_topic(config, topics.answers, expect=total, decode="answer", timeout=240)
    ids = Counter(a["request_id"] for a in answers)
    duplicated = sum(n - 1 for n in ids.values() if n > 1)
    print(f"FIGURES kill -9 rendezvous x5: sent={total} answered={len(ids)} duplicated={duplicated} "
          f"statuses={dict(Counter(a['status'] for a in answers))} restarts={rendezvous.starts - 1}")
    assert len(answers) == total, "exactly 20,000 answers on the committed answers topic"
    assert duplicated == 0 and set(ids) == set(sender.ids)


def test_model_worker_killed_mid_stream_skips_no_request(
    procs: list[Proc], tmp_path: Path, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    worker = spawn(procs, tmp_path, "champion", "model", "serve", *base(bootstrap, prefix), "--model",
                   "demo:champion", "--instance", "champion-0")
    total = 6000
    sender = Sender(config, topics.requests, total, rate=1000.0).start()
    until(lambda: worker.metric("rdv_model_requests_total") >= 1500, 60, "the worker to score a share")
    worker.kill(signal.SIGKILL)
    worker.wait(10)
    down_at = sender.sent
    until(lambda: sender.sent >= down_at + 500, 60, "500 requests to arrive while the worker is down")
    worker.start()
    sender.join()

    scores = read_topic(config, topics.scores, expect=total, decode="score", timeout=120)
    scored = Counter(s["request_id"] for s in scores if s["model"] == "champion")
    missing = set(sender.ids) - set(scored)
    print(f"FIGURES kill -9 worker: sent={total} scored={len(scored)} missing={len(missing)} "
          f"rescored_after_restart={sum(n - 1 for n in scored.values())}")
    assert not missing, f"{len(missing)} requests never scored by the restarted model"


def test_flood_of_malformed_messages_is_dead_lettered_with_bounded_memory(
    procs: list[Proc], tmp_path: Path, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    spawn(procs, tmp_path, "champion", "model", "serve", *base(bootstrap, prefix), "--model", "demo:champion")
    limit, orphans = 2000, 5000
    rendezvous = spawn(procs, tmp_path, "rendezvous", "serve", *base(bootstrap, prefix), "--models", "champion",
                       "--max-mailboxes", str(limit), "--max-orphans", str(orphans), "--linger-ms", "200")
    sender = Sender(config, topics.requests, 10_000, rate=20_000.0, garbage_every=1).start()
    peak = 0.0

    def watch() -> bool:
        nonlocal peak
        peak = max(peak, rendezvous.metric("rdv_mailboxes_open"))
        return rendezvous.metric("rdv_answers_total") >= 10_000

    until(watch, 180, "10,000 answers")
    sender.join()
    answers = read_topic(config, topics.answers, expect=10_000, decode="answer")
    dead = read_topic(config, topics.deadletter, expect=10_000, decode="deadletter")
    rss_mb = rendezvous.rss_peak_kb() / 1024
    print(f"FIGURES flood: valid={len(sender.ids)} malformed={sender.garbage} answered={len(answers)} "
          f"dead_lettered={len(dead)} peak_mailboxes={peak:.0f} (limits {limit} + {orphans}) peak_rss={rss_mb:.0f}MB")
    assert len(answers) == 10_000 and {a["request_id"] for a in answers} == set(sender.ids)
    assert len(dead) == 10_000 and all(d["reason"] and d["error_type"] == "DecodeFailed" for d in dead)
    assert rendezvous.alive(), "bad input never kills the service"
    # Requests in flight and scores waiting for their requests are bounded separately (request
    # intake pauses at the limit; scores are paused only while their requests lag, never while
    # intake is paused, and the oldest orphans beyond their bound are dropped); one poll batch
    # may overshoot.
    assert peak <= limit + orphans + 1000, "memory stays bounded"


def test_sigterm_under_load_exits_within_the_drain_bound_and_loses_nothing(
    procs: list[Proc], tmp_path: Path, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    spawn(procs, tmp_path, "champion", "model", "serve", *base(bootstrap, prefix), "--model", "demo:champion")
    drain_s = 5.0
    args = ("serve", *base(bootstrap, prefix), "--models", "champion", "--instance", "rdv-0",
            "--drain-timeout-s", str(drain_s), "--linger-ms", "200")
    rendezvous = spawn(procs, tmp_path, "rendezvous", *args)
    total = 8000
    sender = Sender(config, topics.requests, total, rate=1000.0).start()
    until(lambda: rendezvous.metric("rdv_answers_total") >= 2000, 60, "the stream to be under way")
    signalled = time.monotonic()
    rendezvous.kill(signal.SIGTERM)
    code = rendezvous.wait(drain_s + 60)
    exit_s = time.monotonic() - signalled
    rendezvous.start()  # the next owner picks up where it left off
    sender.join()

    answers = read_topic(config, topics.answers, expect=total, decode="answer", timeout=120)
    ids = Counter(a["request_id"] for a in answers)
    print(f"FIGURES SIGTERM under load: exit_code={code} exit_after={exit_s:.2f}s (drain bound {drain_s}s) "
          f"sent={total} answered={len(ids)} duplicated={sum(n - 1 for n in ids.values())}")
    assert code == 0  # within drain_s + 60 s (the wait above raises past it): the figure says how soon
    assert len(answers) == total and set(ids) == set(sender.ids)


def test_a_decoy_killed_and_restarted_gets_its_partitions_back_in_seconds(
    procs: list[Proc], tmp_path: Path, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    """The killed member keeps its partitions until its session times out: librdkafka's default
    of 45 s left the restarted decoy (and comparison service) without partitions for most of a
    minute, the archive behind meanwhile (a review by experiment). The skeleton's 6 s now."""
    decoy = spawn(procs, tmp_path, "decoy", "decoy", "serve", *base(bootstrap, prefix),
                  "--archive-dir", str(tmp_path / "archive"))
    sender = Sender(config, topics.requests, 200, rate=200.0).start()
    sender.join()
    until(lambda: decoy.metric("rdv_decoy_archived_total") >= 200, 60, "the first 200 requests archived")
    decoy.kill(signal.SIGKILL)
    decoy.wait(10)
    decoy.start(ready_timeout=30)  # ready: partitions assigned (45 s and more before)
    more = Sender(config, topics.requests, 200, rate=200.0).start()
    more.join()
    until(lambda: decoy.metric("rdv_decoy_archived_total") >= 200, 30, "requests after the restart archived")
    decoy.stop()  # seals its file, which the archive's reader then reads
    archived = {record["key"] for record in iter_archive(tmp_path / "archive")}
    assert {rid.encode() for rid in more.ids} <= archived, "a request sent after the restart is not in the archive"
