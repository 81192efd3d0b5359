"""What the service skeleton does with partitions it is assigned (services/core/service.py
`_on_assign`, `_latest_starts`), driven directly: a consumer that records what it is asked."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from services.core import service as skeleton
from services.core.service import SimpleHandler, StreamService, StreamSpec


class Recording:
    """A consumer's assignment calls as the skeleton makes them; `committed` answers from `known`
    (a partition absent from it: never committed; None: the lookup failed for it)."""

    def __init__(self, known: dict[int, int | None] | None = None) -> None:
        self.known = known or {}
        self.assigned: list[tuple[str, int, int]] = []
        self.paused: set[tuple[str, int]] = set()
        self.commits: list[tuple[str, int, int]] = []
        self.native = SimpleNamespace(get_watermark_offsets=lambda *_args, **_kwargs: (0, 5000))

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned += [(tp.topic, tp.partition, tp.offset) for tp in partitions]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def commit(self, offsets: list[TopicPartition]) -> None:
        self.commits += [(tp.topic, tp.partition, tp.offset) for tp in offsets]

    def committed(self, partitions: list[TopicPartition], timeout: float = 10) -> list[TopicPartition]:
        out = []
        for tp in partitions:
            offset = self.known.get(tp.partition, -1001)
            answer = TopicPartition(tp.topic, tp.partition, -1001 if offset is None else offset)
            if offset is None:  # what confluent-kafka gives for a partition whose lookup failed
                answer = SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=-1001,
                                         error=KafkaError(KafkaError.UNSTABLE_OFFSET_COMMIT))
            out.append(answer)
        return out


def service(consumer: Recording, draining: bool = False, **spec: Any) -> StreamService:
    made = StreamService(StreamSpec(name="svc", config={}, subscription=["in", "side"], group_id="g",
                                    intake=("in",), **spec), SimpleHandler())
    made.ctx = SimpleNamespace(consumer=consumer, draining=draining)  # type: ignore[assignment]
    return made


def test_partitions_assigned_during_the_drain_are_paused_as_the_others_were() -> None:
    """A rebalance during the SIGTERM drain (another replica rolling) brought partitions read
    unpaused: the drain never emptied and always ran out its timeout (a review)."""
    consumer = Recording()
    service(consumer, draining=True)._on_assign(None, [TopicPartition("in", 3), TopicPartition("side", 3)])
    assert consumer.paused == {("in", 3)}  # the intake only: the others are read as ever
    consumer = Recording()
    service(consumer)._on_assign(None, [TopicPartition("in", 3)])
    assert consumer.paused == set()


def test_a_partition_whose_committed_offset_could_not_be_read_is_not_started_at_its_end() -> None:
    """Taken for 'never committed', it was started at its end and that end committed at once over
    the group's offset: everything between was skipped (a review)."""
    consumer = Recording({0: None, 1: 1200})  # 0: the lookup failed; 1: committed; 2: never
    made = service(consumer, consumer_config={"auto.offset.reset": "latest"})
    made._on_assign(None, [TopicPartition("in", p) for p in range(3)])
    assert consumer.assigned == [("in", 0, -1001), ("in", 1, -1001), ("in", 2, 5000)]
    assert consumer.commits == [("in", 2, 5000)]  # only the start of the one never committed
    assert skeleton._latest_starts(consumer, [TopicPartition("in", 0)])[0].offset == -1001  # type: ignore[arg-type]


def test_a_kafka_config_key_the_service_sets_itself_is_refused_unless_it_agrees() -> None:
    """The service's value won without a word: session.timeout.ms=30000 ran at 6000,
    isolation.level=read_uncommitted at read_committed (a review)."""
    import pytest

    from services.core.errors import ConfigError

    def spec(**config: str) -> StreamSpec:
        own = {"session.timeout.ms": 6000, "isolation.level": "read_committed"}
        return StreamSpec(name="rendezvous", config={"bootstrap.servers": "b:9092", **config}, subscription=["in"],
                          group_id="g", consumer_config=own, producer_config={"linger.ms": 20})
    for key, value, flag in (("session.timeout.ms", "30000", "--session-timeout-ms"),
                             ("isolation.level", "read_uncommitted", "its processing"),
                             ("linger.ms", "5", "--output-linger-ms")):
        with pytest.raises(ConfigError, match=rf"^--kafka-config {key}: rendezvous sets it itself, from {flag}"):
            StreamService(spec(**{key: value}), SimpleHandler())
    StreamService(spec(**{"session.timeout.ms": "6000", "fetch.wait.max.ms": "10"}), SimpleHandler())  # agrees
