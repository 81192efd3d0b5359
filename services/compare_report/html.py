"""The report as one self-contained HTML file: the table plus plots as inline SVG.

Plots are drawn with matplotlib's object API (`Figure`, no pyplot: no global state, no GUI
backend; SVG output needs none) and embedded as `<svg>` elements, with text kept as text
(`svg.fonttype: none`), so the page is small, searchable and loads nothing from the network.

Plot kinds, each in a `<figure data-kind=...>` with a stable id:
- `latency-cdf`: latency CDF of every model (one figure);
- `score-qq`: quantiles of each challenger's scores against the champion's (one figure);
- `agreement-over-time`: each challenger's label agreement with the champion per time bucket;
- `confusion-<model>`: one confusion matrix per challenger (champion label x model label).
A kind with nothing to draw (no champion, no labels) gets a figure with a one-line note instead.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from services.compare_report.summary import ModelSummary, Report
from services.compare_report.table import COLUMNS, caption
from services.core.errors import ConfigError
from services.core.files import write_whole
from services.core.ranges import format_duration_ms, format_ms
from services.core.terminal import shortened

LOG_SCALE_SPREAD = 10.0  # latency x axis is logarithmic when max p99 / min p50 exceeds this
_SVG_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; white-space: nowrap; }
tr.champion td:first-child { font-weight: bold; }
figure { display: inline-block; margin: 1em 1em 0 0; vertical-align: top; }
figcaption { font-weight: 600; margin-bottom: 0.3em; }
pre { color: #555; } .empty { color: #888; }
"""


def write_html(report: Report, path: str | Path) -> Path:
    """Write the page; `ConfigError` (one line) when the file cannot be written."""
    target = Path(path)
    page = render_html(report)
    try:
        if target.exists() and not target.is_file():  # a pipe to a reader, /dev/stdout: written as it is
            target.write_text(page, encoding="utf-8")
        else:
            # Whole or not at all: a write that failed halfway (a full disk) left the last report cut short.
            write_whole(target, page)
    except OSError as exc:
        raise ConfigError(f"--html {path}: cannot write the report: {exc.strerror or exc}") from None
    return target


def render_html(report: Report) -> str:
    title = f"rendezvous compare: {report.source}" if report.source else "rendezvous compare"
    # Text stays text in the SVG (searchable, small); the browser supplies the font.
    # parse_math off: model names and labels are data; a '$' in one was read as TeX (and a bad
    # formula raised: no report at all).
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
                                "text.parse_math": False}):
        figures = "\n".join(_figures(report)) if report.records else '<p class="empty">no records in range</p>'
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"{_table(report)}\n<pre>{html.escape(caption(report))}</pre>\n{figures}\n</body></html>\n"
    )


def _table(report: Report) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("model", *(h for h, _ in COLUMNS)))
    rows = []
    for model in report.models:
        cells = "".join(f"<td>{html.escape(cell(model))}</td>" for _, cell in COLUMNS)
        name = html.escape(model.name) + (" ★" if model.champion else "")
        rows.append(f'<tr class="{"champion" if model.champion else "model"}"><td>{name}</td>{cells}</tr>')
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


# Challengers drawn in the plots, those with the most outputs: the table lists every model. Each
# drawn model costs ~70 ms of matplotlib (a confusion figure, legend entries): a log naming
# thousands of models (any writer of it can) took minutes to render (a review).
PLOTTED = 12
PLOTTED_CHARS = 64  # a name or label in a plot is cut to this (a label of 200,000 characters: 9 s)


def _figures(report: Report) -> list[str]:
    colors = {m.name: f"C{i % 10}" for i, m in enumerate(report.models)}
    every = [m for m in report.models if not m.champion and report.champion is not None]
    busiest = {id(m) for m in sorted(every, key=lambda m: -m.n)[:PLOTTED]}  # by id: a summary holds arrays
    challengers = [m for m in every if id(m) in busiest]  # in the table's order
    shown = tuple(m for m in report.models if m.champion or id(m) in busiest) if report.champion \
        else report.models[:PLOTTED + 1]
    parts = [
        _figure("latency-cdf", "Latency CDF (request created → score arrived)",
                lambda ax: _latency_cdf(ax, shown, colors)),
        _figure("score-qq", f"Score quantiles vs the champion ({report.champion})",
                lambda ax: _qq(ax, challengers, colors), empty=_none_with(challengers, "qq")),
        _figure("agreement-over-time", f"Agreement with the champion per {format_duration_ms(report.bucket_ms)}",
                lambda ax: _agreement(ax, report, challengers, colors),
                empty=_none_with(challengers, "agreement_over_time")),
    ]  # fmt: skip
    keys: set[str] = set()
    for model in challengers:
        parts.append(_figure("confusion", f"Confusion: {model.name} vs {report.champion}",
                             partial(_confusion, model=model), key=_unique(_slug(model.name), keys),
                             size=(4.2, 3.6), empty=_none_with([model], "confusion")))  # fmt: skip
    left_out = len(report.models) - len(shown)
    if left_out > 0:
        parts.append(f'<p class="empty">{left_out:,} more models are in the table, not drawn (the plots show the '
                     f"champion and the {PLOTTED} with the most outputs)</p>")
    return parts


def _none_with(models: list[ModelSummary], plot: str) -> bool:
    return not any(getattr(m.plots, plot) is not None for m in models)


def _figure(
    kind: str, title: str, draw: Callable[[Axes], None], *, key: str = "",
    size: tuple[float, float] = (6.4, 3.8), empty: bool = False,
) -> str:  # fmt: skip
    """One `<figure id="fig-<kind>[-<key>]" data-kind="<kind>">` holding an inline SVG (or a note)."""
    head = f'<figure id="fig-{kind}{"-" + key if key else ""}" data-kind="{kind}">'
    caption = f"<figcaption>{html.escape(title)}</figcaption>"
    if empty:
        return f'{head}{caption}<p class="empty">nothing to compare (no champion scores or labels)</p></figure>'
    fig = Figure(figsize=size, layout="constrained")
    draw(fig.add_subplot())
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata=_SVG_METADATA)
    svg = buffer.getvalue()
    return f"{head}{caption}{svg[svg.index('<svg'):]}</figure>"


def _latency_cdf(ax: Axes, models: tuple[ModelSummary, ...], colors: dict[str, str]) -> None:
    # A model whose every output is an error has a CDF of NaN: left out (Python's max and min of a
    # NaN made the whole plot read "too far apart", a review).
    spans = [x for x in (model.plots.latency_cdf[0] for model in models if model.n) if np.isfinite(x).any()]
    high, low = (max(float(np.nanmax(x)) for x in spans), min(float(np.nanmin(x)) for x in spans)) if spans else (0, 0)
    if not high - low <= PLOTTABLE_SPAN:
        # A forged latency near the float limits (finite, so kept) beside a 0 ms one: on a linear
        # axis matplotlib cannot place ticks, and the page was not written (as for the q-q plot).
        ax.text(0.5, 0.5, "latencies too far apart to plot", transform=ax.transAxes, ha="center")
        return
    for model in models:
        xs, ys = model.plots.latency_cdf
        if model.n:
            ax.step(xs, ys, where="post", color=colors[model.name], label=_legend(model.name))
    medians = [m.latency_ms["p50"] for m in models if m.n]
    tails = [m.latency_ms["p99"] for m in models if m.n]
    if medians and min(medians) > 0 and max(tails) / min(medians) > LOG_SCALE_SPREAD:
        ax.set_xscale("log")  # a slow model's tail would squeeze the others into one corner
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("share of outputs")
    ax.legend(loc="lower right")


PLOTTABLE_SPAN = 1e300  # an axis wider than this overflows matplotlib's tick placement (near 1.8e308)


def _qq(ax: Axes, challengers: list[ModelSummary], colors: dict[str, str]) -> None:
    drawn = _qq_points(challengers)
    low = min((min(reference.min(), values.min()) for _, reference, values in drawn), default=math.inf)
    high = max((max(reference.max(), values.max()) for _, reference, values in drawn), default=-math.inf)
    if drawn and not high - low <= PLOTTABLE_SPAN:
        # Scores near the float limits (finite, but their span overflows or nearly): matplotlib
        # cannot place ticks on such an axis, and the report must not fail on one odd score.
        ax.text(0.5, 0.5, "scores too far apart to plot", transform=ax.transAxes, ha="center")
        return
    for model, reference, values in drawn:
        ax.plot(reference, values, ".", color=colors[model.name], label=_legend(model.name), markersize=4)
    if drawn:
        ax.plot([low, high], [low, high], "--", color="grey", linewidth=0.8, label="y = x")
    ax.set_xlabel("champion score quantile")
    ax.set_ylabel("model score quantile")
    ax.legend(loc="upper left")


def _qq_points(challengers: list[ModelSummary]) -> list[tuple[ModelSummary, np.ndarray, np.ndarray]]:
    """Each challenger's q-q points where both quantiles are finite numbers (quantiles of scores
    near the float limits can overflow to infinity), if it has any."""
    points = []
    for model in challengers:
        if model.plots.qq is not None:
            reference, values = model.plots.qq
            finite = np.isfinite(reference) & np.isfinite(values)
            if finite.any():
                points.append((model, reference[finite], values[finite]))
    return points


def _agreement(ax: Axes, report: Report, challengers: list[ModelSummary], colors: dict[str, str]) -> None:
    """One point per bucket, at its middle; the x axis spans whole buckets (even when there is one)."""
    starts = report.bucket_starts.astype("datetime64[ms]")
    times = starts + np.timedelta64(report.bucket_ms // 2, "ms")
    for model in challengers:
        series = model.plots.agreement_over_time
        if series is not None:
            ax.plot(times, series, marker=".", color=colors[model.name], label=_legend(model.name))
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    if len(times):
        ax.set_xlim(starts[0], starts[-1] + np.timedelta64(report.bucket_ms, "ms"))
        ax.set_xlabel(f"request created (UTC), from {format_ms(int(report.bucket_starts[0]))}")
    ax.set_ylabel("agreement")
    ax.legend(loc="best")


def _confusion(ax: Axes, model: ModelSummary) -> None:
    assert model.plots.confusion is not None
    labels, counts = model.plots.confusion
    ax.imshow(counts, cmap="Blues", vmin=0)  # absolute shading: a near-empty cell stays pale
    ax.grid(False)
    ticks = range(len(labels))
    shortened = [_short(label) for label in labels]
    ax.set_xticks(ticks, shortened, rotation=30, ha="right")
    ax.set_yticks(ticks, shortened)
    ax.set_xlabel(f"{_short(model.name)} label")
    ax.set_ylabel("champion label")
    peak = counts.max() if counts.size else 0
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, f"{count:,}", ha="center", va="center", color="white" if count > 0.6 * peak else "black")


def _legend(name: str) -> str:
    """A model's name as a legend entry: matplotlib leaves out entries whose label starts with
    '_', so such a name gets a zero-width space in front."""
    name = _short(name)
    return "\u200b" + name if name.startswith("_") else name


def _short(text: str) -> str:
    return shortened(text, PLOTTED_CHARS)


def _unique(key: str, taken: set[str]) -> str:
    """`key`, or `key-2`, `key-3`... when taken: "fraud v2" and "fraud/v2" made one element id twice (a review)."""
    found, n = key, 1
    while found in taken:
        n += 1
        found = f"{key}-{n}"
    taken.add(found)
    return found


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "model"
