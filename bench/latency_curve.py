"""The latency-vs-rate curve, floor and rendezvous side by side, and the first 30 s of a cold broker.

    .venv/bin/python bench/latency_curve.py [--rates 100,200,500,1000,...] [--step 8] [--slices 2]
                                            [--warmup 1] [--cold-rate 200] [--cold-seconds 30]
                                            [--no-cold-start] [--truly-cold] [--max-minutes 5.5]
                                            [--json bench/results/latency_curve.json]
                                            [--svg bench/results/latency_curve.svg]

One broker, started for the run (or KAFKA_BOOTSTRAP_SERVERS, then without the cold start), and the
stack of bench/e2e_latency.py (see bench/stack.py): client -> 3 demo models -> rendezvous ->
client, next to a bare 3-hop pipeline (the floor), every box its own process.

1. Cold start: as soon as the fresh broker and the services are up, the rendezvous alone gets
   `--cold-rate` req/s for `--cold-seconds`; figures per 5 s window and for the whole, CPU per
   request by process, the broker's CPU by thread group (JIT compiler, GC, network, handlers).
   By default the broker starts as the project's local broker does: with its start-up warm-up
   traffic (RDV_BROKER_WARMUP) and the class-data archive of earlier starts (RDV_BROKER_CDS), so
   the figures are a "cold start after the local broker's warm-up". `--truly-cold` starts it with
   RDV_BROKER_WARMUP=off RDV_BROKER_CDS=off: no warm-up, no archive (the JIT and the class
   loading happen under the load). The tables and the JSON (`cold_start.broker_start`) say which.
2. The curve: at each rate of `--rates` in turn, a round as in e2e_latency (a warm-up of each
   pipeline, then `--step` s per pipeline in `--slices` interleaved slices): p50/p99, % of
   requests answered by their deadline (received <= deadline) and by status, CPU per request by
   process including the broker. It stops after the second rate at which < 99% of the
   rendezvous' requests are answered by their deadline, once the sender cannot keep the rate
   (< 97% of it), or before a rate that would not fit in `--max-minutes`.

Prints every table; writes every figure and the machine (CPUs, load, versions, git commit) to
`--json`, and the picture to `--svg` (bench/curve_plot.py redraws it from the JSON).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/<name>.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import math
import os
import time
from collections.abc import Sequence
from typing import Any

from bench.cold_start import cold_figures, measure_cold_start, print_cold
from bench.common import (
    REPO_ROOT,
    TRULY_COLD_ENV,
    BrokerInfo,
    new_parser,
    note,
    positive,
    print_cpu_per_request,
    print_table,
    ratio,
    run_bench,
)
from bench.curve_plot import redraw
from bench.stack import Stack, add_stack_arguments, describe, measure_round, round_figures, running_stack, stack_options

RESULTS = REPO_ROOT / "bench" / "results"
DEFAULT_RATES = "100,200,500,1000,1500,2000,3000,4000,5000,7000,10000"
MEETS_PCT = 99.0  # share of requests answered by their deadline that counts as "meets"
FAILURES_TO_STOP = 2
SENDER_KEEPS = 0.97  # below this share of the rate, the sender (this process) is the limit
ROUND_OVERHEAD_S = 6.0  # drains and checks per round, for the time budget


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__, json_default=str(RESULTS.relative_to(REPO_ROOT) / "latency_curve.json"))
    arg = parser.add_argument
    arg("--svg", default=str(RESULTS.relative_to(REPO_ROOT) / "latency_curve.svg"),
        help="the picture (SVG or PNG by suffix; '' for none; default bench/results/latency_curve.svg)")
    arg("--rates", default=DEFAULT_RATES, help=f"requests/s to measure, in order (default {DEFAULT_RATES})")
    arg("--step", type=float, default=8.0, help="measured seconds per pipeline and rate (default 8)")
    arg("--slices", type=int, default=2, help="interleaved slices per pipeline and rate (default 2)")
    arg("--warmup", type=float, default=1.0, help="seconds per pipeline sent first at each rate (default 1)")
    arg("--cold-rate", type=float, default=200.0, help="req/s in the cold start (default 200)")
    arg("--cold-seconds", type=float, default=30.0, help="length of the cold start (default 30)")
    arg("--cold-window", type=float, default=5.0, help="seconds per cold start window (default 5)")
    arg("--no-cold-start", action="store_true", help="skip the cold start")
    arg("--truly-cold", action="store_true",
        help="start the broker with RDV_BROKER_WARMUP=off RDV_BROKER_CDS=off, so the cold start is a broker's "
        "first traffic, on no class-data archive (default: the local broker's start-up warm-up and archive, "
        "as `rendezvous broker start` runs it)")
    arg("--max-minutes", type=float, default=5.5, help="start no rate that would end later (default 5.5)")
    add_stack_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.rates = [float(r) for r in str(args.rates).split(",") if r.strip()]
    except ValueError:
        parser.error(f"--rates expects numbers like 100,200,500; got {args.rates!r}")
    if not args.rates or min(args.rates) <= 0:
        parser.error("--rates needs at least one rate, all > 0")
    positive(parser, args, "step", "slices", "cold_rate", "cold_seconds", "cold_window", "max_minutes",
             "budget_ms", "partitions")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.truly_cold and args.no_cold_start:
        parser.error("--truly-cold is about the cold start: not with --no-cold-start")
    if args.truly_cold and os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        parser.error("--truly-cold starts a broker of its own: not with KAFKA_BOOTSTRAP_SERVERS set (a broker given "
                     "is not restarted, and there is no cold start)")
    if args.svg and not args.json:
        parser.error("--svg is drawn from the JSON: give --json too (or --svg '')")
    return args


def curve(stack: Stack, args: argparse.Namespace, started: float) -> tuple[list[dict[str, Any]], str]:
    """A round per rate until a stop rule fires; the figures of each and why it stopped."""
    points: list[dict[str, Any]] = []
    failures = 0
    round_s = 2 * (args.warmup + args.step) + ROUND_OVERHEAD_S
    for rate in args.rates:
        if time.monotonic() - started + round_s > 60.0 * args.max_minutes:
            return points, f"time: {rate:g} req/s would end after --max-minutes {args.max_minutes:g}"
        note(f"rate {rate:g} req/s: {args.step:g} s per pipeline in {args.slices} slices")
        point = round_figures(measure_round(stack, rate, args.warmup, args.step, args.slices))
        kept = min(point["floor"]["sent_rate"], point["rendezvous"]["sent_rate"])
        point["sender_kept"] = kept >= SENDER_KEEPS * rate
        points.append(point)
        note(_one_line(point))
        failures += point["rendezvous"]["by_deadline_pct"] < MEETS_PCT
        reasons = []
        if failures >= FAILURES_TO_STOP:
            reasons.append(f"deadlines: < {MEETS_PCT:g}% answered by the deadline at {failures} rates")
        if not point["sender_kept"]:
            reasons.append(f"sender: {kept:,.0f} req/s sent at {rate:g} req/s asked (< {SENDER_KEEPS:.0%}; "
                           f"this process shares the machine with everything it measures)")
        if reasons:
            return points, "; ".join(reasons)
    return points, "all rates measured"


def _one_line(point: dict[str, Any]) -> str:
    floor, rdv = point["floor"], point["rendezvous"]
    return (f"  floor p50 {floor['p50']:.0f} / p99 {floor['p99']:.0f} ms; rendezvous p50 {rdv['p50']:.0f} / "
            f"p99 {rdv['p99']:.0f} ms, {rdv['by_deadline_pct']:.1f}% by the deadline")


def highest_rate(points: list[dict[str, Any]], key: str) -> float | None:
    """The highest measured rate at which >= 99% of the rendezvous' requests met `key`, among the
    rates the sender kept (one it fell short of was not the rate measured)."""
    meeting = [p["rate"] for p in points if p["rendezvous"][key] >= MEETS_PCT and p.get("sender_kept", True)]
    return max(meeting) if meeting else None


def _stolen(point: dict[str, Any], pipeline: str) -> float:
    """% of the host's CPU the hypervisor gave to other guests during the pipeline's slices."""
    share = point["host_cpu_pct"][pipeline]
    return share["steal_pct"] if share else math.nan


def print_curve(points: list[dict[str, Any]], args: argparse.Namespace, stopped: str) -> None:
    rows = []
    for p in points:
        floor, rdv, cpu = p["floor"], p["rendezvous"], p["cpu_ms_per_request"]
        sent = max(1, rdv["sent"])
        rows.append([
            f"{p['rate']:g}", floor["p50"], floor["p99"], floor["by_deadline_pct"], rdv["p50"], rdv["p99"],
            ratio(rdv["p50"], floor["p50"]), ratio(rdv["p99"], floor["p99"]), rdv["by_deadline_pct"],
            rdv["ok_by_deadline_pct"], 100.0 * rdv["statuses"].get("TIMEOUT", 0) / sent,
            100.0 * rdv["statuses"]["no answer"] / sent, cpu["floor"]["total"], cpu["rendezvous"]["total"],
            cpu["rendezvous"].get("broker"), _stolen(p, "floor"), _stolen(p, "rendezvous"),
            min(floor["sent_rate"], rdv["sent_rate"]),
        ])  # fmt: skip
    print_table(
        f"Latency vs rate (ms, created -> received; %: of requests sent; CPU: ms per request, every process "
        f"during that pipeline's slices): {args.step:g} s per pipeline and rate in {args.slices} slices, "
        f"{describe(stack_options(args))}",
        ["req/s", "floor p50", "p99", "% by dl", "rdv p50", "p99", "x p50", "x p99", "% by dl", "% OK by dl",
         "% TIMEOUT", "% none", "CPU floor", "CPU rdv", "of it broker", "% stolen floor", "rdv", "sent/s"], rows,
    )  # fmt: skip
    for pipeline in ("rendezvous", "floor"):
        by_rate = {f"{p['rate']:g}/s": p["cpu_ms_per_request"][pipeline] for p in points}
        host = {f"{p['rate']:g}/s": p["host_cpu_pct"][pipeline] for p in points}
        print_cpu_per_request(f"the {pipeline} pipeline by rate (every process during its slices)", by_rate,
                              host=host)
    print(f"stopped: {stopped}")


def measure(broker: BrokerInfo, args: argparse.Namespace, launched: float) -> dict[str, Any]:
    broker_ready_s = time.monotonic() - launched
    load_at_start = os.getloadavg()
    cold_start = None
    with running_stack(broker, "curve", stack_options(args)) as stack:
        services_ready_s = time.monotonic() - launched - broker_ready_s
        note(f"broker up after {broker_ready_s:.1f} s, services {services_ready_s:.1f} s later")
        if broker.external or args.no_cold_start:
            note("no cold start: " + ("the broker is not this run's" if broker.external else "--no-cold-start"))
        else:
            note(f"cold start: the rendezvous alone at {args.cold_rate:g} req/s for {args.cold_seconds:g} s")
            cold = measure_cold_start(stack, args.cold_rate, args.cold_seconds)
            cold_start = {**cold_figures(cold, args.cold_window), "broker_ready_s": broker_ready_s,
                          "services_ready_s": services_ready_s, "broker_start": dict(broker.start)}
        points, stopped = curve(stack, args, launched)
    if cold_start:
        label = cold_start["broker_start"].get("label", "cold start")
        print_cold(cold_start, f"Cold start (ms, created -> received), {label}: the rendezvous alone at "
                               f"{args.cold_rate:g} req/s from {services_ready_s:.0f} s after a fresh broker was up "
                               f"({broker_ready_s:.0f} s to start it), per {args.cold_window:g} s of sending")
    print_curve(points, args, stopped)
    results = {
        "budget_ms": args.budget_ms,
        "curve": points,
        "stopped": stopped,
        "highest_rate_by_deadline": highest_rate(points, "by_deadline_pct"),
        "highest_rate_ok_by_deadline": highest_rate(points, "ok_by_deadline_pct"),
        "cold_start": cold_start,
        "load_average_at_start": load_at_start,
        "seconds": time.monotonic() - launched,
    }
    print(f"highest rate with >= {MEETS_PCT:g}% of requests answered by their deadline: "
          f"{_rate(results['highest_rate_by_deadline'])}; with an OK answer by the deadline: "
          f"{_rate(results['highest_rate_ok_by_deadline'])} (run took {results['seconds']:.0f} s)")
    return results


def _rate(rate: float | None) -> str:
    return "none of the rates measured" if rate is None else f"{rate:,.0f} req/s"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    launched = time.monotonic()
    status = run_bench("latency_curve", args, lambda broker: measure(broker, args, launched),
                       broker_env=TRULY_COLD_ENV if args.truly_cold else None)
    if status == 0 and args.svg:
        error = redraw(args.json, args.svg)
        if error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        note(f"picture written to {args.svg}")
    return status


if __name__ == "__main__":
    sys.exit(main())
