"""How fast `rendezvous compare` reads and aggregates the comparison log, against a bare consume.

    .venv/bin/python bench/compare_read.py [--records 1000000] [--partitions 4] [--workers 1,2]
                                           [--distinct 100000] [--html FILE] [--json FILE]

N Comparison records with 3 models (champion, challenger, canary; ~1% challenger errors, some
late scores and fallbacks) are written to a fresh log topic first: `--distinct` different
records, encoded once and written in turn (encoding a million records in Python would take
longer than everything measured). Then, one after the other, on the same broker:

1. baseline: a bare consume of the whole topic (same consumer settings as the report's reader,
   each value touched, nothing decoded);
2. the report: range resolution + read + decode + columnar accumulation (`read_range` with
   `--since 1h`, i.e. through `offsets_for_times`), then the summary (`summarize`), timed apart;
   with `--html`, the HTML page too (not part of the read figure); once per `--workers` count
   (reader processes, the partitions split between them);
3. the baseline again: the ratio uses the mean of 1 and 3, the spread shows the machine's noise.

Target: the report's read + aggregate of 1,000,000 records well under a minute.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/<name>.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import resource
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
from confluent_kafka import Producer, TopicPartition

from bench.common import (
    MODEL_VERSIONS,
    BenchError,
    BrokerInfo,
    CpuMeter,
    cpu_figures,
    fresh_topics,
    metered,
    new_parser,
    note,
    pid_cpu,
    plain_topics,
    print_table,
    ratio,
    run_bench,
    run_prefix,
    watermark_total,
)
from services.compare_report.reader import read_range, reader_consumer
from services.compare_report.summary import Report, summarize
from services.core.codec import codec
from services.core.kafka import PRODUCER_DEFAULTS
from services.core.ranges import Bounds, TimeBound
from services.core.runtime import now_ms

MODELS = MODEL_VERSIONS
TARGET_S = 60.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    arg = parser.add_argument
    arg("--records", type=int, default=1_000_000, help="records pre-loaded (default 1000000)")
    arg("--partitions", type=int, default=4, help="partitions of the log topic (default 4)")
    arg("--distinct", type=int, default=100_000, help="different records among them (default 100000)")
    arg("--workers", default="1,2", help="reader process counts to time the report with (default 1,2)")
    arg("--html", metavar="FILE", help="also render the HTML report to FILE (timed apart)")
    args = parser.parse_args(argv)
    try:
        args.workers = [int(w) for w in str(args.workers).split(",")]
    except ValueError:
        parser.error(f"--workers expects counts like 1,2; got {args.workers!r}")
    if min(args.records, args.partitions, args.distinct, *args.workers) < 1:
        parser.error("--records, --partitions, --distinct and --workers must be positive")
    return args


# ----- the data --------------------------------------------------------------------------------
def synthetic_records(n: int, start_ms: int, seed: int = 7) -> list[dict[str, Any]]:
    """Comparison records shaped like the demo's: correlated scores, lognormal latencies."""
    rng = np.random.default_rng(seed)
    truth = rng.random(n)
    scores = np.clip(np.stack([truth, truth + rng.normal(0, 0.05, n), np.round(truth * 4) / 4]), 0, 1)
    latency = rng.lognormal(np.log([[4.0], [12.0], [2.0]]), 0.5, (3, n))
    challenger_error = rng.random(n) < 0.01
    records = []
    for i in range(n):
        created = start_ms + i * 5
        outputs = []
        for m, (model, version) in enumerate(MODELS):
            failed = m == 1 and bool(challenger_error[i])
            score = None if failed else float(scores[m, i])
            outputs.append({
                "model": model, "version": version, "score": score,
                "label": None if score is None else ("benign" if score > 0.5 else "malignant"),
                "error": "RuntimeError: boom" if failed else None, "latency_ms": float(latency[m, i]),
                "compute_ms": 0.3, "late": bool(latency[m, i] > 40.0),
            })  # fmt: skip
        champion_late = latency[0, i] > 40.0
        records.append({
            "request_id": f"req-{i:012d}", "created_at": created, "deadline": created + 40,
            "answered_at": created + int(min(latency[0, i], 40)), "status": "FALLBACK" if champion_late else "OK",
            "chosen_model": "canary" if champion_late else "champion", "reason": "bench",
            "schedule": "default", "schedule_version": 1, "outputs": outputs,
        })  # fmt: skip
    return records


def preload(bootstrap: str, topic: str, args: argparse.Namespace) -> float:
    """Write `--records` records (the `--distinct` ones in turn); returns the seconds it took."""
    started = time.monotonic()
    comparisons = codec("comparison")
    distinct = min(args.distinct, args.records)
    values = [comparisons.encode(r) for r in synthetic_records(distinct, now_ms() - 600_000)]
    keys = [f"req-{i:012d}".encode() for i in range(distinct)]
    producer = Producer({**PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap, "linger.ms": 50,
                         "batch.size": 1_000_000, "queue.buffering.max.messages": 500_000})  # fmt: skip
    for i in range(args.records):
        while True:
            try:
                producer.produce(topic, values[i % distinct], keys[i % distinct], partition=i % args.partitions)
                break
            except BufferError:
                producer.poll(0.05)  # local queue full: serve delivery reports, then retry
    if producer.flush(120) > 0:
        raise BenchError("pre-load: records not acknowledged within 120 s")
    return time.monotonic() - started


# ----- the timings -----------------------------------------------------------------------------
def cpu_seconds() -> float:
    """CPU time of this process (all its threads, librdkafka's too) and of its reaped children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def bare_consume(config: dict[str, Any], topic: str, partitions: int, expect: int) -> tuple[float, float]:
    """(seconds, CPU seconds) to consume every record of the topic, touching each value (no decoding)."""
    consumer = reader_consumer(config).native
    try:
        started, cpu = time.monotonic(), cpu_seconds()
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        seen = size = 0
        while seen < expect:
            messages = consumer.consume(10_000, 0.5)
            for msg in messages:
                if msg.error() is None:
                    seen += 1
                    size += len(msg.value() or b"")
            if not messages and time.monotonic() - started > 120:
                raise BenchError(f"bare consume: {seen:,} of {expect:,} records after 120 s")
        return time.monotonic() - started, cpu_seconds() - cpu
    finally:
        consumer.close()


def run_report(
    config: dict[str, Any], topic: str, workers: int, args: argparse.Namespace
) -> tuple[dict[str, float], Report]:
    """Seconds for read (+ decode + accumulate), summary and (optionally) the HTML page."""
    started, cpu = time.monotonic(), cpu_seconds()
    result = read_range(config, topic, Bounds(TimeBound(now_ms() - 3_600_000)), workers=workers)
    read_s, read_cpu_s = time.monotonic() - started, cpu_seconds() - cpu
    report = summarize(result.columns.frame())
    summary_s = time.monotonic() - started - read_s
    if len(result.columns) != args.records or result.skipped:
        raise BenchError(f"the report read {len(result.columns):,} records ({result.skipped} skipped), "
                         f"expected {args.records:,}")  # fmt: skip
    times = {"read_s": read_s, "summary_s": summary_s, "total_s": read_s + summary_s, "read_cpu_s": read_cpu_s}
    if args.html:
        from services.compare_report.html import write_html

        html_started = time.monotonic()
        write_html(report, args.html)
        times["html_s"] = time.monotonic() - html_started
    return times, report


def show(args: argparse.Namespace, preload_s: float, bases: list[tuple[float, float]],
         runs: dict[int, dict[str, float]], report: Report) -> dict[str, Any]:  # fmt: skip
    """The figures: wall and CPU seconds (the machine is shared: CPU time shows what the work costs)."""
    n = args.records
    base_rate = n / (sum(wall for wall, _ in bases) / len(bases))
    nan = float("nan")
    rows: list[list[Any]] = [["bare consume, before", bases[0][0], bases[0][1], n / bases[0][0], "-"]]
    for workers, t in runs.items():
        label = f"report, {workers} process{'es' if workers > 1 else ''}:"
        rows += [[f"{label} resolve + read + decode + columns", t["read_s"], t["read_cpu_s"], n / t["read_s"], "-"],
                 [f"{label} summary (all figures)", t["summary_s"], nan, n / t["summary_s"], "-"],
                 [f"{label} read + aggregate", t["total_s"], nan, n / t["total_s"],
                  ratio(n / t["total_s"], base_rate)]]  # fmt: skip
        if "html_s" in t:
            rows.append([f"{label} HTML page (not in the total)", t["html_s"], nan, nan, "-"])
    rows.append(["bare consume, after", bases[1][0], bases[1][1], n / bases[1][0], "-"])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print_table(f"compare read: {n:,} Comparison records (3 models, {args.distinct:,} distinct) pre-loaded "
                f"({preload_s:.1f} s), {args.partitions} partitions; {os.cpu_count()} CPUs, load average {load}",
                ["step", "wall s", "CPU s", "records/s", "x bare"], rows, digits=2)  # fmt: skip
    best = min(t["total_s"] for t in runs.values())
    verdict = "met" if best < TARGET_S else "NOT met"
    print(f"'x bare' = records/s over the mean of the two bare consumes; CPU s counts every thread and "
          f"reader process; target < {TARGET_S:.0f} s for {n:,} records: {verdict} (best {best:.1f} s)")
    counts = ", ".join(f"{m.name} n={m.n:,}" for m in report.models)
    print(f"report check: {report.records:,} records; {counts}; champion {report.champion}")
    return {"records": n, "preload_s": preload_s, "bare_consume": [{"wall_s": w, "cpu_s": c} for w, c in bases],
            "bare_records_s": base_rate,
            "report": {str(w): {**t, "records_s": n / t["total_s"], "ratio": ratio(n / t["total_s"], base_rate)}
                       for w, t in runs.items()}}  # fmt: skip


def measure(broker: BrokerInfo, args: argparse.Namespace) -> dict[str, Any]:
    config = {"bootstrap.servers": broker.bootstrap}
    topic = f"{run_prefix('compare')}log"
    meters: dict[str, CpuMeter] = {}
    sources = {"bench process + readers": cpu_seconds, "broker": pid_cpu(broker.pid)}

    with fresh_topics(broker, plain_topics([topic], args.partitions)):
        note(f"pre-loading {args.records:,} comparison records ...")
        preload_s = preload(broker.bootstrap, topic, args)
        counter = reader_consumer(config).native
        on_topic = watermark_total(counter, topic, args.partitions)
        counter.close()
        if on_topic != args.records:
            raise BenchError(f"{on_topic:,} records on {topic}, expected {args.records:,}")
        note("baseline: bare consume ...")
        bases = [metered(meters, "bare consume, before", sources,
                         lambda: bare_consume(config, topic, args.partitions, args.records))]
        runs = {}
        for workers in args.workers:
            note(f"report: read + aggregate, {workers} reader process(es) ...")
            runs[workers], report = metered(meters, f"report, {workers} reader{'s' if workers > 1 else ''}", sources,
                                            partial(run_report, config, topic, workers, args))
        note("baseline again ...")
        bases.append(metered(meters, "bare consume, after", sources,
                             lambda: bare_consume(config, topic, args.partitions, args.records)))
        results = show(args, preload_s, bases, runs, report)
        results["cpu"] = cpu_figures(meters, dict.fromkeys(meters, args.records),
                                     "this process with its reader processes, and the broker", unit="record", digits=4)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench("compare_read", args, lambda broker: measure(broker, args))


if __name__ == "__main__":
    sys.exit(main())
