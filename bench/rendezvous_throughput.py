"""Maximum throughput of one rendezvous instance, against a bare pass-through of the same records.

    .venv/bin/python bench/rendezvous_throughput.py [--requests 20000] [--partitions 4] [--json FILE]
                                                    [--processing at-least-once] [--profile FILE]

N requests and 3 scores per request (champion, challenger, canary; each score on the same
partition as its request) are written to fresh topics first. Then, one at a time, in a thread
of this process:

1. baseline: a bare confluent-kafka consumer reads both topics and produces every value to an
   output topic (no decoding, no commits), timed until all 4N records are on the output topic;
2. one `Rendezvous` (deadline far away, so every answer is the champion's), timed until all N
   comparison records are on the log topic; the records are then read back and checked;
3. the kafka skeleton (bench/kafka_skeleton.py): the rendezvous' Kafka work alone, on its spec
   and the service skeleton, writing the same three records per request with no decode, join
   or encode; the rendezvous' thread CPU per request splits into its part and the rest;
4. the baseline again. Each baseline run (`--baseline-runs` before and as many after) uses a
   new group and output topic; the ratio uses their median, their spread shows the noise.

Besides the rates it reports each run's thread CPU time and requests per thread CPU-second: on
a shared machine the wall clock of two runs of the same code differs by half, the CPU spent on
the same records far less. Thread CPU is that of every Python thread the run's service ran: the
thread running it and each Python thread it started (the rendezvous' and the skeleton's
exactly-once commit thread `rdv-commit` and its helpers; the pass-through starts none), sampled
from /proc (bench/common.py MeasuredThread); librdkafka's own threads (rdk:*) are excluded. The
CPU of the one thread that runs the service is given apart.

Each run is timed, the same way for all three, from the moment its first output record is seen
on the output topic to the moment the last one is (steady: the headline rate and ratio, and the
target's verdict), and from the consumer's partition assignment to the last output (wall-clock,
printed beside it: it includes the broker's first fetch, a fixed ~0.1 s that pulls the ratio
toward 1). Outputs are counted by polling every 10 ms: the baseline's high watermarks; the
rendezvous' and the skeleton's committed records, with a read_committed consumer, as they write
exactly-once in transactions (so their first output is seen after their first commit).
Target: >= 20,000 req/s.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/<name>.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from bench.common import (
    MODEL_VERSIONS,
    POLL_S,
    BenchError,
    BrokerInfo,
    CpuMeter,
    MeasuredThread,
    RecordCounter,
    bare_consumer,
    bare_producer,
    bench_and_broker,
    cpu_figures,
    fresh_topics,
    judged,
    metered,
    new_parser,
    note,
    pass_through,
    plain_topics,
    positive,
    print_profile,
    print_table,
    ratio,
    read_topic,
    run_bench,
    run_prefix,
    steady_rate,
    watermark_total,
)
from bench.kafka_skeleton import KafkaSkeleton, Outputs
from services.cli.common import topic_specs
from services.client.client import make_request
from services.core.codec import codec
from services.core.kafka import Producer
from services.core.runtime import now_ms
from services.core.settings import Topics
from services.model_worker.models import demo_rows
from services.rendezvous.service import Rendezvous
from services.rendezvous.settings import RendezvousSettings

MODELS = MODEL_VERSIONS
TARGET_REQ_S = 20_000.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    arg = parser.add_argument
    arg("--requests", type=int, default=20_000, help="requests pre-loaded, 3 scores each (default 20000)")
    arg("--partitions", type=int, default=4, help="partitions of requests/scores (default 4)")
    arg("--budget-ms", type=int, default=600_000, help="deadline budget of the requests (default 600000)")
    arg("--no-reply-to", action="store_true", help="requests carry no return address (answers topic only)")
    arg("--timeout", type=float, default=60.0, help="give up a timing after this many seconds (default 60)")
    arg("--processing", choices=("exactly-once", "at-least-once"), default="exactly-once",
        help="the rendezvous' --processing (default exactly-once, as the service)")
    arg("--baseline-runs", type=int, default=2, help="pass-through runs before and after (default 2)")
    arg("--profile", metavar="FILE", help="cProfile the rendezvous thread; write pstats to FILE, print top")
    arg("--cloudevents", action="store_true", help="the rendezvous adds CloudEvents headers (serve --cloudevents)")
    args = parser.parse_args(argv)
    positive(parser, args, "requests", "partitions", "budget_ms", "timeout", "baseline_runs")
    return args


@dataclass(frozen=True)
class Record:
    is_request: bool
    partition: int
    key: bytes
    value: bytes


def records(count: int, partitions: int, reply_topic: str | None, budget_ms: int, created: int) -> Iterator[Record]:
    """`count` encoded requests, each followed by its three scores, on partition i % partitions
    (also what bench/join_ceiling.py feeds the join without Kafka)."""
    rows = demo_rows(min(count, 5_000), seed=2)
    values = np.random.default_rng(3).random((count, len(MODELS))).tolist()
    requests, scores = codec("request"), codec("score")
    for i in range(count):
        partition = i % partitions
        request = make_request(rows[i % len(rows)], budget_ms=budget_ms, reply_topic=reply_topic,
                               reply_partition=partition if reply_topic else None, created_at=created)
        key = request["request_id"].encode()
        yield Record(True, partition, key, requests.encode(request))
        for (model, version), value in zip(MODELS, values[i], strict=True):
            score = {
                "request_id": request["request_id"], "model": model, "version": version,
                "instance": "bench", "score": value, "label": "benign" if value > 0.5 else "malignant",
                "error": None, "deadline": request["deadline"], "received_at": created + 1,
                "scored_at": created + 2, "compute_ms": 0.5,
            }  # fmt: skip
            yield Record(False, partition, key, scores.encode(score))


def preload(bootstrap: str, topics: Topics, args: argparse.Namespace) -> float:
    """Write N requests and 3N scores; returns the seconds it took."""
    started = time.monotonic()
    reply = None if args.no_reply_to else topics.replies
    write_feed(bootstrap, topics, records(args.requests, args.partitions, reply, args.budget_ms, now_ms()))
    return time.monotonic() - started


def write_feed(bootstrap: str, topics: Topics, feed: Iterable[Record]) -> None:
    """Every record of `feed` on the requests or scores topic, acknowledged (the client waits for
    room when its queue is full: services/core/kafka/producer.py)."""
    producer = Producer({"bootstrap.servers": bootstrap})
    try:
        for i, record in enumerate(feed):
            topic = topics.requests if record.is_request else topics.scores
            producer.produce(topic, record.value, key=record.key, partition=record.partition)
            if i % 4000 == 0:
                producer.poll(0)
        producer.flush()
    finally:
        producer.close()


@dataclass(frozen=True)
class Timing:
    startup_s: float  # thread start -> partitions assigned
    processing_s: float  # partitions assigned -> every output record on the topic
    outputs: int
    # CPU of every Python thread the run's service ran over its whole life (start-up and stop
    # included; librdkafka's own threads not): what the code costs whatever else the machine did.
    thread_cpu_s: float
    first_s: float = math.nan  # partitions assigned -> the first output record seen on the topic
    first_outputs: int = 0  # output records seen then
    run_thread_cpu_s: float = math.nan  # of thread_cpu_s, the thread that runs the service
    threads_cpu_s: dict[str, float] = field(default_factory=dict)  # thread_cpu_s by thread name

    def steady_req_s(self, requests: int) -> float:
        """Requests per second from the first output seen to the last: the share of the work left
        then, over the time it took (the broker's first fetch left out)."""
        left = requests * (1.0 - self.first_outputs / max(self.outputs, 1))
        return steady_rate(left, self.processing_s - self.first_s)


def timed(
    name: str,
    target: Callable[[threading.Event], object],
    ready: threading.Event,
    count: Callable[[], int],
    expect: int,
    timeout: float,
    profile: str | None = None,
) -> Timing:
    """Run `target(stop)` in a thread; time assignment -> `count()` reaching `expect`; stop it.

    `count()` returns the records on the output topic so far, waiting up to ~POLL_S for news.
    """
    def check(what: str, since: float) -> None:
        thread.raise_failure()
        if not thread.is_alive():
            raise BenchError(f"{name} stopped by itself before {what}")
        if time.monotonic() - since > timeout:
            raise BenchError(f"{name}: no {what} within {timeout:g} s")

    started = time.monotonic()
    thread = MeasuredThread(name, target, ready, profile)
    try:
        while not ready.wait(0.1):
            check("partition assignment", started)
        check("partition assignment", started)
        assigned = time.monotonic()
        first_at, first = math.nan, 0
        while (outputs := count()) < expect:
            if outputs and not first:
                first_at, first = time.monotonic(), outputs
            check(f"{expect:,} output records", assigned)
        done = time.monotonic()
        if not first:  # all of them seen at once: no steady rate
            first_at, first = done, outputs
    finally:
        thread.finish()
    thread.check_finished()
    return Timing(assigned - started, done - assigned, outputs, thread.cpu_s, first_at - assigned, first,
                  thread.run_thread_cpu_s, dict(thread.threads_cpu_s))


def run_baseline(
    bootstrap: str, topics: Topics, out_topic: str, args: argparse.Namespace
) -> Timing:
    ready = threading.Event()

    def target(stop: threading.Event) -> None:
        consumer = bare_consumer(bootstrap, out_topic)  # a fresh group per output topic
        producer = bare_producer(bootstrap)
        try:
            consumer.subscribe([topics.requests, topics.scores], on_assign=lambda _c, _p: ready.set())
            pass_through(consumer, producer, out_topic, stop, keep_partition=False, max_batch=1000)
        finally:
            consumer.close()

    # No transactions here, so the high watermarks count the records exactly, at no cost to the
    # GIL this thread shares with the pass-through.
    counter = bare_consumer(bootstrap, f"bench-counter-{uuid.uuid4().hex}")

    def count() -> int:
        time.sleep(POLL_S)  # polling the topic's high watermarks, an external condition
        return watermark_total(counter, out_topic, args.partitions)

    try:
        expect = args.requests * (1 + len(MODELS))
        return timed("pass-through", target, ready, count, expect, args.timeout)
    finally:
        counter.close()


def rendezvous_settings(bootstrap: str, prefix: str, args: argparse.Namespace, group: str = "") -> RendezvousSettings:
    settings = RendezvousSettings(
        bootstrap=bootstrap, topic_prefix=prefix, models=tuple(m for m, _ in MODELS), group=group,
        deadline_ms=args.budget_ms, processing=args.processing, cloudevents=args.cloudevents,
    )  # fmt: skip
    settings.validate()
    return settings


def run_rendezvous(bootstrap: str, prefix: str, topics: Topics, args: argparse.Namespace) -> Timing:
    service = Rendezvous(rendezvous_settings(bootstrap, prefix, args))
    # Exactly-once writes in transactions: count the committed records, not the watermarks.
    counter = RecordCounter(bootstrap, topics.log, args.partitions)
    try:
        return timed("rendezvous", service.run, service.ready, lambda: counter.update(POLL_S),
                     args.requests, args.timeout, args.profile)
    finally:
        counter.close()


def skeleton_outputs(prefix: str, args: argparse.Namespace) -> Outputs:
    replies = None if args.no_reply_to else f"{prefix}skeleton.replies"
    return Outputs(f"{prefix}skeleton.answers", f"{prefix}skeleton.log", replies)


def run_skeleton(bootstrap: str, prefix: str, topics: Topics, args: argparse.Namespace) -> Timing:
    """The rendezvous' Kafka work alone (bench/kafka_skeleton.py), in a group of its own."""
    spec = Rendezvous(rendezvous_settings(bootstrap, prefix, args, group=f"{prefix}skeleton")).service.spec
    outputs = skeleton_outputs(prefix, args)
    skeleton = KafkaSkeleton(spec, topics.requests, outputs)
    counter = RecordCounter(bootstrap, outputs.log, args.partitions)
    try:
        timing = timed("kafka skeleton", skeleton.run, skeleton.ready, lambda: counter.update(POLL_S),
                       args.requests, args.timeout)
    finally:
        counter.close()
    # Its replies were sent as the rendezvous sends them; closing its producer waited for them.
    if outputs.replies is not None and skeleton.replies_acknowledged != args.requests:
        raise BenchError(f"kafka skeleton: {skeleton.replies_acknowledged:,} replies acknowledged "
                         f"of {args.requests:,}")
    return timing


def check_log(bootstrap: str, topics: Topics, args: argparse.Namespace) -> dict[str, Any]:
    """Read the comparison records back: one per request, answered by the champion, 3 outputs."""
    comparisons = codec("comparison")
    records = [comparisons.decode(m.value()) for m in read_topic(bootstrap, topics.log, args.partitions)]
    ids = {r["request_id"] for r in records}
    outcomes = Counter((r["status"], r["chosen_model"]) for r in records)
    outputs = Counter(len(r["outputs"]) for r in records)
    dead = len(read_topic(bootstrap, topics.deadletter, 1))
    answers = len(read_topic(bootstrap, topics.answers, args.partitions))
    problems = []
    if len(records) != args.requests or len(ids) != args.requests:
        problems.append(
            f"{len(records):,} comparison records for {len(ids):,} ids, expected {args.requests:,}"
        )
    if outcomes != Counter({("OK", "champion"): args.requests}):
        problems.append(f"outcomes {dict(outcomes)}")
    if outputs != Counter({len(MODELS): args.requests}):
        problems.append(f"outputs per record {dict(outputs)}")
    if dead:
        problems.append(f"{dead} dead letters")
    return {"records": len(records), "answers": answers, "dead_letters": dead,
            "outcomes": {f"{s}/{m}": n for (s, m), n in outcomes.items()}, "problems": problems}


def report(args: argparse.Namespace, preload_s: float, before: list[Timing], rdv: Timing, skeleton: Timing,
           after: list[Timing], checked: dict[str, Any]) -> dict[str, Any]:
    n = args.requests
    records_in = n * (1 + len(MODELS))
    bases = [*before, *after]
    base_rate, rdv_rate = float(np.median([b.steady_req_s(n) for b in bases])), rdv.steady_req_s(n)
    base_wall, rdv_wall = float(np.median([n / b.processing_s for b in bases])), n / rdv.processing_s
    base_per_cpu = float(np.median([n / b.thread_cpu_s for b in bases]))
    named = [*((f"pass-through #{i + 1} (before)", b) for i, b in enumerate(before)), ("rendezvous", rdv),
             ("kafka skeleton", skeleton),
             *((f"pass-through #{len(before) + i + 1} (after)", b) for i, b in enumerate(after))]
    rows = [[name, t.startup_s, t.processing_s, t.steady_req_s(n), n / t.processing_s,
             records_in * t.steady_req_s(n) / n, t.thread_cpu_s, n / t.thread_cpu_s, t.outputs] for name, t in named]
    reply = ("no return address" if args.no_reply_to else "return address set") + f", {args.processing}"
    print_table(
        f"Rendezvous throughput: {n:,} requests + {n * len(MODELS):,} scores pre-loaded "
        f"({preload_s:.1f} s), {args.partitions} partitions, {reply}",
        ["consumer", "startup s", "processing s", "steady req/s", "wall-clock req/s", "records-in/s",
         "thread CPU s", "req/CPU-s", "records out"], rows, digits=2,
    )
    share, wall_share = ratio(rdv_rate, base_rate), ratio(rdv_wall, base_wall)
    verdict = judged(rdv_rate, TARGET_REQ_S)
    per_cpu = ratio(n / rdv.thread_cpu_s, base_per_cpu)
    print(f"ratio rendezvous / pass-through (median of {len(bases)} pass-through runs): {share:.2f} steady (from "
          f"each run's first output record seen to its last); target >= {TARGET_REQ_S:,.0f} req/s (steady): "
          f"{verdict} ({rdv_rate:,.0f} req/s steady)")
    print(f"  also: {wall_share:.2f} wall-clock (from partition assignment: the broker's first fetch included; "
          f"{rdv_wall:,.0f} req/s), {per_cpu:.3f} per thread CPU-second")
    split = skeleton_split(n, rdv, skeleton)
    print(f"the rendezvous' Kafka work alone (the kafka skeleton): {skeleton.steady_req_s(n):,.0f} req/s steady, "
          f"{split['skeleton_us']:.1f} µs of its threads' CPU per request; the rest of the rendezvous' "
          f"{split['rendezvous_us']:.1f} µs, {split['rest_us']:.1f} µs, is its own work "
          f"(decode, join, encode, bookkeeping). "
          f"One instance reaches {TARGET_REQ_S:,.0f} req/s only if the skeleton alone does and the rest fits "
          f"in the {split['room_us']:.1f} µs it leaves")
    print(f"thread CPU counted: {MeasuredThread.COUNTED}. The thread that runs each alone: the rendezvous "
          f"{split['rendezvous_run_thread_us']:.1f} µs per request, the kafka skeleton "
          f"{split['skeleton_run_thread_us']:.1f} µs")
    for name, t in named:
        if len(t.threads_cpu_s) > 1:
            print(f"  {name} by thread: " + ", ".join(f"{thread} {1e6 * cpu / n:.1f} µs"
                                                     for thread, cpu in t.threads_cpu_s.items()))
    ok = "all checks passed" if not checked["problems"] else "PROBLEMS: " + "; ".join(checked["problems"])
    print(f"log topic: {checked['records']:,} comparison records, answers topic: {checked['answers']:,}, "
          f"dead letters: {checked['dead_letters']}; outcomes {checked['outcomes']}; {ok}")
    return {
        "requests": n, "records_in": records_in, "preload_s": preload_s,
        "baselines": [{**vars(b), "req_s": b.steady_req_s(n), "req_s_wall": n / b.processing_s,
                       "records_in_s": records_in * b.steady_req_s(n) / n} for b in bases],
        "baseline_median_req_s": base_rate, "baseline_median_req_s_wall": base_wall,
        "rendezvous": {**vars(rdv), "req_s": rdv_rate, "req_s_wall": rdv_wall,
                       "records_in_s": records_in * rdv_rate / n,
                       "req_per_thread_cpu_s": n / rdv.thread_cpu_s,
                       "thread_cpu_us_per_request": 1e6 * rdv.thread_cpu_s / n},
        "kafka_skeleton": {**vars(skeleton), "req_s": skeleton.steady_req_s(n), "req_s_wall": n / skeleton.processing_s,
                           "ratio": ratio(skeleton.steady_req_s(n), base_rate), **split},
        "ratio": share, "ratio_basis": "steady: from each run's first output record seen to its last",
        "ratio_wall": wall_share, "ratio_per_thread_cpu": per_cpu, "thread_cpu_counted": MeasuredThread.COUNTED,
        "check": checked, "problems": checked["problems"],
    }  # fmt: skip


def skeleton_split(requests: int, rdv: Timing, skeleton: Timing) -> dict[str, float]:
    """The rendezvous' thread CPU per request (all its Python threads), split into the skeleton's
    part and the rest; the thread CPU per request the target leaves beside the skeleton's (negative:
    none); and, apart, the CPU per request of the one thread that runs each."""
    rdv_us, skeleton_us = 1e6 * rdv.thread_cpu_s / requests, 1e6 * skeleton.thread_cpu_s / requests
    return {"rendezvous_us": rdv_us, "skeleton_us": skeleton_us, "rest_us": rdv_us - skeleton_us,
            "room_us": 1e6 / TARGET_REQ_S - skeleton_us,
            "rendezvous_run_thread_us": 1e6 * rdv.run_thread_cpu_s / requests,
            "skeleton_run_thread_us": 1e6 * skeleton.run_thread_cpu_s / requests}


def measure(broker: BrokerInfo, args: argparse.Namespace) -> dict[str, Any]:
    bootstrap = broker.bootstrap
    prefix = run_prefix("throughput")
    topics = Topics.from_prefix(prefix)
    out_topics = [f"{prefix}passthrough.{i}" for i in range(2 * args.baseline_runs)]
    skeleton_topics = [t for t in vars(skeleton_outputs(prefix, args)).values() if t]
    specs = {**topic_specs(topics, args.partitions), **plain_topics([*out_topics, *skeleton_topics], args.partitions)}
    meters: dict[str, CpuMeter] = {}
    sources = bench_and_broker(broker)

    with fresh_topics(broker, specs):
        note(f"pre-loading {args.requests:,} requests + {args.requests * len(MODELS):,} scores ...")
        preload_s = preload(bootstrap, topics, args)
        # The baseline runs before and after the rendezvous: its spread shows the noise.
        runs = args.baseline_runs
        note(f"baseline: {runs} bare pass-through run(s) of the same records ...")
        before = [metered(meters, f"pass-through #{i + 1}", sources,
                          partial(run_baseline, bootstrap, topics, out, args))
                  for i, out in enumerate(out_topics[:runs])]
        note("rendezvous ...")
        rdv = metered(meters, "rendezvous", sources, lambda: run_rendezvous(bootstrap, prefix, topics, args))
        note("the rendezvous' Kafka work alone (kafka skeleton) ...")
        skeleton = metered(meters, "kafka skeleton", sources, lambda: run_skeleton(bootstrap, prefix, topics, args))
        note(f"baseline again: {runs} run(s) ...")
        after = [metered(meters, f"pass-through #{runs + i + 1}", sources,
                         partial(run_baseline, bootstrap, topics, out, args))
                 for i, out in enumerate(out_topics[runs:])]
        checked = check_log(bootstrap, topics, args)
        results = report(args, preload_s, before, rdv, skeleton, after, checked)
        results["cpu"] = cpu_figures(meters, dict.fromkeys(meters, args.requests),
                                     "this process (every thread: the service's, librdkafka's, the output counter, "
                                     "the bench's) and the broker, per run")
        if args.profile:
            print_profile(args.profile, "the rendezvous thread")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench("rendezvous_throughput", args, lambda broker: measure(broker, args))


if __name__ == "__main__":
    sys.exit(main())
