"""The published input contracts, as `rendezvous models` shows them under its live table."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.table import Table

from services.core.errors import TopicMissing
from services.core.model_info import ModelInfo, read_model_infos
from services.core.settings import KafkaSettings
from services.core.signatures import listed


def contracts_table(infos: Mapping[str, ModelInfo], title: str) -> Table:
    """One row per model: version, required / optional features (with defaults), extras policy."""
    table = Table(title=title)
    for column in ("model", "version", "required", "optional (default)", "extra features", "published by"):
        table.add_column(column)
    for name, info in sorted(infos.items()):
        signature = info.signature
        optional = [f"{f.name}={f.default:g}" if f.default is not None else f.name
                    for f in signature.features if not f.required]
        table.add_row(name, info.version, f"{len(signature.required)}: {listed(signature.required)}",
                      f"{len(optional)}: {listed(optional)}" if optional else "-", signature.extra, info.instance)
    return table


def print_contracts(settings: KafkaSettings, console: Console) -> None:
    topic = settings.topics().models
    try:
        infos = read_model_infos(settings.librdkafka(), topic)
    except TopicMissing:
        console.print(f"no input contracts: topic {topic} is missing (create it with `rendezvous topics create`)")
        return
    if infos:
        console.print(contracts_table(infos, f"input contracts published on {topic}"))
    else:
        console.print(f"no model has published its input contract on {topic}")
