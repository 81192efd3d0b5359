"""Which features each model reads: the input side of the model metadata, and the 400 for a feature
no model knows.

`Signatures` is all the gateway needs. Two implementations:
- `PublishedSignatures`: the compacted topic where each model worker publishes its input contract
  (one `ModelInfo` record per model name, `schemas/model_info.avsc`), read to its end at start and
  again every `refresh_s`; used when that schema ships and the topic exists;
- `FixedSignatures`: one feature list for every model (the demo models' features, which the CLI
  passes in), known only by name, none required.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from services.core.codec import codec, schemas_dir
from services.core.errors import BadInput, BrokerError, RendezvousError
from services.core.kafka import Consumer, partition_counts

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    name: str
    required: bool = False
    datatype: str = "FP64"


class Signatures(Protocol):
    def features(self, model: str) -> list[FeatureSpec] | None:
        """The model's input features in its column order; None: not known."""

    def models(self) -> dict[str, str]:
        """Published models and their versions (empty when nothing is published)."""


class FixedSignatures:
    """The same features for any model (names only: nothing is required)."""

    def __init__(self, names: Sequence[str]):
        self._specs = [FeatureSpec(name) for name in names]

    def features(self, model: str) -> list[FeatureSpec] | None:
        return list(self._specs) if self._specs else None

    def models(self) -> dict[str, str]:
        return {}


class PublishedSignatures:
    """Input contracts from the models topic, refreshed in the background."""

    def __init__(self, config: Mapping[str, Any], topic: str, refresh_s: float = 30.0):
        self._config = {**config, "group.id": f"rdv-gateway-models-{uuid.uuid4().hex}",
                        "enable.partition.eof": False}
        self._topic = topic
        self._specs: dict[str, tuple[str, list[FeatureSpec]]] = {}
        self._stop = threading.Event()
        self.reload()
        self._thread = threading.Thread(target=self._refresh, args=(refresh_s,), name="rdv-gateway-models",
                                        daemon=True)
        self._thread.start()

    def features(self, model: str) -> list[FeatureSpec] | None:
        entry = self._specs.get(model)
        return None if entry is None else list(entry[1])

    def models(self) -> dict[str, str]:
        return {name: version for name, (version, _specs) in self._specs.items()}

    def reload(self) -> None:
        """Read the topic to its end; the newest record per model wins (as compaction keeps it)."""
        found: dict[str, tuple[str, list[FeatureSpec]]] = {}
        reader = codec("model_info")
        for value in _read_to_end(self._config, self._topic):
            try:
                record = reader.decode(value)
                found[record["name"]] = (record["version"], [
                    FeatureSpec(f["name"], bool(f.get("required", False))) for f in record["features"]
                ])
            except (BadInput, KeyError, TypeError) as err:
                log.warning("skipping an unusable record on %s: %s", self._topic, err)
        self._specs = found

    def _refresh(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.reload()
            except (RendezvousError, KafkaException) as err:
                log.warning("could not refresh the model signatures from %s: %s", self._topic, err)

    def close(self) -> None:
        self._stop.set()


def _read_to_end(config: Mapping[str, Any], topic: str, timeout_s: float = 10.0) -> list[bytes | None]:
    partitions = partition_counts(config, [topic])[topic]
    consumer = Consumer(config)
    try:
        ends = {}
        for p in range(partitions):
            _low, high = consumer.native.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > 0:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        values: list[bytes | None] = []
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise BrokerError(f"could not read {topic} to its end within {timeout_s:.0f}s")
            for msg in consumer.consume(500, 0.2):
                values.append(msg.value())
                if (msg.offset() or 0) + 1 >= ends.get(msg.partition() or 0, 0):
                    ends.pop(msg.partition() or 0, None)
            done = [tp.partition for tp in consumer.native.position([TopicPartition(topic, p) for p in ends])
                    if tp.offset >= ends[tp.partition]]
            for p in done:
                ends.pop(p, None)
        return values
    finally:
        consumer.close()


def signatures_for(config: Mapping[str, Any], topic: str, fallback: Sequence[str]) -> Signatures:
    """Published contracts when the deployment has them, else the fixed fallback list."""
    if not (schemas_dir() / "model_info.avsc").is_file():
        log.info("no model_info schema: model metadata lists the fallback features")
        return FixedSignatures(fallback)
    try:
        return PublishedSignatures(config, topic)
    except RendezvousError as err:
        log.info("no published model signatures (%s): model metadata lists the fallback features", err)
        return FixedSignatures(fallback)
