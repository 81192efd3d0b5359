"""How one group's throughput grows with rendezvous instances: 1, 2, ... `rendezvous serve` processes.

    flock -x /work/heavy.lock .venv/bin/python bench/rendezvous_scaleout.py [--instances 1,2] [--rounds 2]
        [--requests 20000] [--partitions 4] [--json FILE]

One rendezvous is bounded by its Python work per request (bench/rendezvous_throughput.py); the way
past that bound is more instances in the group, each taking some of the partitions. This measures
that way on this machine. For each count k of `--instances`, in turns over `--rounds` (the machine
is shared: 1, 2, 1, 2, ...), on fresh topics:

1. k `rendezvous serve` processes (exactly-once, the three bench models, a deadline far away so
   every answer is the champion's) join one consumer group, waited for until it is Stable with k
   members;
2. N requests and 3 scores each (bench/rendezvous_throughput.py's records, encoded before the clock
   starts) are produced as fast as this process goes;
3. the time runs from the first record produced to the last of the N comparison records committed
   (counted by a read_committed reader).

It prints requests/s per count and round, the ratio to one instance in the same round, and the CPU
milliseconds per request of the instances (together), the broker and this process. The producer
runs while the instances work (they start on the first records): on two cores they share the
machine with it and the broker, so the ratio says what another instance buys here, not what it
buys on a machine with a core for each.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/<name>.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import (
    MODEL_VERSIONS,
    POLL_S,
    BenchError,
    BrokerInfo,
    CpuMeter,
    RecordCounter,
    bench_and_broker,
    children,
    fresh_topics,
    new_parser,
    note,
    positive,
    print_table,
    ratio,
    run_bench,
    run_prefix,
)
from bench.rendezvous_throughput import records, write_feed
from services.cli.common import topic_specs
from services.core.runtime import now_ms
from services.core.settings import Topics

BUDGET_MS = 600_000  # far away: every answer is the champion's, none a TIMEOUT


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    arg = parser.add_argument
    arg("--instances", default="1,2", help="instance counts to measure, comma-separated (default 1,2)")
    arg("--rounds", type=int, default=2, help="passes over the counts, in turns (default 2)")
    arg("--requests", type=int, default=20_000, help="requests per run, 3 scores each (default 20000)")
    arg("--partitions", type=int, default=4, help="partitions of every topic (default 4)")
    arg("--timeout", type=float, default=120.0, help="give up a run after this many seconds (default 120)")
    args = parser.parse_args(argv)
    positive(parser, args, "rounds", "requests", "partitions", "timeout")
    try:
        args.counts = [int(part) for part in args.instances.split(",")]
    except ValueError:
        parser.error(f"--instances must be whole numbers separated by commas, got {args.instances!r}")
    if not args.counts or min(args.counts) < 1 or max(args.counts) > args.partitions:
        parser.error(f"--instances must be between 1 and --partitions ({args.partitions}): an instance "
                     "beyond the partitions would have none to read")
    return args


def serve_args(bootstrap: str, prefix: str, index: int) -> list[str]:
    return ["-m", "services.cli.main", "--log-level", "WARNING", "serve", "--bootstrap", bootstrap,
            "--topic-prefix", prefix, "--models", ",".join(m for m, _ in MODEL_VERSIONS),
            "--deadline-ms", str(BUDGET_MS), "--instance", f"bench-{index}"]


def wait_for_log(counter: RecordCounter, expect: int, timeout: float, check: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout
    while counter.update(POLL_S) < expect:
        check()
        if time.monotonic() > deadline:
            raise BenchError(f"{counter.count:,} of {expect:,} comparison records within {timeout:g} s")


def one_run(broker: BrokerInfo, args: argparse.Namespace, k: int) -> dict[str, Any]:
    """k instances on fresh topics: requests/s, CPU seconds by process, and what the log holds."""
    prefix = run_prefix(f"scaleout{k}")
    topics = Topics.from_prefix(prefix)
    config = {"bootstrap.servers": broker.bootstrap}
    feed = list(records(args.requests, args.partitions, topics.replies, BUDGET_MS, now_ms()))
    with fresh_topics(broker, topic_specs(topics, args.partitions)), children({}) as kids:
        for i in range(k):
            kids.spawn(f"rendezvous-{i}", serve_args(broker.bootstrap, prefix, i))
        kids.wait_for_groups(config, [f"{prefix}rendezvous"], members=k)
        counter = RecordCounter(broker.bootstrap, topics.log, args.partitions)
        meter = CpuMeter({**bench_and_broker(broker), "instances": lambda: math.fsum(kids.cpu().values())})
        try:
            with meter.span():
                started = time.monotonic()
                write_feed(broker.bootstrap, topics, feed)
                wait_for_log(counter, args.requests, args.timeout, kids.check_alive)
                elapsed = time.monotonic() - started
            logged = counter.update(0.5)  # anything past N: a request logged twice
        finally:
            counter.close()
    return {"instances": k, "seconds": elapsed, "req_s": args.requests / elapsed, "logged": logged,
            "cpu_s": meter.used, "host_cpu_pct": meter.host_share()}


def measure(broker: BrokerInfo, args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for round_ in range(args.rounds):
        for k in args.counts:
            note(f"round {round_ + 1}/{args.rounds}: {k} instance(s), {args.requests:,} requests ...")
            run = {"round": round_ + 1, **one_run(broker, args, k)}
            note(f"  {run['req_s']:,.0f} req/s")
            runs.append(run)
    return report(args, runs)


def report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    one = {r["round"]: r["req_s"] for r in runs if r["instances"] == 1}
    rows, problems = [], []
    for r in runs:
        per = {name: 1000.0 * used / args.requests for name, used in r["cpu_s"].items()}
        r["x_one_instance"] = ratio(r["req_s"], one[r["round"]]) if r["round"] in one else None
        r["cpu_ms_per_request"] = per
        host = r["host_cpu_pct"] or {}
        rows.append([r["round"], r["instances"], r["req_s"], r["x_one_instance"], per["instances"], per["broker"],
                     per["bench process"], host.get("busy_pct"), host.get("steal_pct")])
        if r["logged"] != args.requests:
            problems.append(f"{r['instances']} instance(s), round {r['round']}: {r['logged']:,} comparison records "
                            f"for {args.requests:,} requests")
    print_table(f"Rendezvous instances in one group: {args.requests:,} requests x 3 scores, {args.partitions} "
                "partitions, exactly-once (CPU ms per request)",
                ["round", "instances", "req/s", "x one instance", "instances CPU", "broker CPU", "bench CPU",
                 "host busy %", "stolen %"], rows, digits=2)
    return {"runs": runs, "problems": problems}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench("rendezvous_scaleout", args, lambda broker: measure(broker, args))


if __name__ == "__main__":
    sys.exit(main())
