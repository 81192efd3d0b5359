"""Several rendezvous instances, failover, and one answer per request — seen from outside.

An outside-style client sends requests with a return address and reads the reply topic with
`isolation.level=read_committed`, as any Kafka client would. Across kill -9, restarts, scale-out
and scale-in it checks: every request answered; no request ever got two *different* answers
(identical repeats are allowed and counted); the answer at the return address is the one on
`rdv.answers`, which holds exactly one answer per request. Each test prints a FIGURES line,
including how long answers stopped around each fault: the longest a request sent after the
fault waited for its answer (the requests of a dead instance's partitions wait until another
instance, or its restarted self, has taken them over).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from services.cli.common import ensure_topics
from services.client.client import make_request
from services.core.codec import codec
from services.core.kafka import committed_offsets, reader, wait_for_groups
from services.core.settings import Topics
from services.model_worker.models import demo_rows
from services.model_worker.settings import model_group
from tests.faults.freeze import frozen
from tests.faults.procs import Proc, until
from tests.integration.harness import PacedSender, read_topic, settled

pytestmark = pytest.mark.kafka


@dataclass
class Replies:
    """Reads every partition of the reply topic from its end; keeps each answer and when it came."""

    config: dict[str, Any]
    topic: str
    answers: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    first_at: dict[str, float] = field(default_factory=dict)  # request_id -> first reply (monotonic)
    arrivals: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Replies:
        consumer = reader(self.config, "outside")
        partitions = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
        ends = [TopicPartition(self.topic, p, consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                                               timeout=10)[1]) for p in partitions]
        consumer.assign(ends)
        self._thread = threading.Thread(target=self._read, args=(consumer,), daemon=True)
        self._thread.start()
        return self

    def _read(self, consumer: Consumer) -> None:
        while not self._stop.is_set():
            for msg in consumer.consume(1000, 0.1):
                if msg.error() is None and msg.key():
                    rid, now = msg.key().decode(), time.monotonic()
                    self.answers[rid].append(msg.value())
                    self.first_at.setdefault(rid, now)
                    self.arrivals.append(now)
        consumer.close()

    def stop(self) -> None:
        """Stop reading and close the consumer (a reader left running outlives the test's broker)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)



class Requests:
    """Valid requests with a return address, at a fixed rate, from a thread."""

    def __init__(self, config: dict[str, Any], topics: Topics, total: int, rate: float, budget_ms: int = 60_000):
        self.topics, self.budget_ms = topics, budget_ms
        self.ids: list[str] = []
        self.sent_at: dict[str, float] = {}
        self._producer = Producer(config)
        self._codec = codec("request")
        self._rows = demo_rows(500, seed=5)
        self._pace = PacedSender(self._send, total, rate, lambda: self._producer.flush(60))

    def _send(self, i: int) -> None:
        record = make_request(self.row(i), budget_ms=self.budget_ms,
                              reply_topic=self.topics.replies, reply_partition=None)
        self.ids.append(record["request_id"])
        self.sent_at[record["request_id"]] = time.monotonic()
        self._producer.produce(self.topics.requests, self._codec.encode(record), key=record["request_id"])
        self._producer.poll(0)

    @property
    def sent(self) -> int:
        return self._pace.sent

    def row(self, index: int) -> dict[str, float]:
        """The features request `index` was sent with."""
        return self._rows[index % len(self._rows)]

    def sent_between(self, first: float, last: float = math.inf) -> list[tuple[str, float]]:
        """(request id, when sent) of the requests sent from `first` to `last`. Safe while the
        sender's thread adds to both: iterating its dict raised "changed size during iteration"
        once in CI (a collection in the copy let the thread run); a slice of the id list is one
        copy, and each lookup by key is safe beside insertions."""
        sent = [(r, self.sent_at.get(r)) for r in self.ids[:]]
        return [(r, t) for r, t in sent if t is not None and first <= t <= last]

    def longest_wait_after(self, moment: float, replies: Replies, window_s: float = 5.0) -> float:
        """How long answers stopped after `moment`: the longest wait for an answer of a request
        sent in the `window_s` after it."""
        waits = [replies.first_at[r] - t for r, t in self.sent_between(moment, moment + window_s)
                 if r in replies.first_at]
        return max(waits, default=float("nan"))

    def resumed_after(self, moment: float, replies: Replies) -> float:
        """How long after `moment` the first answer to a request sent after it arrived."""
        arrivals = [replies.first_at[r] for r, _t in self.sent_between(moment) if r in replies.first_at]
        return min(arrivals, default=float("nan")) - moment

    def start(self) -> Requests:
        self._pace.start()
        return self

    def join(self) -> None:
        self._pace.join()


@dataclass
class Verdict:
    answered: int
    lost: int
    conflicting: int
    identical_repeats: int
    answers_topic: int
    answers_doubled: int
    reply_differs_from_answers_topic: int
    lost_but_on_answers_topic: int  # a reply lost after its answer was committed (vs never answered)

    def faults(self) -> tuple[int, int, int, int]:
        return self.lost, self.conflicting, self.answers_doubled, self.reply_differs_from_answers_topic

    def assert_clean(self, total: int) -> None:
        """Every one of `total` requests answered, once, the same at its return address as on the
        answers topic, which holds one answer for each."""
        assert self.faults() == (0, 0, 0, 0), self.line()
        assert self.answers_topic == total, self.line()

    def line(self) -> str:
        return (f"answered={self.answered} lost={self.lost} "
                f"(of them on the answers topic: {self.lost_but_on_answers_topic}) conflicting={self.conflicting} "
                f"identical_repeats={self.identical_repeats} answers_topic={self.answers_topic} "
                f"answers_doubled={self.answers_doubled} "
                f"reply_differs_from_answers_topic={self.reply_differs_from_answers_topic}")


def verdict(config: dict[str, Any], topics: Topics, requests: Requests, replies: Replies) -> Verdict:
    total = len(requests.ids)
    # On a timeout the verdict counts what is missing, and whether rdv.answers has it.
    with contextlib.suppress(AssertionError):
        until(lambda: all(r in replies.answers for r in requests.ids), 240, "a reply for every request")
    on_topic = read_topic(config, topics.answers, expect=total, timeout=240)
    committed: dict[str, list[bytes]] = defaultdict(list)
    for msg in on_topic:
        committed[msg.key().decode()].append(msg.value())
    replies.stop()
    conflicting = sum(len(set(replies.answers[r])) > 1 for r in requests.ids)
    repeats = sum(len(replies.answers[r]) - len(set(replies.answers[r])) for r in requests.ids)
    differs = sum(bool(committed.get(r)) and committed[r][0] not in replies.answers[r] for r in requests.ids)
    return Verdict(
        answered=sum(r in replies.answers for r in requests.ids),
        lost=sum(r not in replies.answers for r in requests.ids),
        lost_but_on_answers_topic=sum(r not in replies.answers and r in committed for r in requests.ids),
        conflicting=conflicting, identical_repeats=repeats, answers_topic=len(on_topic),
        answers_doubled=sum(len(v) - 1 for v in committed.values()), reply_differs_from_answers_topic=differs,
    )


def send_to_partitions(
    config: dict[str, Any], topics: Topics, tag: str, partitions: range, each: int = 10
) -> list[str]:
    """`each` requests (no return address) to each of `partitions`, ids `<tag>-<partition>-<i>`."""
    producer, requests_codec, rows = Producer(config), codec("request"), demo_rows(each, seed=8)
    ids = []
    for partition in partitions:
        for i in range(each):
            rid = f"{tag}-{partition}-{i}"
            record = make_request(rows[i], budget_ms=60_000, reply_topic=None, reply_partition=None, request_id=rid)
            producer.produce(topics.requests, requests_codec.encode(record), key=rid, partition=partition)
            ids.append(rid)
    producer.flush(30)
    return ids


def fresh_topics(config: dict[str, Any], tag: str, partitions: int) -> tuple[str, Topics]:
    """A topic prefix of the test's own, every topic created with `partitions`."""
    prefix = f"{tag}{uuid.uuid4().hex[:10]}."
    topics = Topics.from_prefix(prefix)
    ensure_topics(config, topics, partitions=partitions)
    return prefix, topics


def sent_while_away(service: Proc, config: dict[str, Any], topics: Topics, seen: Callable[[], set[str]]) -> None:
    """Requests to partitions 0 and 1 only, seen; then `service` stopped, requests to all four
    partitions, `service` started again: every one of those must be seen (`seen`: request ids)."""
    warm_up = send_to_partitions(config, topics, "warm", range(2))
    until(lambda: set(warm_up) <= seen(), 60, "the warm-up seen")
    service.stop()
    away = send_to_partitions(config, topics, "away", range(4))
    service.start()
    until(lambda: set(away) <= seen(), 90, "every request sent while the service was away seen")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


# The project's broker lets a member ask for a 2 s session (group.min.session.timeout.ms=1000);
# the default (6 s) is what any Kafka cluster accepts. Failover time follows it: docs/failover.md.
SESSION_TIMEOUT_MS = "2000"


def serve(procs: list[Proc], tmp_path: Path, name: str, bootstrap: str, prefix: str, *extra: str) -> Proc:
    proc = Proc(["serve", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--models", "champion",
                 "--linger-ms", "200", "--session-timeout-ms", SESSION_TIMEOUT_MS, *extra], tmp_path / f"{name}.log")
    procs.append(proc)
    return proc.start()


def champion(procs: list[Proc], tmp_path: Path, bootstrap: str, prefix: str) -> Proc:
    proc = Proc(["model", "serve", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--model", "demo:champion"],
                tmp_path / "champion.log")
    procs.append(proc)
    return proc.start()


def test_the_only_instance_killed_five_times_never_answers_twice_differently(
    procs: list[Proc], tmp_path: Path, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    champion(procs, tmp_path, bootstrap, prefix)
    rendezvous = serve(procs, tmp_path, "rendezvous", bootstrap, prefix, "--instance", "rdv-0")
    replies = Replies(config, topics.replies).start()
    requests = Requests(config, topics, total=20_000, rate=1000.0).start()
    gaps = []
    for kill in range(5):
        until(lambda k=kill: requests.sent >= 2_000 + 3_000 * k, 120, "the stream to move on")
        killed_at = time.monotonic()
        rendezvous.kill(signal.SIGKILL)
        rendezvous.wait(10)
        rendezvous.start()
        until(lambda t=killed_at: any(a > t + 0.2 for a in replies.arrivals[-50:]), 60, "answers again")
        gaps.append(killed_at)
    requests.join()
    result = verdict(config, topics, requests, replies)
    resumed = [requests.resumed_after(at, replies) for at in gaps]
    waits = [requests.longest_wait_after(at, replies) for at in gaps]
    # Kills 3 s apart: the longest waits include the backlog of the whole series, not one restart.
    print(f"FIGURES kill -9 the only instance x5 (restarted at once, static member): sent=20000 {result.line()} "
          f"answers_resumed_s={[round(r, 2) for r in resumed]} longest_wait_s={[round(w, 2) for w in waits]}")
    result.assert_clean(20_000)


def test_one_of_two_instances_killed_at_1000_per_second_its_partitions_move_on(
    procs: list[Proc], tmp_path: Path, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    champion(procs, tmp_path, bootstrap, prefix)
    first = serve(procs, tmp_path, "rendezvous-a", bootstrap, prefix)
    serve(procs, tmp_path, "rendezvous-b", bootstrap, prefix)
    replies = Replies(config, topics.replies).start()
    requests = Requests(config, topics, total=15_000, rate=1000.0).start()
    until(lambda: requests.sent >= 5_000, 60, "5,000 requests on their way")
    killed_at = time.monotonic()
    first.kill(signal.SIGKILL)
    requests.join()
    result = verdict(config, topics, requests, replies)
    gap = requests.longest_wait_after(killed_at, replies)
    print(f"FIGURES kill -9 one of two instances at 1000/s: sent=15000 {result.line()} "
          f"answers_stopped_s={gap:.2f}")
    result.assert_clean(15_000)


# --stall-timeout-ms for the hang test: the default (30 s) made short; at least the session (2 s).
STALL_TIMEOUT_MS = "6000"


def test_one_of_two_instances_whose_poll_loop_hangs_gives_its_partitions_up_and_comes_back_fenced(
    procs: list[Proc], tmp_path: Path, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    """Its main thread (the poll loop) stopped, its process alive and librdkafka's threads
    heartbeating: no session notices. It leaves the group once its loop has not turned for
    --stall-timeout-ms and the other instance answers its partitions, fencing its transactional
    id (before that limit existed they waited librdkafka's 300 s). Let go afterwards, it rejoins
    the group: nothing it held is answered twice or differently."""
    champion(procs, tmp_path, bootstrap, prefix)
    hung = serve(procs, tmp_path, "rendezvous-a", bootstrap, prefix, "--stall-timeout-ms", STALL_TIMEOUT_MS)
    other = serve(procs, tmp_path, "rendezvous-b", bootstrap, prefix, "--stall-timeout-ms", STALL_TIMEOUT_MS)
    replies = Replies(config, topics.replies).start()
    requests = Requests(config, topics, total=12_000, rate=500.0).start()
    until(lambda: requests.sent >= 2_000, 60, "2,000 requests on their way")
    assert hung.process is not None
    # The stops must find it while requests still come: 20 s of the stream are left.
    with frozen(hung.process, give_up_s=10.0) as stops:
        hung_at = time.monotonic()

        def answered_since_the_hang() -> bool:  # the requests of the second after it, every partition's
            window = [r for r, _t in requests.sent_between(hung_at, hung_at + 1.0)]
            return time.monotonic() > hung_at + 1.0 and bool(window) and all(r in replies.first_at for r in window)

        until(answered_since_the_hang, 90, "the hung instance's partitions answered by the other")
        taken_over_s = time.monotonic() - hung_at
    # What says the hang was one: librdkafka's verdict in the hung instance, the fence in the other.
    until(lambda: "maximum poll interval" in hung.tail(400), 60, "the hung instance told it had left its group")
    assert "the previous owner's transactional id" in other.tail(400), other.tail(60)
    until(hung.ready, 60, "the hung instance ready again")
    wait_for_groups(config, [f"{prefix}rendezvous"], timeout=60, members=2)
    requests.join()
    result = verdict(config, topics, requests, replies)
    print(f"FIGURES poll loop of one of two instances hung at 500/s (stall timeout {STALL_TIMEOUT_MS} ms): "
          f"sent=12000 {result.line()} every_partition_answered_again_s={taken_over_s:.2f} "
          f"longest_wait_s={requests.longest_wait_after(hung_at, replies):.2f} stops_to_hang_it={stops}")
    result.assert_clean(12_000)


def test_an_instance_added_and_one_stopped_mid_stream_lose_and_double_nothing(
    procs: list[Proc], tmp_path: Path, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    champion(procs, tmp_path, bootstrap, prefix)
    first = serve(procs, tmp_path, "rendezvous-a", bootstrap, prefix)
    serve(procs, tmp_path, "rendezvous-b", bootstrap, prefix)
    replies = Replies(config, topics.replies).start()
    requests = Requests(config, topics, total=15_000, rate=1000.0).start()
    until(lambda: requests.sent >= 4_000, 60, "4,000 requests on their way")
    added_at = time.monotonic()
    serve(procs, tmp_path, "rendezvous-c", bootstrap, prefix)
    until(lambda: requests.sent >= 9_000, 60, "9,000 requests on their way")
    stopped_at = time.monotonic()
    first.kill(signal.SIGTERM)
    assert first.wait(30) == 0
    requests.join()
    result = verdict(config, topics, requests, replies)
    print(f"FIGURES scale 2 -> 3 -> 2 instances mid-stream at 1000/s: sent=15000 {result.line()} "
          f"answers_stopped_s(add)={requests.longest_wait_after(added_at, replies):.2f} "
          f"answers_stopped_s(stop)={requests.longest_wait_after(stopped_at, replies):.2f}")
    result.assert_clean(15_000)


def test_a_retry_after_a_kill_gets_the_first_answer_again_not_a_second_decision(
    procs: list[Proc], tmp_path: Path, bootstrap: str, config: dict[str, Any]
) -> None:
    """Retries (the same request ids) of the first 20 of 12,000 requests, sent after the only
    instance was killed with -9 and restarted: the restarted owner remembers their answers from
    its scan of the answers topic. One partition, so 11,980 answers are newer than the oldest
    retried: over the scan's old cap of 10,000, under which each retry got a second decision,
    a second record on rdv.answers and rdv.log, and a different reply (a failover review)."""
    prefix, topics = fresh_topics(config, "r", 1)
    champion(procs, tmp_path, bootstrap, prefix)
    rendezvous = serve(procs, tmp_path, "rendezvous", bootstrap, prefix, "--instance", "rdv-0")
    replies = Replies(config, topics.replies).start()
    requests = Requests(config, topics, total=12_000, rate=1000.0).start()
    requests.join()
    until(lambda: all(r in replies.answers for r in requests.ids), 120, "every request answered")
    rendezvous.kill(signal.SIGKILL)
    rendezvous.wait(10)
    rendezvous.start()
    retried = requests.ids[:20]
    producer, requests_codec = Producer(config), codec("request")
    for index, rid in enumerate(retried):
        record = make_request(requests.row(index), budget_ms=60_000, reply_topic=topics.replies,
                              reply_partition=None, request_id=rid)
        producer.produce(topics.requests, requests_codec.encode(record), key=rid)
    producer.flush(30)
    until(lambda: all(len(replies.answers[r]) == 2 for r in retried), 120, "a reply to every retry")
    answers = Counter(msg.key().decode() for msg in read_topic(config, topics.answers, expect=12_000, timeout=120))
    logged = Counter(record["request_id"] for record in read_topic(config, topics.log, expect=12_000, timeout=120,
                                                                   decode="comparison"))
    replies.stop()
    assert [len(set(replies.answers[r])) for r in retried] == [1] * 20  # the same answer, byte for byte
    assert [answers[r] for r in retried] == [1] * 20 and sum(answers.values()) == 12_000
    assert [logged[r] for r in retried] == [1] * 20 and sum(logged.values()) == 12_000


def test_with_start_from_latest_what_came_to_a_partition_never_read_while_its_owner_was_away_is_answered(
    procs: list[Proc], tmp_path: Path, bootstrap: str, config: dict[str, Any]
) -> None:
    """`--start-from latest`: partitions 2 and 3 get no request before the instance stops; what is
    sent to every partition while it is away is answered when it is back. Their start was never
    committed (nothing read), and the restart's `latest` skipped it all (a failover review)."""
    prefix, topics = fresh_topics(config, "l", 4)
    champion(procs, tmp_path, bootstrap, prefix)
    rendezvous = serve(procs, tmp_path, "rendezvous", bootstrap, prefix, "--instance", "rdv-0",
                       "--start-from", "latest")

    def answered() -> set[str]:
        return {msg.key().decode() for msg in read_topic(config, topics.answers, expect=0, timeout=30)}

    sent_while_away(rendezvous, config, topics, answered)


def test_with_start_from_latest_a_partition_assigned_later_has_its_start_committed_at_once(
    procs: list[Proc], tmp_path: Path, bootstrap: str, config: dict[str, Any]
) -> None:
    """A partition never committed starts at its end when assigned; until that start is
    committed, a kill makes the next owner's `latest` skip what came meanwhile. The first
    assignment is committed on the loop's first pass; one that came later (here: partitions added
    to the topics) waited for the next commit interval, 7.5 minutes here. On the way: requests grown
    before the outputs they are co-partitioned with is said as such, not as a broker away."""
    prefix, topics = fresh_topics(config, "c", 2)
    rendezvous = serve(procs, tmp_path, "rendezvous", bootstrap, prefix, "--instance", "rdv-0",
                       "--start-from", "latest", "--commit-interval-ms", "450000", "--transaction-timeout-ms", "900000",
                       "--kafka-config", "topic.metadata.refresh.interval.ms=500")

    def committed(count: int) -> list[int]:
        partitions = [TopicPartition(topics.requests, p) for p in range(count)]
        return [tp.offset for tp in committed_offsets(config, f"{prefix}rendezvous", partitions, stable=True)]

    until(settled(lambda: min(committed(2)) >= 0), 60, "the first assignment's starts committed")
    admin = AdminClient(config)  # kept: its futures fail once the client is collected

    def grow(*names: str) -> None:
        for future in admin.create_partitions([NewPartitions(name, 4) for name in names]).values():
            future.result(30)

    grow(topics.requests, topics.scores)
    until(lambda: "answers and log must have as many partitions as requests" in rendezvous.tail(200), 60,
          "the recovery of the added partitions saying why it waits")
    assert "recovery waiting for the broker" not in rendezvous.tail(200)
    grow(topics.answers, topics.log)
    until(settled(lambda: min(committed(4)) >= 0), 60, "the added partitions' starts committed")


def test_a_model_worker_with_start_from_latest_scores_what_came_to_a_partition_never_read_while_it_was_away(
    procs: list[Proc], tmp_path: Path, bootstrap: str, config: dict[str, Any]
) -> None:
    """The skeleton's services (model workers, the decoy, the comparison) had the rendezvous'
    fault: a partition nothing was read from was never committed, so with `--start-from latest`
    a restart skipped whatever came to it meanwhile (here: requests never scored)."""
    prefix, topics = fresh_topics(config, "w", 4)
    worker = Proc(["model", "serve", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--model", "demo:champion",
                   "--start-from", "latest", "--instance", "w-0"], tmp_path / "champion.log")
    procs.append(worker)
    worker.start()

    def scored() -> set[str]:
        return {record["request_id"] for record in read_topic(config, topics.scores, expect=0, timeout=30,
                                                              decode="score")}

    def committed() -> list[int]:
        partitions = [TopicPartition(topics.requests, p) for p in range(4)]
        return [tp.offset for tp in committed_offsets(config, model_group(prefix, ["champion"]), partitions,
                                                          stable=True)]

    # Where `latest` started each partition is committed before anything is read from it.
    until(settled(lambda: min(committed()) >= 0), 60, "a committed start on every partition")
    sent_while_away(worker, config, topics, scored)
