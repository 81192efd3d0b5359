"""The most requests/s one rendezvous could join on one core if Kafka cost nothing.

    .venv/bin/python bench/join_ceiling.py [--requests 20000] [--rounds 5] [--json FILE]

The records `bench/rendezvous_throughput.py` pre-loads (N requests with the 30 demo features and
a return address, each followed by its three scores) are fed, in memory, through what the
rendezvous does with each record, in four stages that each add one part:

    decode   fastavro's decode of every record (services/core/codec.py): what any reader pays
    records  instead, turning them into the join's plain values (services/rendezvous/records.py:
             compiled walks that read only what the join needs, fastavro for what they leave)
    join     + the join itself (services/rendezvous/join.py): mailboxes, schedule, clock, metrics
    encode   + encoding the Answer and the Comparison record of every request, as the service does

Each stage is timed with the thread's CPU clock, the stages alternating `--rounds` times (the
machine is shared); the table gives the median and the range of µs per request and the ceiling
that cost sets on one core (1,000,000 / µs); "the part added" of `records` is what it costs
beyond a full fastavro decode (less than nothing since the walks). The collector is set as the services set it
(`tune_gc`, services/core/runtime.py); a fifth stage, `default gc`, runs the last one again with
CPython's default threshold, for comparison. The service pays librdkafka's calls on top (four
records consumed, three produced per request): `bench/rendezvous_throughput.py` reports what it
costs in all ("req/CPU-s"). The first stage is this bench's baseline: the codec alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/<name>.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import new_parser, positive, print_table, write_json
from bench.rendezvous_throughput import MODELS, TARGET_REQ_S, Record, records
from services.control.schedule import Schedule
from services.control.topic import ScheduleBook
from services.core.codec import codec
from services.core.runtime import GC_YOUNG_THRESHOLD, now_ms, tune_gc
from services.rendezvous.join import Join, JoinLimits
from services.rendezvous.mailbox import Mailbox
from services.rendezvous.records import request_in, score_in

STAGES = ("decode", "records", "join", "encode")
DEFAULT_GC = "default gc"  # the last stage again, with CPython's collector threshold
CPYTHON_GC_THRESHOLD = 700
BATCH = 500  # the join's metrics are applied once per poll batch, as the service's default max batch


class Outputs:
    """What the service's outputs do with a decision before handing it to librdkafka: encode it."""

    def __init__(self, encode: bool):
        self.encode = encode
        self.answers, self.logged = codec("answer"), codec("comparison")

    def answer(self, mailbox: Mailbox, record: dict[str, Any]) -> None:
        if self.encode:
            self.answers.encode(record)

    def log(self, mailbox: Mailbox, record: dict[str, Any]) -> None:
        if self.encode:
            self.logged.encode(record)

    def repeat(self, reply: Any, record: dict[str, Any], receipt: Any) -> None:
        raise AssertionError("no request is repeated in this bench")


def run_stage(stage: str, feed: Sequence[Record], log_time: int) -> tuple[float, int]:
    """CPU seconds of one pass of `stage` over `feed`, and the requests the join answered."""
    young = CPYTHON_GC_THRESHOLD if stage == DEFAULT_GC else GC_YOUNG_THRESHOLD
    gc.set_threshold(young, *gc.get_threshold()[1:])
    stage = STAGES[-1] if stage == DEFAULT_GC else stage
    requests, scores = codec("request"), codec("score")
    schedule = Schedule(models=tuple(m for m, _ in MODELS), default_deadline_ms=600_000)
    join = Join(JoinLimits(), ScheduleBook.holding(schedule), Outputs(stage == "encode"))
    upto = STAGES.index(stage)
    started = time.thread_time()
    for offset, record in enumerate(feed):
        if upto == 0:
            (requests if record.is_request else scores).decode(record.value)
        elif record.is_request:
            request = request_in(requests, record.value, record.partition, offset, log_time)
            if upto >= 2:
                join.on_request(request)
        else:
            score = score_in(scores, record.value, record.partition, offset, log_time)
            if upto >= 2:
                join.on_score(score)
        if offset % BATCH == BATCH - 1:
            join.metrics.flush()
    join.metrics.flush()
    return time.thread_time() - started, join.answered


def measure(count: int, rounds: int, progress: Callable[[str], None]) -> dict[str, Any]:
    created = now_ms()
    feed = list(records(count, 4, "replies", 600_000, created))
    tune_gc()  # as the services do once started: the feed, like their start-up, is frozen
    per_request: dict[str, list[float]] = {stage: [] for stage in (*STAGES, DEFAULT_GC)}
    for n in range(rounds):
        for stage in per_request:
            cpu_s, answered = run_stage(stage, feed, created + 5)
            if stage not in ("decode", "records") and answered != count:
                raise SystemExit(f"the join answered {answered:,} of {count:,} requests in stage {stage}")
            per_request[stage].append(1e6 * cpu_s / count)
        progress(f"round {n + 1}/{rounds}: " + ", ".join(f"{s} {v[-1]:.1f}" for s, v in per_request.items()))
    return {"requests": count, "rounds": rounds, "us_per_request": per_request,
            "median_us": {s: statistics.median(v) for s, v in per_request.items()}}


def report(results: dict[str, Any]) -> None:
    medians, runs = results["median_us"], results["us_per_request"]
    rows, before = [], 0.0
    for stage in runs:
        us = medians[stage]
        rows.append([stage, us, f"{min(runs[stage]):.1f}-{max(runs[stage]):.1f}", us - before, 1e6 / us,
                     us / medians["decode"]])
        before = us
    print_table(f"The rendezvous' work per request without Kafka ({results['requests']:,} requests, 3 scores "
                f"each, median of {results['rounds']} rounds; thread CPU)",
                ["stage (adds)", "µs/request", "range", "the part added", "ceiling req/s on one core",
                 "x decode"], rows, digits=1)
    ceiling = 1e6 / medians["encode"]
    verdict = "above" if ceiling >= TARGET_REQ_S else "below"
    print(f"ceiling of the join and codec alone: {ceiling:,.0f} req/s, {verdict} the target of "
          f"{TARGET_REQ_S:,.0f} req/s (a budget of {1e6 / TARGET_REQ_S:.0f} µs per request, Kafka included)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--requests", type=int, default=20_000, help="requests, 3 scores each (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="passes of every stage, alternating (default 5)")
    args = parser.parse_args(argv)
    positive(parser, args, "requests", "rounds")
    results = measure(args.requests, args.rounds, lambda line: print(line, file=sys.stderr))
    report(results)
    write_json(args.json, "join_ceiling", args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
