"""The published input contracts, as `rendezvous models` prints them under its live table."""

from __future__ import annotations

from collections.abc import Collection

from rich.console import Console

from services.core.errors import TopicMissing
from services.core.model_info import ModelInfo, read_contracts
from services.core.ranges import format_ms
from services.core.settings import KafkaSettings
from services.core.signatures import FeatureSpec, listed, shown_name
from services.core.terminal import printable


def contract_line(info: ModelInfo) -> str:
    """`champion logreg-1: requires 30 (mean_radius, ...); optional: none; ranges: 2 (mean_radius in
    [0, 60], age >= 0); extra features: reject; published by ...` (no ranges part when none is declared)."""
    signature = info.signature
    optional = [shown_name(f.name) + (f"={f.default:g}" if f.default is not None else "")
                for f in signature.features if not f.required]
    shown = f"{len(optional)} ({listed(optional, shown=True)})" if optional else "none"
    ranges = [_range(f) for f in signature.features if f.bounded]
    ranged = f"ranges: {len(ranges)} ({listed(ranges, shown=True)}); " if ranges else ""
    return (f"{info.name} {info.version}: requires {len(signature.required)} ({listed(signature.required)}); "
            f"optional: {shown}; {ranged}extra features: {signature.extra}; published by {info.instance or '?'}")


def _range(feature: FeatureSpec) -> str:
    """`mean_radius in [0, 60]`, `age >= 0` or `age <= 120`."""
    name = shown_name(feature.name)
    if feature.minimum is not None and feature.maximum is not None:
        return f"{name} in [{feature.minimum:g}, {feature.maximum:g}]"
    if feature.minimum is not None:
        return f"{name} >= {feature.minimum:g}"
    return f"{name} <= {feature.maximum:g}"


def print_contracts(settings: KafkaSettings, console: Console, scoring: Collection[str] = ()) -> None:
    """Every published contract: those of the models in `scoring` (the live table's) first, then
    those whose model sent no score in the table's window (a contract stays on the compacted topic
    after its model stopped, until a new one of that name replaces it)."""
    topic = settings.topics().models
    try:
        contracts = read_contracts(settings.librdkafka(), topic)
    except TopicMissing as exc:  # or the principal's to see: TopicRefused names the permission
        console.print(f"no input contracts: {exc}")
        return
    infos = contracts.held
    if not infos:
        console.print(f"no model has published its input contract on {topic}")
        return
    live = [info for _name, info in sorted(infos.items()) if info.name in scoring]
    silent = [info for _name, info in sorted(infos.items()) if info.name not in scoring]
    # Plain lines, not a second table: scripts read the live table above by its columns.
    if live:
        console.print(f"input contracts published on {topic}:", highlight=False)
        _print_lines(console, [contract_line(info) for info in live])
    if silent:
        console.print(f"published on {topic} by models not scoring now:", highlight=False)
        _print_lines(console, [f"{contract_line(info)}, at {format_ms(info.updated_at)}" for info in silent])
    if contracts.waiting:  # not held, so not checked by a gateway either
        console.print(f"published on {topic} and waiting for a place ({contracts.bounds}; a tombstone frees one):",
                      highlight=False)
        _print_lines(console, [listed(contracts.waiting)])


def _print_lines(console: Console, lines: list[str]) -> None:
    """Lines of what models published (anyone who may write the topic may write anything there):
    what a terminal would act on is escaped (a forged version set the window title, cleared the
    screen and wrote the clipboard; a review)."""
    for line in lines:
        console.print("  " + printable(line), highlight=False, markup=False, soft_wrap=True)
