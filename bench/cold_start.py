"""The first seconds after a cold broker start, reported on their own (used by latency_curve.py).

A broker just started still compiles its hot code (the JVM's JIT) and its caches are empty, so the
first half-minute of load is slower than what follows. How cold it is depends on how it started:
the project's local broker runs a start-up warm-up (RDV_BROKER_WARMUP) and maps the class-data
archive of earlier starts (RDV_BROKER_CDS) before it says it is ready, so by default this is a
"cold start after the local broker's warm-up"; latency_curve.py --truly-cold turns both off
(bench.common.broker_start labels which). Right after the broker and the services
are up, the rendezvous pipeline alone gets `rate` requests/s for `seconds`; the figures come per
`window_s` window of sending time (the i-th request falls in window i // (rate * window_s)) and for
the whole, with the broker's CPU by thread group (JIT compiler, GC, network threads, request
handlers, ...) over that time and over its start-up before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.broker_threads import ThreadTimes, by_group, java_thread_names, thread_times
from bench.common import CpuMeter, Load, cpu_per_request, cpu_seconds, fmt, print_cpu_per_request, print_table
from bench.stack import Stack, answer_figures

COLUMNS = ("n", "p50", "p99", "max")


@dataclass
class ColdStart:
    rate: float
    seconds: float
    load: Load
    meter: CpuMeter
    threads_at_start: dict[int, ThreadTimes]
    threads_at_end: dict[int, ThreadTimes]
    broker_cpu_at_start: float
    broker_cpu_at_end: float
    thread_names: dict[int, str]


def measure_cold_start(stack: Stack, rate: float, seconds: float) -> ColdStart:
    """Load the rendezvous at `rate` for `seconds` now; snapshot the broker's threads around it."""
    pid = stack.broker.pid
    if pid is None:
        raise ValueError("a cold start needs the broker this run started")
    threads_at_start, broker_cpu_at_start = thread_times(pid), cpu_seconds(pid)
    meter, load = CpuMeter(stack.cpu_sources()), Load()
    with meter.span():
        stack.run("rendezvous", rate, seconds, load)
    threads_at_end, broker_cpu_at_end = thread_times(pid), cpu_seconds(pid)
    return ColdStart(rate, seconds, load, meter, threads_at_start, threads_at_end, broker_cpu_at_start,
                     broker_cpu_at_end, java_thread_names(pid))  # after the snapshots: attaching costs CPU


def cold_figures(cold: ColdStart, window_s: float) -> dict[str, Any]:
    """Figures per window and for the whole time, CPU per request, the broker's threads by group."""
    per_window = max(1, round(cold.rate * window_s))
    windows = []
    for first in range(0, len(cold.load.futures), per_window):
        part = Load(cold.load.futures[first:first + per_window])
        start_s = first / cold.rate
        windows.append({"from_s": start_s, "to_s": start_s + len(part.futures) / cold.rate,
                        **answer_figures(_answers(part), part)})
    whole = answer_figures(_answers(cold.load), cold.load)
    names = cold.thread_names
    return {
        "rate": cold.rate,
        "seconds": cold.seconds,
        "window_s": window_s,
        "windows": windows,
        "whole": whole,
        "cpu_ms_per_request": cpu_per_request({"rendezvous": cold.meter}, {"rendezvous": len(cold.load.futures)}),
        "cpu_s": cold.meter.used,
        "host_cpu_pct": cold.meter.host_share(),
        "broker_threads": {
            "names": "full Java names (jcmd)" if names else "15-character comm (no jcmd)",
            "start_up": by_group({}, cold.threads_at_start, names, cold.broker_cpu_at_start),
            "load": by_group(cold.threads_at_start, cold.threads_at_end, names,
                             cold.broker_cpu_at_end - cold.broker_cpu_at_start),
        },
    }


def _answers(load: Load) -> list[Any]:
    return [f.result() for f in load.futures if f.done() and f.exception() is None]


def print_cold(figures: dict[str, Any], title: str) -> None:
    def cells(w: dict[str, Any]) -> list[Any]:
        return [*(w[c] for c in COLUMNS), w["by_deadline_pct"], w["ok_by_deadline_pct"],
                w["statuses"].get("TIMEOUT", 0), w["statuses"]["no answer"]]

    rows = [[f"{w['from_s']:g}-{w['to_s']:g} s", *cells(w)] for w in figures["windows"]]
    rows.append([f"whole {figures['seconds']:g} s", *cells(figures["whole"])])
    print_table(title, ["sent in", *COLUMNS, "% by deadline", "% OK by deadline", "TIMEOUT", "no answer"], rows)
    print_cpu_per_request("the cold start, every process", figures["cpu_ms_per_request"],
                          host={"rendezvous": figures.get("host_cpu_pct")})
    threads = figures["broker_threads"]
    load, start_up = threads["load"], threads["start_up"]
    total = sum(g["cpu_s"] for g in load.values()) or float("nan")
    none = {"cpu_s": 0.0, "user_s": 0.0, "system_s": 0.0, "threads": 0}
    rows = []
    for group in dict.fromkeys([*load, *start_up]):
        g = load.get(group, none)
        rows.append([group, start_up.get(group, none)["cpu_s"], g["cpu_s"], g["user_s"], g["system_s"],
                     100.0 * g["cpu_s"] / total, g["threads"]])
    print_table(f"Broker CPU s by thread group (names: {threads['names']}): start-up = from broker start to the "
                f"first request; load = the {fmt(figures['seconds'], 0)} s of load",
                ["thread group", "start-up", "load", "load user", "load system", "% of load", "threads"], rows,
                digits=2)
