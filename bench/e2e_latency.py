"""End-to-end latency at a fixed request rate: client -> 3 models -> rendezvous -> client.

    .venv/bin/python bench/e2e_latency.py [--rate 1000] [--duration 20] [--budget-ms 200]
                                          [--slices 4] [--json FILE]
                                          [--rendezvous-args '--processing at-least-once']

Measured path (each box its own OS process, as in production):

    Client --requests--> demo:champion / demo:challenger / demo:canary --scores--> rendezvous
           <--replies--------------------------------------------------------------'

Latency is created_at -> received_at of each Answer (the client's clock on both ends). The path
crosses three topics, so the baseline ("floor") is a bare 3-hop pipeline on the same broker at the
same rate and message size: sender --hop0--> pass-through --hop1--> pass-through --hop2--> sender,
each pass-through a separate process running a plain confluent-kafka consume -> produce loop
whose producer lingers as the one it stands for (the last one, for the rendezvous' replies, never).

Both pipelines run side by side for the whole run but carry load in turns: after a warm-up of
each, the measured time is cut into `--slices` slices per pipeline, sent in the order
F R R F F R R F ..., each slice drained before the next starts. So noise from other work on the
machine falls on both alike. The ratio rendezvous / floor is the figure to watch
(targets: p50 <= 1.5x, p99 <= 2x). CPU per request is given by process (the broker's too) and,
of each Python process, what its librdkafka threads (rdk:*, from /proc) spent: a lower bound on
librdkafka's share, as its work in calls from Python threads counts in the rest. The machinery
is `bench/stack.py`; `bench/latency_curve.py` runs it at a series of rates (its JSON holds the
librdkafka split too).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/<name>.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
from collections.abc import Sequence
from typing import Any

from bench.common import (
    BrokerInfo,
    new_parser,
    note,
    positive,
    print_cpu_per_request,
    print_table,
    run_bench,
    summarize,
)
from bench.stack import (
    HOPS,
    Round,
    add_stack_arguments,
    describe,
    measure_round,
    round_figures,
    running_stack,
    slice_order,
    stack_options,
)
from services.client.client import Answer

TARGETS = {"p50": 1.5, "p99": 2.0}
COLUMNS = ("n", "p50", "p99", "p99.9", "max")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    arg = parser.add_argument
    arg("--rate", type=float, default=1000.0, help="requests per second (default 1000)")
    arg("--duration", type=float, default=20.0, help="measured seconds (default 20)")
    arg("--warmup", type=float, default=2.0, help="seconds sent first and ignored (default 2)")
    arg("--slices", type=int, default=4, help="measured slices per pipeline, interleaved (default 4)")
    add_stack_arguments(parser)
    args = parser.parse_args(argv)
    positive(parser, args, "rate", "duration", "budget_ms", "partitions", "slices")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def measure(broker: BrokerInfo, args: argparse.Namespace) -> tuple[Round, list[dict[str, Any]]]:
    """One round at `--rate`; then the comparison records of its answers (services stopped)."""
    with running_stack(broker, "e2e", stack_options(args)) as stack:
        note(f"all processes ready; warming up each pipeline for {args.warmup:g} s at {args.rate:g} req/s")
        order = " ".join(n[0].upper() for n in slice_order(args.slices))
        note(f"measuring {args.slices} x {args.duration / args.slices:g} s per pipeline: {order}")
        measured = measure_round(stack, args.rate, args.warmup, args.duration, args.slices)
        comparisons = stack.comparisons({a.request_id for a in measured.answers()})
    return measured, comparisons


def stages(comparisons: list[dict[str, Any]], answers: list[Answer]) -> list[list[Any]]:
    """Where the time goes, from the comparison log: score arrival per model, answer decision."""
    per_model: dict[str, list[float]] = {}
    compute: dict[str, list[float]] = {}
    decided = []
    for record in comparisons:
        if record["answered_at"] is not None:
            decided.append(record["answered_at"] - record["created_at"])
        for out in record["outputs"]:
            per_model.setdefault(out["model"], []).append(out["latency_ms"])
            compute.setdefault(out["model"], []).append(out["compute_ms"])
    rows: list[list[Any]] = []
    for model in sorted(per_model):
        at = summarize(per_model[model])
        rows.append([f"score of {model} at rendezvous", *(at[c] for c in COLUMNS)])
    for model in sorted(compute):
        cs = summarize(compute[model])
        rows.append([f"  {model} compute per batch", *(cs[c] for c in COLUMNS)])
    dec = summarize(decided)
    rows.append(["answer decided (answered_at)", *(dec[c] for c in COLUMNS)])
    # answered_at is the log's clock (the append time of the record that decided it): how far the
    # rendezvous reads behind the log shows only in when it wrote the reply (its record's timestamp).
    replied = [(a.created_at, a.replied_at, a.received_at) for a in answers if a.replied_at and a.replied_at > 0]
    if replied:
        written = summarize([at - created for created, at, _received in replied])
        rows.append(["reply written (its record's timestamp)", *(written[c] for c in COLUMNS)])
        carried = summarize([received - at for _created, at, received in replied])
        rows.append(["  reply written -> received, ms", *(carried[c] for c in COLUMNS)])
    rec = summarize([a.latency_ms for a in answers])
    rows.append(["answer received by client", *(rec[c] for c in COLUMNS)])
    return rows


def report(args: argparse.Namespace, measured: Round, comparisons: list[dict[str, Any]]) -> dict[str, Any]:
    figures = round_figures(measured)
    floor, rdv = figures["floor"], figures["rendezvous"]
    rows: list[list[Any]] = [
        [f"bare {HOPS}-hop floor", *(floor[c] for c in COLUMNS), floor["sent_rate"]],
        ["rendezvous, all answers", *(rdv[c] for c in COLUMNS), rdv["sent_rate"]],
        ["rendezvous, OK answers", *(rdv["ok"][c] for c in COLUMNS), ""],
    ]
    print_table(
        f"End-to-end latency, created -> received (ms): {args.rate:g} req/s, {args.duration:g} s per "
        f"pipeline in {args.slices} interleaved slices (+{args.warmup:g} s warm-up each), "
        f"{describe(stack_options(args))}",
        ["pipeline", *COLUMNS, "sent/s"], rows,
    )
    ratios = figures["ratios"]
    targets = [f"{c} <= {t:g}x: {'met' if ratios[c] <= t else 'NOT met'}" for c, t in TARGETS.items()]
    print_table("Ratio rendezvous / floor (all answers)", ["", "p50", "p99", "p99.9"],
                [["ratio", *ratios.values()]], digits=2)
    print("targets: " + "; ".join(targets))
    sent, statuses = rdv["sent"], rdv["statuses"]
    status_rows = [[s, n, 100.0 * n / max(1, sent)] for s, n in statuses.items()]
    print_table(f"Answers by status ({sent:,} measured requests)", ["status", "answers", "%"], status_rows)
    print("by status/model: " + ", ".join(f"{k}={n}" for k, n in sorted(rdv["by_status_model"].items())))
    print(f"deadline met (received <= deadline): {rdv['by_deadline']:,} of {sent:,} ({rdv['by_deadline_pct']:.2f}%), "
          f"OK by the deadline {rdv['ok_by_deadline_pct']:.2f}%; floor answers: {floor['answered']:,} of "
          f"{floor['sent']:,}; sender max lag behind schedule: floor {floor['behind_max_ms']:.1f} ms, "
          f"rendezvous {rdv['behind_max_ms']:.1f} ms")
    print_cpu_per_request("every process during each pipeline's measured slices (the other pipeline's "
                          "processes idle meanwhile)", figures["cpu_ms_per_request"], host=figures["host_cpu_pct"])
    print_cpu_per_request("of it, the Python processes' librdkafka threads (rdk:*; librdkafka's work in "
                          "calls from Python, produce, poll, consume, counts in the rest)",
                          figures["librdkafka_ms_per_request"])
    stage_rows = stages(comparisons, measured.answers())
    print_table("Rendezvous path by stage, ms after created_at (from the comparison log)",
                ["stage", *COLUMNS], stage_rows)
    stage_figures = {row[0].strip(): dict(zip(COLUMNS, row[1:], strict=True)) for row in stage_rows}
    return {**figures, "stages": stage_figures}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench("e2e_latency", args, lambda broker: report(args, *measure(broker, args)))


if __name__ == "__main__":
    sys.exit(main())
