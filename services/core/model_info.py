"""Published model metadata: each model's input contract on the compacted `models` topic.

Every model worker writes one `ModelInfo` record (`schemas/model_info.avsc`) keyed by its model
name when it starts; compaction keeps the latest per name. Anyone may read the topic to its end
to learn which models serve and what they accept: `rendezvous models`, the warning of
`rendezvous send` about features no model knows, and a gateway's model-metadata endpoint.

    infos = read_model_infos(config, topics.models)       # {name: ModelInfo}
    unknown = features_no_model_knows(infos.values(), row)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from services.core.codec import codec
from services.core.errors import BadInput, RendezvousError, TopicMissing
from services.core.kafka import Producer, partition_counts
from services.core.model_names import MODEL_NAME
from services.core.rate_limit import OncePerPeriod
from services.core.signatures import FeatureSpec, Signature
from services.core.topic_range import read_spans
from services.core.topic_tail import TopicTail

__all__ = [
    "ModelInfo",
    "decode_model_info",
    "encode_model_info",
    "features_no_model_knows",
    "publish_model_info",
    "read_contracts",
    "read_model_infos",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """One model's published contract (the `signature` carries the extra-features policy)."""

    name: str
    version: str
    signature: Signature
    instance: str = ""
    updated_at: int = 0

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "features": self.signature.to_records(),
            "extra_features": self.signature.extra,
            "instance": self.instance,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ModelInfo:
        features = tuple(
            FeatureSpec(f["name"], f["required"], f["default"], f["type"], f["minimum"], f["maximum"])
            for f in record["features"]
        )
        return cls(record["name"], record["version"], Signature(features, record["extra_features"]),
                   record["instance"], record["updated_at"])


def encode_model_info(info: ModelInfo) -> bytes:
    return codec("model_info").encode(info.to_record())


def decode_model_info(value: bytes | None) -> ModelInfo:
    """Decode one record; raise `BadInput` when it is not a usable ModelInfo."""
    record = codec("model_info").decode(value)
    try:
        return ModelInfo.from_record(record)
    except RendezvousError as err:  # a record that breaks the signature rules (e.g. forged)
        raise BadInput(f"model_info for {record.get('name')!r} is not a valid contract: {err}") from None


def publish_model_info(config: Mapping[str, Any], topic: str, info: ModelInfo, timeout_s: float = 15.0) -> bool:
    """Write `info` keyed by its name and wait for the broker's acknowledgement.

    Publishing is advice for clients, not a condition of scoring: a missing topic (a deployment
    created before it existed) or a refused write is logged and reported as False.
    """
    try:
        partition_counts(config, [topic], timeout=timeout_s)
    except TopicMissing as exc:  # or the principal's to see: TopicRefused names the permission
        log.warning("model %s: its input contract is not published: %s", info.name, exc)
        return False
    producer = Producer(config)
    try:
        producer.produce(topic, encode_model_info(info), key=info.name.encode())
        producer.flush(timeout_s)
    except RendezvousError as err:
        log.warning("model %s: publishing its input contract to %s failed: %s", info.name, topic, err)
        return False
    finally:
        producer.close(timeout=1.0)
    return True


def read_model_infos(config: Mapping[str, Any], topic: str, timeout_s: float = 30.0) -> dict[str, ModelInfo]:
    """The latest ModelInfo per model name: the topic read to its end as of now.

    A tombstone (null value) removes a name; an undecodable record is skipped with a warning.
    """
    return read_contracts(config, topic, timeout_s).held


def read_contracts(config: Mapping[str, Any], topic: str, timeout_s: float = 30.0) -> Contracts:
    """The contracts the topic holds as of now, and those waiting for a place."""
    contracts = Contracts()
    for msg in read_spans(config, topic, timeout_s=timeout_s):
        contracts.apply(msg)
    return contracts


class ModelInfoFeed:
    """The latest ModelInfo per model name, followed by one consumer for the process's life: the
    topic read to its end at start, then on from there at each `refresh` (as `read_model_infos`
    reads it)."""

    def __init__(self, config: Mapping[str, Any], topic: str, timeout_s: float = 10.0):
        self._tail = TopicTail(config, topic, "models")
        self._contracts = Contracts()
        self.infos = self._contracts.held
        try:
            for msg in self._tail.read_to_end(timeout_s):
                self._contracts.apply(msg)
        except BaseException:
            self._tail.close()
            raise

    def refresh(self, most: int = 10_000) -> dict[str, ModelInfo]:
        """The infos with the records that came since the last call (at most about `most` of
        them: a caller that stops waits for no flood)."""
        read = 0
        while read < most and (batch := self._tail.poll()):
            for msg in batch:
                self._contracts.apply(msg)
            read += len(batch)
        return self.infos

    @property
    def changes(self) -> int:
        """Counted up as the infos change."""
        return self._contracts.changes

    def close(self) -> None:
        self._tail.close()


# Contracts kept at most: anyone who may write the topic may write any number of names (20,000
# held 30 MB and made one 404 of the gateway list them all, 20 MB, 32 ms on its event loop; a review).
MAX_CONTRACTS = 1_000
# And their encoded bytes at most: a forged contract of 1 MB decodes to ~12 MB, so 1,000 of them
# could make every gateway hold ~12 GB (a review). 16 KiB each on average: a thousand models of a
# thousand features; a model of 100,000 features (~1.5 MB) still has its place.
MAX_CONTRACT_BYTES = 16 * 1024 * 1024
# Contracts past those bounds waiting for a place, at most: a tenth more memory, not twice as much,
# and room for a cleanup's legitimate ones.
MAX_WAITING = MAX_CONTRACTS // 10
MAX_WAITING_BYTES = MAX_CONTRACT_BYTES // 10
_SKIPPED = OncePerPeriod[str](60.0)  # a line per reason a minute, with the count held back


class _Shelf:
    """Contracts by name in the order they came, bounded in number and in encoded bytes."""

    def __init__(self, most: int, most_bytes: int) -> None:
        self.infos: dict[str, ModelInfo] = {}
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self._most, self._most_bytes = most, most_bytes
        self.changes = 0  # counted up at every put and pop: a reader of `infos` builds on them again

    def fits(self, name: str, size: int) -> bool:
        """Whether `name`'s contract of `size` bytes would fit, in place of its own if it has one."""
        own = self._sizes.get(name)
        count = len(self.infos) if own is None else len(self.infos) - 1
        return count < self._most and self._bytes - (own or 0) + size <= self._most_bytes

    def put(self, info: ModelInfo, size: int) -> None:
        """A name already here keeps its place in the order."""
        self._bytes += size - self._sizes.get(info.name, 0)
        self._sizes[info.name] = size
        self.infos[info.name] = info
        self.changes += 1

    def entries(self) -> list[tuple[ModelInfo, int]]:
        """Each contract and its size, in the order they came."""
        return [(info, self._sizes[name]) for name, info in self.infos.items()]

    def pop(self, name: str) -> bool:
        """Whether `name` was here."""
        if self.infos.pop(name, None) is None:
            return False
        self._bytes -= self._sizes.pop(name)
        self.changes += 1
        return True


class Contracts:
    """The newest contract of each model name, read from the models topic in order: MAX_CONTRACTS
    of them held at most, MAX_CONTRACT_BYTES encoded. A contract past that waits, in the topic's
    order (MAX_WAITING and MAX_WAITING_BYTES at most), for a place a tombstone frees: skipped for
    good, it waited for its worker's restart, a re-read applying the topic in the same order (a
    review). A model's new contract that does not fit where its old one was replaces it in the line
    (an old contract would refuse what the model now takes)."""

    def __init__(self) -> None:
        self._held = _Shelf(MAX_CONTRACTS, MAX_CONTRACT_BYTES)
        self._waiting = _Shelf(MAX_WAITING, MAX_WAITING_BYTES)
        self.held = self._held.infos  # the same dict for good: a feed's readers keep it

    @property
    def changes(self) -> int:
        """Counted up as the contracts held change (those waiting are none of a reader's: one going
        to wait rebuilt every gateway's lists; a review)."""
        return self._held.changes

    @property
    def bounds(self) -> str:
        """What may be held: `1000 models, 16 MiB encoded`."""
        return _bounds(MAX_CONTRACTS, MAX_CONTRACT_BYTES)

    @property
    def waiting(self) -> list[str]:
        """The names waiting for a place, the first to get one first."""
        return list(self._waiting.infos)

    def apply(self, msg: Message) -> None:
        """One record: a model's newest info, or a tombstone removing it. A contract that fits
        nowhere is not decoded (a forged one of 1 MB took 0.3 s of CPU; a review)."""
        key = (msg.key() or b"").decode("utf-8", errors="replace")
        value = msg.value()
        if value is None:
            self._waiting.pop(key)
            self._drop_held(key)
            return
        size = len(value)
        if not self._held.fits(key, size) and not self._waiting.fits(key, size):
            self._waiting.pop(key)
            self._drop_held(key)  # an earlier contract would refuse what the model now takes
            _skip(msg, "dropped", f"{key[:120]!r}'s contract of {size:,} bytes fits neither among those held "
                               f"({self.bounds}) nor among those waiting for a place "
                               f"({_bounds(MAX_WAITING, MAX_WAITING_BYTES)}): skipped, and its earlier one dropped")
            return
        info = _contract(msg, key)  # named `key`, or None
        if info is None:
            return
        if self._held.fits(key, size):
            self._waiting.pop(key)
            self._held.put(info, size)
            self._promote()  # smaller than the contract it replaces: room for one waiting, maybe
            return
        self._waiting.put(info, size)  # its newest contract, its place in line kept
        _skip(msg, "full", f"the contracts held are at their bound ({self.bounds}): {key!r} waits for a place")
        self._drop_held(key)

    def _drop_held(self, name: str) -> None:
        if self._held.pop(name):
            self._promote()

    def _promote(self) -> None:
        """Held in the order they came: those waiting that fit now."""
        for info, size in self._waiting.entries():
            if self._held.fits(info.name, size):
                self._waiting.pop(info.name)
                self._held.put(info, size)
                log.info("model %s has a contract now: a place among those held is free", info.name)


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def _bounds(most: int, most_bytes: int) -> str:
    return f"{most} models, {_mib(most_bytes)} encoded"


def _contract(msg: Message, key: str) -> ModelInfo | None:
    """The info a record holds, None (said) if it holds none to apply. A record keyed otherwise
    than the model it names is skipped: kept by its name, a forged one outlived every tombstone
    of that name, compaction keeping it for good (a review)."""
    try:
        info = decode_model_info(msg.value() or b"")
    except BadInput as err:
        _skip(msg, "undecodable", str(err))
        return None
    if info.name != key:
        _skip(msg, "keyed", f"it is keyed {key[:120]!r} but names model {info.name[:120]!r}: a contract is keyed by "
                            "its model's name")
    elif not MODEL_NAME.fullmatch(info.name):
        _skip(msg, "named", f"{info.name[:120]!r} is no model name (letters, digits, '.', '_' and '-', at most 100)")
    else:
        return info
    return None


def _skip(msg: Message, kind: str, reason: str) -> None:
    """A record left out, said at most once a minute per kind (a flood of them is one line)."""
    held = _SKIPPED.passes(kind)
    if held is not None:
        log.warning("skipping a record of %s at offset %s: %s%s", msg.topic(), msg.offset(), reason, held.repeated())


def features_no_model_knows(infos: Iterable[ModelInfo], row: Mapping[str, Any]) -> list[str]:
    """The features of `row` that no published model reads (empty when nothing is published)."""
    known: set[str] = set()
    any_published = False
    for info in infos:
        any_published = True
        known.update(info.signature.names)
    return [name for name in row if name not in known] if any_published else []
