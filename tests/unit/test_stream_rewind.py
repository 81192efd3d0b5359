"""The skeleton's rewind after an aborted transaction (services/core/service.py), with stand-ins
for the Kafka clients: an abort that itself fails in a broker outage must still re-read; and
after outputs refused for good, nothing is committed on the way out."""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from services.core.commits import CommitLane, CommitOutcome, ExactlyOnce, TransactionAborted
from services.core.errors import KafkaOperationError, RefusedForGood
from services.core.health import BrokerHealth
from services.core.service import (
    Context,
    SimpleHandler,
    StreamHandler,
    StreamService,
    StreamSpec,
    max_poll_interval_s,
)
from tests.unit.test_commit_lane import RecordingCommitter


class UnreachableTransactions:
    """A transactional client whose aborts time out (the coordinator is away)."""

    def __init__(self, calls: list[str]):
        self.calls = calls

    def abort_transaction(self, _timeout: float) -> None:
        self.calls.append("abort")
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "broker away", retriable=True))

    def init_transactions(self, _timeout: float) -> None:
        self.calls.append("init")

    def begin_transaction(self) -> None:
        self.calls.append("begin")


class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.native = UnreachableTransactions(self.calls)

    def renew(self) -> None:
        self.calls.append("renew")
        self.native = UnreachableTransactions(self.calls)

    def discard_failures(self) -> None:
        return None


class Consumer:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.native = self

    def assignment(self) -> list[TopicPartition]:
        return []

    def unsubscribe(self) -> None:
        self.calls.append("unsubscribe")

    def subscribe(self, *_args: Any, **_kwargs: Any) -> None:
        self.calls.append("subscribe")


class Handler(StreamHandler):
    def __init__(self) -> None:
        super().__init__()
        self.rewound = 0

    def finished_offsets(self) -> list[TopicPartition]:
        return [TopicPartition("in", 0, 10)]  # ten inputs handled, their outputs refused

    def on_rewind(self) -> None:
        self.rewound += 1


def test_an_abort_that_fails_during_a_rewind_replaces_the_producer_and_still_re_reads() -> None:
    """It escaped the loop and stopped the service, the handler never told to forget its work."""
    health, producer, consumer, handler = BrokerHealth(), Producer(), Consumer(), Handler()
    committer = ExactlyOnce(producer, consumer, lambda _what: None, health, retry_s=0.01)  # type: ignore[arg-type]
    lane = CommitLane(committer, producer, background=False)  # type: ignore[arg-type]
    spec = StreamSpec(name="svc", config={}, subscription=["in"], group_id="g", processing="exactly-once",
                      transactional_id="t")
    service = StreamService(spec, handler)
    service.ctx = Context(spec, {}, health, consumer, producer, lane, ExitStack())  # type: ignore[arg-type]
    lane._outcomes.append(CommitOutcome([], False, TransactionAborted("transaction aborted: coordinator away")))

    service._settle_commits()

    assert "renew" in producer.calls and producer.calls[-2:] == ["init", "begin"]
    assert handler.rewound == 1
    assert consumer.calls[0] == "unsubscribe" and "subscribe" in consumer.calls


@pytest.mark.parametrize("way_out", ["revoked as the consumer closes", "drained"])
def test_after_outputs_refused_for_good_nothing_is_committed_on_the_way_out(way_out: str) -> None:
    """A missing WRITE permission stops the service; the consumer's close revoked its partitions
    and committed the positions finished since, or a drain did (the refusal not yet settled, and
    the process exited 0): the restart after the fix read on past requests never scored (a review)."""
    committer = RecordingCommitter()
    lane = CommitLane(committer, None, background=False)  # type: ignore[arg-type]
    spec = StreamSpec(name="svc", config={}, subscription=["in"], group_id="g", processing="at-least-once")
    service = StreamService(spec, Handler())
    service.ctx = Context(spec, {}, BrokerHealth(), Consumer(), None, lane, ExitStack())  # type: ignore[arg-type]
    refused = RefusedForGood("not authorized to write topic out")
    lane._outcomes.append(CommitOutcome([TopicPartition("in", 0, 10)], False, refused))

    with pytest.raises(RefusedForGood):
        if way_out == "drained":
            service._drain()
        else:
            service._settle_commits()
    service._on_revoke(None, [TopicPartition("in", 0)])

    assert committer.commits == []


class QuietConsumer(Consumer):
    """The broker is back and answers every fetch, but the topic is quiet; metadata as asked."""

    def __init__(self, answers: bool) -> None:
        super().__init__()
        self.answers = answers

    def consume(self, *_args: Any) -> list[Any]:
        return []

    def list_topics(self, topic: str, timeout: float) -> object:
        self.calls.append(f"metadata {topic}")
        if not self.answers:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker away"))
        return object()


class QuietHandler(SimpleHandler):
    def on_batch(self, messages: list[Any]) -> None:
        self.positions.advance(messages)


@pytest.mark.parametrize("broker_back", [True, False])
def test_after_all_brokers_down_a_quiet_service_is_ready_again_once_the_broker_answers(broker_back: bool) -> None:
    """Only records read, an assignment or a finished commit marked the broker back: a quiet
    service stayed 'broker unreachable' (readiness 503, RdvBrokerUnreachable paging) after a
    short broker restart (a review)."""
    consumer = QuietConsumer(answers=broker_back)
    lane = CommitLane(RecordingCommitter(), None, background=False)  # type: ignore[arg-type]
    spec = StreamSpec(name="svc", config={}, subscription=["in"], group_id="g", processing="at-least-once",
                      max_wait_s=0.0)
    service = StreamService(spec, QuietHandler())
    service.PROBE_EVERY_S = 0.0
    service.ctx = Context(spec, {}, service.health, consumer, None, lane, ExitStack())  # type: ignore[arg-type]
    service._assigned, service._owned = True, {("in", 0): TopicPartition("in", 0)}
    service.health.mark_up()  # reached at start (`run`)
    service.health.error_cb(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    passes = iter(range(3))

    service._loop(lambda: next(passes, None) is None)

    assert "metadata in" in consumer.calls
    assert service.readiness() == ((True, "ready") if broker_back else (False, "broker unreachable for 0s"))


def test_partitions_lost_leave_the_service_unready_until_assigned_again_whatever_the_broker_says() -> None:
    lane = CommitLane(RecordingCommitter(), None, background=False)  # type: ignore[arg-type]
    spec = StreamSpec(name="svc", config={}, subscription=["in"], group_id="g", processing="at-least-once")
    service = StreamService(spec, Handler())
    service.ctx = Context(spec, {}, service.health, QuietConsumer(True), None, lane, ExitStack())  # type: ignore[arg-type]
    service._assigned = True
    service._on_lost(None, [TopicPartition("in", 0)])
    service.health.mark_up()  # the metadata probe answered
    assert service.readiness() == (False, "rebalancing: no partitions assigned")


class AssigningConsumer(QuietConsumer):
    """Takes the assignments the skeleton makes in its rebalance callbacks."""

    def __init__(self) -> None:
        super().__init__(answers=True)
        self.assigned: list[TopicPartition] = []

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = list(partitions)

    def assignment(self) -> list[TopicPartition]:
        return self.assigned


def test_a_revoke_leaves_the_service_unready_until_the_next_assignment() -> None:
    """Between a rebalance's revoke (the classic protocol takes every partition) and the next
    assignment, readiness said ready: a load balancer kept counting on an instance owning nothing."""
    committer = RecordingCommitter()
    lane = CommitLane(committer, None, background=False)  # type: ignore[arg-type]
    spec = StreamSpec(name="svc", config={}, subscription=["in"], group_id="g", processing="at-least-once")
    service = StreamService(spec, Handler())
    consumer = AssigningConsumer()
    service.ctx = Context(spec, {}, service.health, consumer, None, lane, ExitStack())  # type: ignore[arg-type]
    partitions = [TopicPartition("in", 0), TopicPartition("in", 1)]
    assert service.readiness() == (False, "connecting to the broker for 0s")  # a service starting
    service.health.mark_up()  # reached (`run`)
    assert service.readiness() == (False, "waiting for a partition assignment")

    service._on_assign(None, partitions)
    assert service.readiness() == (True, "ready")
    service._on_revoke(None, partitions)
    assert service.readiness() == (False, "rebalancing: no partitions assigned")
    assert len(committer.commits) == 1  # the revoke still committed the finished work first
    service._on_assign(None, partitions[:1])
    assert service.readiness() == (True, "ready")


def test_a_loop_that_stopped_turning_past_max_poll_interval_is_not_ready() -> None:
    """A hung loop (librdkafka's thread still heartbeating) said ready while the group, past its
    max.poll.interval.ms, gave its partitions to others, and no alert fired (a review)."""
    lane = CommitLane(RecordingCommitter(), None, background=False)  # type: ignore[arg-type]
    spec = StreamSpec(name="svc", config={}, subscription=["in"], group_id="g", processing="at-least-once")
    service = StreamService(spec, Handler())
    service.ctx = Context(spec, {}, service.health, AssigningConsumer(), None, lane,  # type: ignore[arg-type]
                          ExitStack())
    service.health.mark_up()
    service._on_assign(None, [TopicPartition("in", 0)])
    service._leaves_group_after_s = 30.0
    service._turned_at = time.monotonic() - 29.0
    assert service.readiness() == (True, "ready")
    service._turned_at = time.monotonic() - 31.0
    ready, why = service.readiness()
    assert not ready
    assert why.startswith("the poll loop has not turned for 31s: past its max.poll.interval.ms (30s) it left")
    assert service.liveness()[0]  # a restart is liveness' call, later (stalled_after_s)


@pytest.mark.parametrize(("config", "seconds"), [
    ({}, 300.0), ({"max.poll.interval.ms": 30_000}, 30.0), ({"max.poll.interval.ms": "45000"}, 45.0),
    ({"max.poll.interval.ms": "soon"}, 300.0),  # librdkafka refuses it when the consumer is made
])
def test_the_time_a_stalled_loop_keeps_its_group_is_the_consumer_s_max_poll_interval(
    config: dict[str, Any], seconds: float
) -> None:
    assert max_poll_interval_s(config) == seconds


class _RefusingLane:
    """The commit lane as the drain meets it: its commit finds the last outputs refused."""

    transactional = False

    def __init__(self) -> None:
        self.commits = 0

    def commit_now(self, _offsets: Any, _give_up: Any, _group: Any = None) -> bool:
        self.commits += 1
        raise RefusedForGood("delivery to out failed: Broker: Message size too large")


def test_a_refusal_met_by_the_drains_commit_is_followed_by_no_commit_of_that_work() -> None:
    """The close's revoke committed the positions after it: at least once the failures were
    cleared by the first flush, exactly once a fresh, empty transaction took the offsets alone:
    the records were lost (a review)."""
    lane = _RefusingLane()
    spec = StreamSpec(name="svc", config={}, subscription=["in"], group_id="g", processing="at-least-once")
    service = StreamService(spec, Handler())
    service.ctx = Context(spec, {}, service.health, Consumer(), None, lane, ExitStack())  # type: ignore[arg-type]
    with pytest.raises(RefusedForGood):
        service.commit_now()  # the drain's
    service._on_revoke(None, [TopicPartition("in", 0)])  # the consumer's close
    assert lane.commits == 1


@pytest.mark.parametrize("code", [KafkaError._MAX_POLL_EXCEEDED, KafkaError.REQUEST_TIMED_OUT,
                                  KafkaError.NOT_LEADER_FOR_PARTITION])
def test_errors_librdkafka_gets_past_do_not_stop_a_consumer_and_partition_0_is_named_so(code: int) -> None:
    """A message's KafkaError never says retriable (the binding builds it so): each of these
    stopped the service, a model call longer than max.poll.interval.ms too; and a fatal one named
    partition 0 at offset 0 as -1 / -1 (a review)."""
    from confluent_kafka import Message

    from services.core.errors import KafkaOperationError
    from services.core.kafka import Consumer as Wrapped

    consumer = Wrapped.__new__(Wrapped)
    consumer._config = {}
    ok = Message(topic="rdv.requests", partition=0, offset=1, value=b"x")
    assert consumer._without_errors([Message(topic="rdv.requests", partition=0, offset=0,
                                             error=KafkaError(code, "from librdkafka")), ok]) == [ok]
    with pytest.raises(KafkaOperationError) as refused:
        consumer._without_errors([Message(topic="rdv.requests", partition=0, offset=0,
                                          error=KafkaError(KafkaError.OFFSET_OUT_OF_RANGE, "gone"))])
    assert refused.value.source is not None and (refused.value.source.partition, refused.value.source.offset) == (0, 0)


def test_a_member_assigned_no_partition_is_a_ready_standby_and_says_so() -> None:
    """More members than partitions: the group assigns one nothing. It is in the group and takes
    partitions over when a member leaves, so it is ready (a failing probe would stall a rollout and
    page RdvServiceNotReady for a correct standby), but /readyz and rdv_assigned_partitions say it
    owns nothing; between a revoke and the next assignment it stays not ready."""
    from prometheus_client import REGISTRY

    lane = CommitLane(RecordingCommitter(), None, background=False)  # type: ignore[arg-type]
    spec = StreamSpec(name="svc", config={}, subscription=["in"], group_id="g", processing="at-least-once")
    service = StreamService(spec, Handler())
    service.ctx = Context(spec, {}, service.health, AssigningConsumer(), None, lane, ExitStack())  # type: ignore[arg-type]

    service._on_assign(None, [])
    assert service.readiness() == (True, "standby: no partitions assigned")
    assert REGISTRY.get_sample_value("rdv_assigned_partitions") == 0
    service._on_revoke(None, [])  # the next rebalance
    assert service.readiness() == (False, "rebalancing: no partitions assigned")
    service._on_assign(None, [TopicPartition("in", 0), TopicPartition("in", 1)])
    assert service.readiness() == (True, "ready")
    assert REGISTRY.get_sample_value("rdv_assigned_partitions") == 2
    service._on_revoke(None, [TopicPartition("in", 0), TopicPartition("in", 1)])
    assert REGISTRY.get_sample_value("rdv_assigned_partitions") == 0


class GroupConsumer(Consumer):
    def consumer_group_metadata(self) -> object:
        return object()


class _AbortingLane:
    """The commit lane as a drain met it with an output timed out: its commit aborts the transaction."""

    transactional = True

    def __init__(self, error: KafkaOperationError) -> None:
        self.error = error
        self.commits: list[list[TopicPartition]] = []
        self.aborts = 0

    def commit_now(self, offsets: list[TopicPartition], _give_up: Any, _group: Any = None) -> bool:
        self.commits.append(offsets)
        if len(self.commits) == 1:
            raise self.error
        return True

    def abort_now(self) -> None:
        self.aborts += 1


@pytest.mark.parametrize("error", [
    TransactionAborted("transaction abandoned (an output timed out undelivered)"),
    KafkaOperationError("commit failed: an error librdkafka calls neither retriable nor abortable"),
])
def test_a_drains_commit_aborted_is_followed_by_no_commit_of_that_work_until_its_partitions_are_released(
    error: KafkaOperationError,
) -> None:
    """The consumer's close revoked the partitions and committed the offsets the aborted
    transaction held, alone in a fresh one: with the dead-letter topic deleted under the
    rendezvous, 1,161 of 1,289 requests were committed without answer or comparison record (a
    review; a second found the other abort). Once released, the partitions' next owner (this
    one, assigned again) commits anew."""
    lane = _AbortingLane(error)
    spec = StreamSpec(name="svc", config={}, subscription=["in"], group_id="g")
    service = StreamService(spec, Handler())
    service.ctx = Context(spec, {}, service.health, GroupConsumer(), None, lane, ExitStack())  # type: ignore[arg-type]
    try:
        service.commit_now()  # the drain's: aborted
    except KafkaOperationError as raised:
        assert raised is error and not isinstance(error, TransactionAborted)  # the other stops the drain
    assert lane.aborts == 1
    service._on_revoke(None, [TopicPartition("in", 0)])  # the consumer's close
    assert len(lane.commits) == 1
    service.commit_now()  # a commit of work read after the partitions were assigned again
    assert len(lane.commits) == 2
