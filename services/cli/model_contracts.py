"""The published input contracts, as `rendezvous models` prints them under its live table."""

from __future__ import annotations

from rich.console import Console

from services.core.errors import TopicMissing
from services.core.model_info import ModelInfo, read_model_infos
from services.core.settings import KafkaSettings
from services.core.signatures import listed


def contract_line(info: ModelInfo) -> str:
    """`champion logreg-1: requires 30 (mean_radius, ...); optional: none; extra features: reject`."""
    signature = info.signature
    optional = [f"{f.name}={f.default:g}" if f.default is not None else f.name
                for f in signature.features if not f.required]
    shown = f"{len(optional)} ({listed(optional)})" if optional else "none"
    return (f"{info.name} {info.version}: requires {len(signature.required)} ({listed(signature.required)}); "
            f"optional: {shown}; extra features: {signature.extra}; published by {info.instance or '?'}")


def print_contracts(settings: KafkaSettings, console: Console) -> None:
    topic = settings.topics().models
    try:
        infos = read_model_infos(settings.librdkafka(), topic)
    except TopicMissing:
        console.print(f"no input contracts: topic {topic} is missing (create it with `rendezvous topics create`)")
        return
    if infos:
        # Plain lines, not a second table: scripts read the live table above by its columns.
        console.print(f"input contracts published on {topic}:", highlight=False)
        for _name, info in sorted(infos.items()):
            console.print("  " + contract_line(info), highlight=False, markup=False, soft_wrap=True)
    else:
        console.print(f"no model has published its input contract on {topic}")
