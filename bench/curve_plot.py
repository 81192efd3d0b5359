"""Draws bench/results/latency_curve.json as a picture (SVG or PNG, by the file's suffix).

    .venv/bin/python bench/curve_plot.py [bench/results/latency_curve.json] [-o latency_curve.svg]

Four panels: p50/p99 latency against the request rate (floor and rendezvous, log scales); the
share of requests answered by their deadline against the rate; CPU milliseconds per request
(all processes, and the broker's part); the cold start, per window of sending time.
`bench/latency_curve.py` calls `draw` at the end of a run; this command redraws from the JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/<name>.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, LogFormatter, NullFormatter

COLORS = {"floor": "#7f7f7f", "rendezvous": "#d62728"}
LABELS = {"floor": "bare 3-hop floor", "rendezvous": "rendezvous (3 models)"}


def _num(value: Any) -> float:
    """A figure from the JSON (null where it was NaN) as a float."""
    return math.nan if value is None else float(value)


def _values(points: Sequence[Mapping[str, Any]], pipeline: str, key: str) -> list[float]:
    return [_num(point[pipeline].get(key)) for point in points]


def _plain_numbers(ax: Axes, rates: Sequence[float] | None = None) -> None:
    """Ticks as plain numbers (1,000 rather than 10^3); on the x axis, the rates measured."""
    plain = FuncFormatter(lambda value, _pos: f"{value:,.0f}" if value >= 1 else f"{value:g}")
    if rates:
        ax.set_xticks(rates)
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    if ax.get_yscale() == "log":
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


def _latency(ax: Axes, points: Sequence[Mapping[str, Any]], budget_ms: float) -> None:
    rates = [p["rate"] for p in points]
    for pipeline, color in COLORS.items():
        ax.plot(rates, _values(points, pipeline, "p99"), "-o", color=color, label=f"{LABELS[pipeline]} p99")
        ax.plot(rates, _values(points, pipeline, "p50"), "--s", color=color, label=f"{LABELS[pipeline]} p50",
                markersize=4)
    ax.axhline(budget_ms, color="black", linewidth=0.8, linestyle=":", label=f"deadline ({budget_ms:g} ms)")
    ax.set(xscale="log", yscale="log", xlabel="requests per second", ylabel="latency, ms (created -> received)",
           title="Latency against the request rate")
    _plain_numbers(ax, rates)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def _deadline(ax: Axes, points: Sequence[Mapping[str, Any]], highest: Any) -> None:
    rates = [p["rate"] for p in points]
    for pipeline, color in COLORS.items():
        ax.plot(rates, _values(points, pipeline, "by_deadline_pct"), "-o", color=color,
                label=f"{LABELS[pipeline]}: answered by the deadline")
    ax.plot(rates, _values(points, "rendezvous", "ok_by_deadline_pct"), ":^", color=COLORS["rendezvous"],
            label="rendezvous: OK (champion) by the deadline", markersize=4)
    ax.axhline(99.0, color="black", linewidth=0.8, linestyle=":", label="99%")
    title = "Answers by their deadline"
    if highest is not None:
        title += f" (>= 99% up to {highest:,.0f} req/s)"
    ax.set(xscale="log", ylim=(0, 101), xlabel="requests per second", ylabel="% of requests sent", title=title)
    _plain_numbers(ax, rates)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(True, which="both", alpha=0.3)


def _cpu(ax: Axes, points: Sequence[Mapping[str, Any]]) -> None:
    rates = [p["rate"] for p in points]
    for pipeline, color in COLORS.items():
        cpu = [p["cpu_ms_per_request"][pipeline] for p in points]
        ax.plot(rates, [_num(c.get("total")) for c in cpu], "-o", color=color,
                label=f"{LABELS[pipeline]}: all processes")
        ax.plot(rates, [_num(c.get("broker")) for c in cpu], "--s", color=color,
                label=f"{LABELS[pipeline]}: broker", markersize=4)
    ax.set(xscale="log", xlabel="requests per second", ylabel="CPU ms per request", title="CPU per request")
    ax.set_ylim(bottom=0)
    _plain_numbers(ax, rates)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def _cold(ax: Axes, cold: Mapping[str, Any] | None, budget_ms: float) -> None:
    if not cold:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no cold start in this run", ha="center", va="center")
        return
    windows = cold["windows"]
    mids = [(w["from_s"] + w["to_s"]) / 2 for w in windows]
    ax.plot(mids, [_num(w["p99"]) for w in windows], "-o", color=COLORS["rendezvous"], label="p99")
    ax.plot(mids, [_num(w["p50"]) for w in windows], "--s", color=COLORS["rendezvous"], label="p50", markersize=4)
    ax.axhline(budget_ms, color="black", linewidth=0.8, linestyle=":", label=f"deadline ({budget_ms:g} ms)")
    ax.set(yscale="log", xlabel="seconds after the services were ready (sending time)", ylabel="latency, ms",
           title=f"Cold broker: first {cold['seconds']:g} s at {cold['rate']:g} req/s, rendezvous",
           xlim=(0, cold["seconds"]))
    _plain_numbers(ax)
    ax.grid(True, which="both", alpha=0.3)
    share = ax.twinx()
    share.plot(mids, [_num(w["by_deadline_pct"]) for w in windows], ":^", color="black", label="% by deadline")
    share.set(ylim=(0, 101), ylabel="% by the deadline")
    lines = ax.get_legend_handles_labels()
    more = share.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper right")


def draw(document: Mapping[str, Any], path: str | Path) -> None:
    """The four panels of one run's results, written to `path` (no date inside: diffs stay small)."""
    results = document["results"]
    points = results["curve"]
    plt.rcParams["svg.hashsalt"] = "latency-curve"  # stable ids in the SVG
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    _latency(axes[0][0], points, results["budget_ms"])
    _deadline(axes[0][1], points, results["highest_rate_by_deadline"])
    _cpu(axes[1][0], points)
    _cold(axes[1][1], results.get("cold_start"), results["budget_ms"])
    machine = document.get("machine", {})
    commit = (machine.get("git") or {}).get("commit") or "?"
    co_hosted = ", the 3 models in one worker (--co-host)" if document.get("args", {}).get("co_host") else ""
    fig.suptitle(f"rendezvous-serving latency vs rate{co_hosted}: {machine.get('cpus', '?')} CPUs, "
                 f"{document.get('at', '')}, commit {commit[:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None} if str(path).endswith(".svg") else None)
    plt.close(fig)


def redraw(json_path: str | Path, picture: str | Path) -> str | None:
    """Draw a run's JSON file to `picture`; an error message instead when the file is not one."""
    try:
        document = json.loads(Path(json_path).read_text())
        draw(document, picture)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"cannot draw {json_path}: {type(err).__name__}: {err}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="?", default="bench/results/latency_curve.json", help="the run's JSON")
    parser.add_argument("-o", "--output", help="picture to write (default: the JSON's name with .svg)")
    args = parser.parse_args(argv)
    output = args.output or str(Path(args.json).with_suffix(".svg"))
    error = redraw(args.json, output)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
