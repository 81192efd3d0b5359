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

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(topic, partition) for topic, partition, _ in self.assigned]

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
                          group_id="g", consumer_config=own, producer_config={"linger.ms": 20},
                          processing="exactly-once", transactional_id="t")
    for key, value, flag in (("session.timeout.ms", "30000", "--session-timeout-ms"),
                             ("isolation.level", "read_uncommitted", "its processing"),
                             ("linger.ms", "5", "--output-linger-ms"),
                             ("transaction.timeout.ms", "1000", "--transaction-timeout-ms")):
        with pytest.raises(ConfigError, match=rf"^--kafka-config {key}: rendezvous sets it itself, from {flag}"):
            StreamService(spec(**{key: value}), SimpleHandler())
    StreamService(spec(**{"session.timeout.ms": "6000", "fetch.wait.max.ms": "10",  # agrees
                           "transaction.timeout.ms": "10000"}), SimpleHandler())


class _Outputs:
    """A commit lane whose commit fails as `fails` and whose abort fails as `abort_fails`."""

    transactional = True

    def __init__(self, fails: Exception | None = None, abort_fails: Exception | None = None) -> None:
        self.fails, self.abort_fails, self.aborts = fails, abort_fails, 0

    def commit_now(self, *_args: Any) -> bool:
        if self.fails is not None:
            raise self.fails
        return True

    def abort_now(self) -> None:
        self.aborts += 1
        if self.abort_fails is not None:
            raise self.abort_fails

    def discard_outcomes(self) -> None:
        return None


def test_a_revoke_whose_commit_fails_unabortably_aborts_what_the_transaction_holds() -> None:
    """Logged only, the revoked partitions' outputs stayed in the open transaction and were
    committed later by this instance, beside the new owner's (a review)."""
    from services.core.errors import KafkaOperationError

    made = service(Recording(), processing="exactly-once", transactional_id="t")
    outputs = _Outputs(fails=KafkaOperationError("transaction failed: _STATE"))
    made.ctx.outputs = outputs  # type: ignore[union-attr]
    made._group_metadata = lambda: None  # type: ignore[method-assign]
    made._on_revoke(None, [TopicPartition("in", 0)])
    assert outputs.aborts == 1


def test_an_abort_that_fails_after_a_revoke_s_aborted_commit_stops_the_service_and_commits_nothing_after() -> None:
    """A commit the lane aborted (TransactionAborted) is followed by an abort of what this instance
    produced since; that abort's failure was logged as a failed commit and the service went on,
    the open transaction holding outputs of the revoked partitions, to be committed by a later
    commit beside the new owner's. Now as at a loss: nothing is committed after it, and it stops."""
    from services.core.commits import TransactionAborted
    from services.core.errors import KafkaOperationError

    made = service(Recording(), processing="exactly-once", transactional_id="t")
    failure = KafkaOperationError("abort_transaction failed: _STATE")
    outputs = _Outputs(fails=TransactionAborted("transaction aborted: fenced"), abort_fails=failure)
    made.ctx.outputs = outputs  # type: ignore[union-attr]
    made._group_metadata = lambda: None  # type: ignore[method-assign]
    made._on_revoke(None, [TopicPartition("in", 0)])
    assert outputs.aborts == 1
    assert made._abort_failed is failure and made._outputs_void is failure
    outputs.fails = AssertionError("committed after a failed abort")  # commit_now must not reach the lane
    made.commit_now()


def test_a_drain_whose_commit_is_aborted_and_whose_abort_fails_ends_the_run_with_that_failure() -> None:
    """It escaped the drain before the abort's failures were handled in one place: the run must
    still end with it, not as a clean stop."""
    import pytest

    from services.core.commits import TransactionAborted
    from services.core.errors import KafkaOperationError

    made = service(Recording(), processing="exactly-once", transactional_id="t")
    failure = KafkaOperationError("abort_transaction failed: _STATE")
    made.ctx.outputs = _Outputs(fails=TransactionAborted("transaction aborted: fenced"),  # type: ignore[union-attr]
                                abort_fails=failure)
    made._group_metadata = lambda: None  # type: ignore[method-assign]
    with pytest.raises(KafkaOperationError) as raised:
        made._drain()
    assert raised.value is failure


def test_an_abort_that_fails_when_partitions_are_lost_stops_the_service_and_commits_nothing_after() -> None:
    """Only TransactionAborted was caught: any other failure of the abort escaped librdkafka's
    callback. Now the transaction, which may hold the lost partitions' outputs, is never committed:
    every later commit is refused and the loop stops with the failure (a restart fences it)."""
    from services.core.errors import KafkaOperationError

    made = service(Recording(), processing="exactly-once", transactional_id="t")
    failure = KafkaOperationError("abort_transaction failed: _STATE")
    outputs = _Outputs(abort_fails=failure)
    made.ctx.outputs = outputs  # type: ignore[union-attr]
    made._on_lost(None, [TopicPartition("in", 0)])
    assert outputs.aborts == 1 and not made._assigned
    assert made._abort_failed is failure and made._outputs_void is failure
    outputs.fails = AssertionError("committed after a failed abort")  # commit_now must not reach the lane
    made.commit_now()
