"""Which features each model reads: the input side of the model metadata, and the 400 for a feature
no model knows.

`Signatures` is all the gateway needs. Two implementations:
- `PublishedSignatures`: the compacted topic where each model worker publishes its input contract
  (services/core/model_info.py), read to its end at start, then followed (every `refresh_s`);
- `FixedSignatures`: one feature list for every model (the demo models' features, which the CLI
  passes in), known only by name, none required.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaException

from services.core.errors import RendezvousError
from services.core.model_info import ModelInfo, ModelInfoFeed
from services.core.signatures import outside_range

log = logging.getLogger(__name__)

# How often the models topic is read again from its beginning by a new consumer (between, one
# consumer follows it): partitions added, or the topic made again, are seen within this.
REREAD_S = 300.0
# A contract asked for and not known (`want`) is looked for this soon, and no more often.
WANTED_S = 0.5


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    name: str
    required: bool = False
    datatype: str = "FP64"
    minimum: float | None = None  # the range the model's contract declares (inclusive), if any
    maximum: float | None = None

    def outside(self, value: float) -> str | None:
        """How `value` is outside the declared range ("above its maximum 28.11"), or None."""
        return outside_range(float(value), self.minimum, self.maximum)


@dataclass(frozen=True, slots=True)
class Contract:
    """A model's input contract as the gateway holds calls to it."""

    features: tuple[FeatureSpec, ...]
    ignores_extra: bool = False  # extra="ignore": a feature outside the list is scored past, not refused
    names: frozenset[str] = field(init=False)  # built once: read by every call's check

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(f.name for f in self.features))


class Signatures(Protocol):
    def features(self, model: str) -> list[FeatureSpec] | None:
        """The model's input features in its column order; None: not known."""

    def models(self) -> dict[str, str]:
        """Published models and their versions (empty when nothing is published)."""

    def want(self) -> None:
        """A model's features were asked for and are not known: look for them again soon."""

    def contract(self, model: str) -> Contract | None:
        """The model's features and its policy for others, read together; None: not known."""


class FixedSignatures:
    """The same features for any model (names only: nothing is required)."""

    def __init__(self, names: Sequence[str]):
        self._specs = [FeatureSpec(name) for name in names]
        self._contract = Contract(tuple(self._specs)) if self._specs else None  # built once, asked per call

    def features(self, model: str) -> list[FeatureSpec] | None:
        return list(self._specs) if self._specs else None

    def models(self) -> dict[str, str]:
        return {}

    def want(self) -> None:
        """Nothing to look for: the list is all there is."""

    def contract(self, model: str) -> Contract | None:
        return self._contract


class PublishedSignatures:
    """Input contracts from the models topic, followed in the background by one consumer."""

    def __init__(self, config: Mapping[str, Any], topic: str, refresh_s: float = 5.0):
        self._config = dict(config)
        self._topic = topic
        self._feed = ModelInfoFeed(config, topic)
        self._specs = _specs(self._feed.infos)
        self._built_at = self._feed.changes  # the feed's count of changes `_specs` was built at
        self._stop = threading.Event()
        self._wanted = threading.Event()
        self._thread = threading.Thread(target=self._refresh, args=(refresh_s,), name="rdv-gateway-models",
                                        daemon=True)
        self._thread.start()

    def features(self, model: str) -> list[FeatureSpec] | None:
        entry = self._specs.get(model)
        return None if entry is None else list(entry[1].features)

    def models(self) -> dict[str, str]:
        return {name: version for name, (version, _contract) in self._specs.items()}

    def contract(self, model: str) -> Contract | None:
        entry = self._specs.get(model)
        return None if entry is None else entry[1]

    def want(self) -> None:
        """Read on within WANTED_S, not at the next `refresh_s`: contracts the workers published
        after the gateway's first read were unknown for up to 5 s, and calls missing a feature
        went to every model and came back 502 'every model failed' (UNAVAILABLE over gRPC, which
        callers retry) instead of 400 naming it (a review)."""
        self._wanted.set()

    def _refresh(self, every_s: float) -> None:
        read_at = time.monotonic()
        while True:
            wanted = self._wanted.wait(every_s)
            # Wanted, at most every WANTED_S: calls ask on every target built without a contract.
            if self._stop.wait(WANTED_S if wanted else 0):
                return
            self._wanted.clear()
            try:
                if time.monotonic() - read_at >= REREAD_S:
                    self._reread()
                    read_at = time.monotonic()
                self._rebuild_if_changed(self._feed.refresh())
            except (RendezvousError, KafkaException) as err:
                log.warning("could not refresh the model signatures from %s: %s", self._topic, err)

    def _rebuild_if_changed(self, infos: Mapping[str, ModelInfo]) -> None:
        """Built at every refresh, 16 forged contracts of 76,000 features each took 2 s of the
        gateway's CPU every 5 s, changed or not (a review)."""
        if self._feed.changes != self._built_at:
            self._built_at = self._feed.changes
            self._specs = _specs(infos)

    def _reread(self) -> None:
        """Follow the topic with a new consumer from its beginning: one that follows it for good
        never sees partitions added later, nor a topic deleted and created again."""
        feed = ModelInfoFeed(self._config, self._topic)
        self._feed, old = feed, self._feed
        self._built_at = -1  # a new feed counts from 0: built on once
        old.close()

    def close(self) -> None:
        self._stop.set()
        self._wanted.set()  # ends the thread's wait
        self._thread.join()  # it may be reading: the consumer is closed after it
        self._feed.close()


def _specs(infos: Mapping[str, ModelInfo]) -> dict[str, tuple[str, Contract]]:
    """Each model's version and contract (the newest record per model wins, as compaction keeps it)."""
    return {name: (info.version, Contract(tuple(FeatureSpec(f.name, f.required, minimum=f.minimum, maximum=f.maximum)
                                                for f in info.signature.features),
                                          info.signature.extra == "ignore"))
            for name, info in infos.items()}


def signatures_for(config: Mapping[str, Any], topic: str, fallback: Sequence[str]) -> Signatures:
    """Published contracts when the deployment has them, else the fixed fallback list."""
    try:
        return PublishedSignatures(config, topic)
    except RendezvousError as err:
        log.info("no published model signatures (%s): model metadata lists the fallback features", err)
        return FixedSignatures(fallback)
