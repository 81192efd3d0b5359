"""Throughput of the comparison service against a bare consume of the same comparison log.

    .venv/bin/python bench/comparison_throughput.py [--records 200000] [--partitions 4]
                                                    [--profile FILE] [--json FILE]

Pre-loads N Comparison records (3 model outputs each: varied scores, labels, latencies, a few
errors and late outputs, created 1 ms apart so the event-time window slides through the run)
into a fresh log topic, then measures in the same run, on the same broker:

  (a) a bare confluent-kafka consume of the topic to its end (no decoding, no commits): the
      floor of any Python consumer on this machine; run before and after (b) to show the noise;
  (b) the comparison service (in a thread, its own consumer group, the default 5 s export
      interval and per-batch commits) reading the topic to its end.

Each run is timed from partition assignment to the last record (wall-clock) and, the figure of
merit, from the end of the first batch handled to the last record (steady; the service's
progress is looked at every 10 ms). The wall-clock time includes the broker's first fetch after
the assignment, a fixed ~0.1 s for both that pulls their ratio toward 1 (0.40 wall-clock against
0.29 steady in one run), so the verdict and the headline ratio (b) / (a) are the steady ones;
the wall-clock ratio is printed beside it, labelled so. Because these machines are shared, the
CPU time is reported too: of the consuming thread for (a), of every Python thread the service
ran for (b) (the thread running it and those it started, e.g. its commit thread); librdkafka's
own threads are excluded in both. Records per CPU-second is what the code costs, whatever else
the machine was doing.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/<name>.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.common import (
    MODEL_VERSIONS,
    POLL_S,
    BenchError,
    BrokerInfo,
    CpuMeter,
    MeasuredThread,
    bare_consumer,
    bench_and_broker,
    cpu_figures,
    fresh_topics,
    judged,
    metered,
    new_parser,
    note,
    plain_topics,
    print_profile,
    print_table,
    ratio,
    run_bench,
    run_prefix,
    steady_rate,
    take,
)
from services.comparison.metrics import WINDOW
from services.comparison.service import ComparisonService
from services.comparison.settings import ComparisonSettings
from services.core.codec import codec
from services.core.kafka import Producer
from services.core.runtime import now_ms
from services.core.settings import Topics

MODELS = MODEL_VERSIONS
TARGET_RECORDS_S = 30_000.0
TARGET_RATIO = 0.5  # of a bare consume (issue 8), steady: from each one's first batch to its last record
MAX_BATCH = ComparisonSettings().max_batch  # the bare consume takes batches as large as the service does


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    arg = parser.add_argument
    arg("--records", type=int, default=200_000, help="comparison records pre-loaded (default 200000)")
    arg("--partitions", type=int, default=4, help="partitions of the log topic (default 4)")
    arg("--timeout", type=float, default=120.0, help="give up a timing after this many seconds (default 120)")
    arg("--profile", metavar="FILE", help="cProfile the service thread; write pstats to FILE, print top")
    args = parser.parse_args(argv)
    if args.records < 1 or args.partitions < 1 or args.timeout <= 0:
        parser.error("--records, --partitions and --timeout must be positive")
    return args


def preload(bootstrap: str, topic: str, args: argparse.Namespace) -> float:
    """Write N comparison records round-robin over the partitions; returns the seconds it took."""
    started = time.monotonic()
    rng = np.random.default_rng(7)
    n = args.records
    scores = rng.random((n, len(MODELS))).tolist()
    latencies = rng.lognormal(3.0, 0.6, (n, len(MODELS))).tolist()
    errors = (rng.random((n, len(MODELS))) < 0.01).tolist()
    comparisons = codec("comparison")
    producer = Producer({"bootstrap.servers": bootstrap})
    base = now_ms() - n  # created 1 ms apart, the newest now
    try:
        for i in range(n):
            created = base + i
            outputs = []
            for j, (model, version) in enumerate(MODELS):
                failed, score, latency = errors[i][j], scores[i][j], latencies[i][j]
                outputs.append({
                    "model": model, "version": version,
                    "score": None if failed else score,
                    "label": None if failed else ("benign" if score > 0.5 else "malignant"),
                    "error": "ValueError: bench" if failed else None,
                    "latency_ms": latency, "compute_ms": 0.5, "late": latency > 200.0,
                })  # fmt: skip
            record = {
                "request_id": uuid.uuid4().hex, "created_at": created, "deadline": created + 200,
                "answered_at": created + 20, "status": "OK", "chosen_model": "champion",
                "reason": "champion answered", "schedule": "bench", "schedule_version": 1,
                "outputs": outputs,
            }  # fmt: skip
            key = record["request_id"].encode()
            producer.produce(topic, comparisons.encode(record), key=key, partition=i % args.partitions)
            if i % 1000 == 0:
                producer.poll(0)
        producer.flush()
    finally:
        producer.close()
    return time.monotonic() - started


@dataclass(frozen=True)
class Timing:
    startup_s: float  # start -> partitions assigned
    processing_s: float  # assigned -> every record handled
    records: int
    cpu_s: float  # CPU time of the consuming thread(s) over the whole run (librdkafka's threads not)
    first_s: float  # assigned -> the first batch handled
    first_records: int  # records of that batch
    threads_cpu_s: dict[str, float] = field(default_factory=dict)  # cpu_s by thread name (the service's)

    @property
    def wall_records_s(self) -> float:
        """Records per second from partition assignment, the broker's first fetch included."""
        return self.records / max(self.processing_s, 1e-9)

    @property
    def steady_records_s(self) -> float:
        """Records per second after the first batch: what the consumer sustains (NaN when every
        record came in that batch: nothing after it to time, not 0 records/s)."""
        return steady_rate(self.records - self.first_records, self.processing_s - self.first_s)


def bare_consume(bootstrap: str, topic: str, args: argparse.Namespace) -> Timing:
    """(a): subscribe with a fresh group and take batches (as the services do) until N records."""
    consumer = bare_consumer(bootstrap, f"bench-bare-{uuid.uuid4().hex}")
    assigned: list[float] = []
    started, cpu_started = time.monotonic(), time.thread_time()
    try:
        consumer.subscribe([topic], on_assign=lambda _c, _p: assigned.append(time.monotonic()))
        seen, first, first_at = 0, 0, 0.0
        while seen < args.records:
            seen += len(take(consumer, MAX_BATCH, 0.1))
            if seen and not first:
                first, first_at = seen, time.monotonic()
            if time.monotonic() - started > args.timeout:
                raise BenchError(f"bare consume: {seen:,} of {args.records:,} records in {args.timeout:g} s")
        done, cpu = time.monotonic(), time.thread_time() - cpu_started
    finally:
        consumer.close()
    if not assigned:
        raise BenchError("bare consume: never assigned")
    return Timing(assigned[0] - started, done - assigned[0], seen, cpu, first_at - assigned[0], first)


def run_service(bootstrap: str, prefix: str, args: argparse.Namespace) -> Timing:
    """(b): the comparison service in a thread until it has processed N records."""
    settings = ComparisonSettings(bootstrap=bootstrap, topic_prefix=prefix, start_from="earliest",
                                  group=f"{prefix}comparison")  # its default batch size, as deployed
    settings.validate()
    service = ComparisonService(settings)
    def wait(condition: Callable[[], bool], what: str, since: float) -> None:
        while not condition():
            thread.raise_failure()
            if time.monotonic() - since > args.timeout:
                raise BenchError(f"comparison: no {what} within {args.timeout:g} s")
            time.sleep(POLL_S)  # polling the service's progress counter, an external condition

    started = time.monotonic()
    thread = MeasuredThread("comparison", service.run, service.ready, args.profile)
    try:
        wait(service.ready.is_set, "partition assignment", started)
        assigned = time.monotonic()
        wait(lambda: service.processed > 0, "record", assigned)
        first_at, first = time.monotonic(), service.processed
        wait(lambda: service.processed >= args.records, f"{args.records:,} records", assigned)
        done = time.monotonic()
    finally:
        thread.finish()
    thread.check_finished()
    window = WINDOW.value("rdv_cmp_window_records")
    note(f"comparison: window holds {window} records; agreement challenger/champion "
         f"{WINDOW.value('rdv_cmp_agreement_ratio', model='challenger', champion='champion')}")
    return Timing(assigned - started, done - assigned, service.processed, thread.cpu_s, first_at - assigned, first,
                  dict(thread.threads_cpu_s))


def report(args: argparse.Namespace, preload_s: float, bases: list[Timing], service: Timing) -> dict[str, object]:
    n = args.records
    base_wall = sum(b.wall_records_s for b in bases) / len(bases)
    base_steady = sum(b.steady_records_s for b in bases) / len(bases)
    wall, rate = service.wall_records_s, service.steady_records_s
    names = ["bare consume, before", "comparison service", "bare consume, after"]
    rows = [[name, t.startup_s, t.processing_s, t.steady_records_s, t.wall_records_s, t.cpu_s,
             t.records / t.cpu_s, t.records] for name, t in zip(names, [bases[0], service, *bases[1:]], strict=False)]
    print_table(
        f"Comparison throughput: {n:,} log records x {len(MODELS)} outputs pre-loaded ({preload_s:.1f} s), "
        f"{args.partitions} partitions",
        ["consumer", "startup s", "processing s", "steady records/s", "wall-clock records/s", "CPU s",
         "records/CPU-s", "records"], rows,
        digits=2,
    )
    steady = ratio(rate, base_steady)
    share = ratio(wall, base_wall)
    cpu_rate = n / service.cpu_s
    cpu_share = ratio(cpu_rate, sum(n / b.cpu_s for b in bases) / len(bases))
    verdict = judged(rate, TARGET_RECORDS_S)
    ratio_verdict = judged(steady, TARGET_RATIO)
    print(f"ratio comparison / bare consume (mean of before and after): {steady:.3f} steady (from each one's "
          f"first batch to its last record; the figure of merit); target >= {TARGET_RATIO}x: {ratio_verdict}")
    print(f"  also: {share:.3f} wall-clock (from partition assignment: the broker's first fetch, ~0.1 s for each, "
          f"included), {cpu_share:.3f} per CPU-second")
    print(f"target >= {TARGET_RECORDS_S:,.0f} records/s (steady): {verdict} ({rate:,.0f}/s steady, {wall:,.0f}/s "
          f"wall-clock, {cpu_rate:,.0f} per CPU-second; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
          f"CPUs)")
    by_thread = ", ".join(f"{name} {cpu:.3f} s" for name, cpu in service.threads_cpu_s.items())
    print(f"CPU s counted: the bare consume's one thread; the comparison service's {MeasuredThread.COUNTED}: "
          f"{by_thread}")
    return {"records": n, "preload_s": preload_s, "baselines": [vars(b) for b in bases],
            "baseline_records_s": base_steady, "baseline_records_s_wall": base_wall, "comparison": vars(service),
            "comparison_records_s": rate, "comparison_records_s_wall": wall, "comparison_records_cpu_s": cpu_rate,
            "ratio": steady, "ratio_basis": "steady: from each one's first batch to its last record",
            "ratio_steady": steady, "ratio_wall": share, "ratio_cpu": cpu_share}


def measure(broker: BrokerInfo, args: argparse.Namespace) -> dict[str, object]:
    bootstrap = broker.bootstrap
    prefix = run_prefix("comparison")
    topics = Topics.from_prefix(prefix)
    meters: dict[str, CpuMeter] = {}
    sources = bench_and_broker(broker)

    with fresh_topics(broker, {**plain_topics([topics.log], args.partitions), **plain_topics([topics.deadletter], 1)}):
        note(f"pre-loading {args.records:,} comparison records ...")
        preload_s = preload(bootstrap, topics.log, args)
        note("baseline: bare consume of the log ...")
        bases = [metered(meters, "bare consume, before", sources, lambda: bare_consume(bootstrap, topics.log, args))]
        note("comparison service ...")
        service = metered(meters, "comparison service", sources, lambda: run_service(bootstrap, prefix, args))
        note("baseline again ...")
        bases.append(metered(meters, "bare consume, after", sources, lambda: bare_consume(bootstrap, topics.log, args)))
        results = report(args, preload_s, bases, service)
        results["cpu"] = cpu_figures(meters, dict.fromkeys(meters, args.records),
                                     "this process (every thread) and the broker, per run", unit="record", digits=4)
        if args.profile:
            print_profile(args.profile, "the comparison thread")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench("comparison_throughput", args, lambda broker: measure(broker, args))


if __name__ == "__main__":
    sys.exit(main())
