"""Records whose writer schema cannot be looked up yet wait for it; they are not dead-lettered.

A record framed with a schema-registry id this process has not met needs the registry to be
read. When the registry is down, or refuses for now (wire.py: 5xx, 401/403/408/429), that is no
fault of the record. Decoded by the handler, it failed like bad input and was dead-lettered: a
valid request went unscored and unanswered for a registry's passing outage, and an instance
re-reading the same records later would decide differently from the one that dead-lettered them.
(A record over its record type's lookups of the second, `LookupsSpent`, is not held: a flood of
made-up ids would hold its partition to that many records a second; errors.py.)

So the skeleton looks every unseen id of a batch up before its handler gets the batch. A record
whose lookup must be retried is held back with every later record of its partition: the
partition is paused and rewound to that record, and read again after `RETRY_S` (its records'
order is the join's contract, so nothing behind it goes first). Ids refused (the registry does
not know them, asked again after a minute; or they name no schema we read) are left to the handler's decode,
which dead-letters the record with the reason, as before.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from confluent_kafka import Message, TopicPartition
from prometheus_client import Counter

from services.core.codec import Codec, codec
from services.core.id_lookup import LoopWaits, loop_patience

log = logging.getLogger(__name__)

RETRY_S = 1.0  # a held partition is read again after this (the registry's outage is remembered 5 s: wire.py)

WAITING = Counter(
    "rdv_schema_waits_total",
    "Records held back (their partition paused and rewound to them) because their schema-registry id could not "
    "be looked up yet (the registry down, or refusing for now); each retry that holds it again counts again.",
    ["service", "topic"],
)

Key = tuple[str, int]  # (topic, partition)


class Pausable(Protocol):
    """What the wait needs of the consumer (services/core/kafka/consumer.py, Consumer)."""

    def pause(self, partitions: list[TopicPartition]) -> None: ...

    def rewind(self, start: TopicPartition) -> bool: ...

    def resume_at(self, partitions: list[TopicPartition], starts: list[TopicPartition]) -> Sequence[object]: ...


def first_waiting(messages: list[Message], unresolved: Callable[[Message], str | None]) -> dict[Key, tuple[int, str]]:
    """The partitions of `messages` with a record that must wait: (topic, partition) -> the offset
    of the first such record, and why (the records after it wait with it)."""
    held: dict[Key, tuple[int, str]] = {}
    for msg in messages:
        key = (msg.topic() or "", msg.partition() or 0)
        if key not in held:
            why = unresolved(msg)
            if why is not None:
                held[key] = (msg.offset() or 0, why)
    return held


def before(messages: list[Message], rewound: Mapping[Key, int]) -> list[Message]:
    """The records of `messages` that come before the offsets their partitions were rewound to."""
    return [m for m in messages if (m.offset() or 0) < rewound.get((m.topic() or "", m.partition() or 0), 1 << 63)]


class SchemaWait:
    """Holds back records whose schema id cannot be looked up yet (see the module's text)."""

    def __init__(self, service: str, records: Mapping[str, Codec], retry_s: float = RETRY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.service = service
        self._records = dict(records)
        self.retry_s = retry_s
        self._clock = clock
        self._held: dict[Key, tuple[int, float]] = {}  # (topic, partition) -> (its offset to read again, when)
        # The loop waits on the registry a tenth of its time at most; a record whose lookup is not
        # answered within that waits here, as for the registry's outage (id_lookup.py says why).
        self._patience = LoopWaits(clock=clock)

    @classmethod
    def of(cls, service: str, records: Mapping[str, str]) -> SchemaWait | None:
        """For the topics in `records` (topic -> the record type it carries) whose codecs look ids
        up in a registry (--schema-registry); None when none does: nothing can wait then."""
        looking = {topic: codec(name) for topic, name in records.items() if codec(name).looks_up_ids}
        return cls(service, looking) if looking else None

    def patience(self) -> contextlib.AbstractContextManager[None]:
        """The loop's registry lookups within its tenth of each second (id_lookup.py): its records'
        here, and those its handler's tick makes (a schedule framed by a new id, say)."""
        return loop_patience(self._patience)

    @property
    def held(self) -> set[Key]:
        return set(self._held)

    def admit(self, messages: list[Message], consumer: Pausable) -> list[Message]:
        """The records of `messages` the handler may have now; the partitions of the others are
        paused and rewound to their first record that waits."""
        with self.patience():
            held = first_waiting(messages, self._unresolved)
        if self._held:
            self._flowing(messages, held)
        if not held:
            return messages
        rewound = {key: offset for key, (offset, why) in held.items() if self._hold(consumer, key, offset, why)}
        return before(messages, rewound) if rewound else messages

    def _hold(self, consumer: Pausable, key: Key, offset: int, why: str) -> bool:
        topic, partition = key
        tp = TopicPartition(topic, partition, offset)
        consumer.pause([tp])
        if not consumer.rewind(tp):  # the records after it are read already: better handled than lost
            log.warning("%s: %s[%d]@%d waits for its schema (%s), but its partition could not be rewound: "
                        "handled now", self.service, topic, partition, offset, why)
            consumer.resume_at([TopicPartition(topic, partition)], [])
            return False
        if key not in self._held:
            log.warning("%s: %s[%d] waits at offset %d: %s; read again every %gs", self.service, topic,
                        partition, offset, why, self.retry_s)
        WAITING.labels(self.service, topic).inc()
        self._held[key] = (offset, self._clock() + self.retry_s)
        return True

    def resume_due(self, consumer: Pausable, kept_paused: Callable[[TopicPartition], bool]) -> None:
        """Read held partitions again once their time is up, unless the handler keeps them paused
        for its own reasons (`kept_paused`: it resumes them itself, from where they were rewound)."""
        if not self._held:
            return
        now = self._clock()
        due = [(key, offset) for key, (offset, at) in self._held.items() if at <= now]
        for (topic, partition), offset in due:
            del self._held[(topic, partition)]
            tp = TopicPartition(topic, partition, offset)
            if not kept_paused(tp):
                consumer.resume_at([TopicPartition(topic, partition)], [tp])

    def forget(self, partitions: Iterable[TopicPartition]) -> list[TopicPartition]:
        """Released partitions: their next owner reads them from their committed offsets. Returns
        those that were held: librdkafka keeps a partition paused across its release and a new
        assignment (librdkafka#1849), so the caller resumes them, or one given back to this
        member would never be read again."""
        return [TopicPartition(tp.topic, tp.partition) for tp in partitions
                if self._held.pop((tp.topic, tp.partition), None) is not None]

    def _flowing(self, messages: list[Message], held: Mapping[Key, tuple[int, str]]) -> None:
        """Forget the holds of partitions whose records came through (the handler resumed one it had
        paused too, and the schema was found by then): seeking back when the hold's time is up
        would read them twice."""
        for msg in messages:
            key = (msg.topic() or "", msg.partition() or 0)
            if key in self._held and key not in held:
                del self._held[key]

    def clear(self) -> list[TopicPartition]:
        """Forget every hold (a rewind reads everything again); returns the partitions to resume."""
        held = [TopicPartition(topic, partition) for topic, partition in self._held]
        self._held.clear()
        return held

    def _unresolved(self, msg: Message) -> str | None:
        record = self._records.get(msg.topic() or "")
        return record.unresolved(msg.value()) if record is not None else None
