"""The commit lane: commits off the poll loop, consumer calls only on the caller's thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import REGISTRY

from services.core.commits import AbortFailed, CommitLane, CommitOutcome, TransactionAborted
from services.core.errors import KafkaOperationError, ProducerInErrorState, RefusedForGood


class RecordingCommitter:
    """A committer of our own protocol that notes which thread ran each step."""

    transactional = False

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.commits: list[tuple[str, Any]] = []
        self.finishes: list[tuple[str, bool]] = []
        self.fail_with = fail_with

    def init(self) -> None:
        return None

    def commit(self, offsets: list[TopicPartition], give_up: Callable[[], bool], group: Any) -> bool:
        self.commits.append((threading.current_thread().name, group))
        if self.fail_with is not None:
            raise self.fail_with
        return True

    def finish(self, offsets: list[TopicPartition], wait: bool) -> bool:
        self.finishes.append((threading.current_thread().name, wait))
        return self.takes_offsets

    takes_offsets = True  # what the broker says to the offsets' commit

    def abort(self) -> None:
        return None


def _until_an_outcome_is_held(lane: CommitLane) -> None:
    """Until the lane holds a commit's outcome (not taken from it, as `_outcomes` does)."""
    with lane._lock:
        assert lane._lock.wait_for(lambda: bool(lane._outcomes), 5)


def _outcomes(lane: CommitLane, timeout: float = 5.0) -> list[CommitOutcome]:
    done = lane.wait_outcomes(timeout)
    assert done, "no commit outcome"
    return done


def test_commits_run_on_the_lane_and_consumer_steps_on_the_caller() -> None:
    committer = RecordingCommitter()
    lane = CommitLane(committer, None)
    try:
        lane.request([TopicPartition("t", 0, 5)], group="metadata")
        [outcome] = _outcomes(lane)
        assert outcome.done and outcome.error is None
        lane.finish(outcome)
        assert committer.commits == [("rdv-commit", "metadata")]
        assert committer.finishes == [(threading.current_thread().name, False)]
    finally:
        lane.close()


def test_commit_now_supersedes_unsettled_outcomes_and_waits_for_its_commit() -> None:
    committer = RecordingCommitter()
    lane = CommitLane(committer, None)
    try:
        lane.request([TopicPartition("t", 0, 5)])
        assert lane.wait_outcomes(5), "the first commit never ended"
        lane.request([TopicPartition("t", 0, 7)])  # not settled yet when commit_now supersedes it
        assert lane.commit_now([TopicPartition("t", 0, 9)], lambda: False)
        assert lane.outcomes() == []  # the older positions are never committed after the newer
        assert committer.finishes == [(threading.current_thread().name, True)]
    finally:
        lane.close()


def test_an_unexpected_error_is_an_outcome_and_the_lane_goes_on() -> None:
    committer = RecordingCommitter(fail_with=RuntimeError("boom"))
    lane = CommitLane(committer, None)
    try:
        lane.request([TopicPartition("t", 0, 1)])
        [outcome] = _outcomes(lane)
        assert isinstance(outcome.error, RuntimeError)
        committer.fail_with = None
        lane.request([TopicPartition("t", 0, 2)])
        [outcome] = _outcomes(lane)
        assert outcome.done
    finally:
        lane.close()


class AbortingFirst(RecordingCommitter):
    """Its first transaction is aborted (offsets refused, the producer replaced, ...)."""

    transactional = True

    def commit(self, offsets: list[TopicPartition], give_up: Callable[[], bool], group: Any) -> bool:
        if not self.commits:
            self.commits.append(("aborted", [tp.offset for tp in offsets]))
            raise TransactionAborted("transaction aborted: offsets refused")
        self.commits.append(("committed", [tp.offset for tp in offsets]))
        return True


def test_commit_now_raises_an_abort_not_yet_settled_and_commits_nothing() -> None:
    """A revoke or a drain right after an abort: committing the finished positions then would
    cover requests whose answers were aborted, and nobody would ever answer them again."""
    committer = AbortingFirst()
    lane = CommitLane(committer, None)
    try:
        lane.request([TopicPartition("t", 0, 100)])
        _until_an_outcome_is_held(lane)  # the outcome is in, not yet settled by the loop
        with pytest.raises(TransactionAborted):
            lane.commit_now([TopicPartition("t", 0, 120)], lambda: False)
        assert committer.commits == [("aborted", [100])]
    finally:
        lane.close()


def test_commit_now_after_outputs_refused_for_good_commits_nothing_and_keeps_the_refusal_for_the_loop() -> None:
    """A drain or a revoke before the loop settled a refusal (a missing WRITE permission): the
    positions finished since cover inputs whose outputs were never written (a review)."""
    committer = RecordingCommitter(fail_with=RefusedForGood("not authorized to write topic out"))
    lane = CommitLane(committer, None)
    try:
        lane.request([TopicPartition("t", 0, 100)])
        _until_an_outcome_is_held(lane)  # the outcome is in, not yet settled by the loop
        committer.fail_with = None
        with pytest.raises(TransactionAborted, match="outputs were refused"):
            lane.commit_now([TopicPartition("t", 0, 120)], lambda: False)
        assert len(committer.commits) == 1  # the failed one only
        [outcome] = lane.outcomes()
        assert isinstance(outcome.error, RefusedForGood)
    finally:
        lane.close()


def test_no_commit_starts_while_a_failed_one_waits_to_be_settled() -> None:
    committer = AbortingFirst()
    lane = CommitLane(committer, None)
    try:
        lane.request([TopicPartition("t", 0, 100)])
        _until_an_outcome_is_held(lane)
        lane.request([TopicPartition("t", 0, 120)])  # refused: the loop must rewind first
        assert not lane.busy() and committer.commits == [("aborted", [100])]
        [outcome] = lane.outcomes()
        assert isinstance(outcome.error, TransactionAborted)
        lane.request([TopicPartition("t", 0, 100)])  # settled: commits go on
        [outcome] = _outcomes(lane)
        assert outcome.done and committer.commits[-1] == ("committed", [100])
    finally:
        lane.close()


class HeldProducer:
    """Our producer's surface as the lane uses it; a produce of b"bad" fails."""

    def __init__(self) -> None:
        self.sent: list[bytes | None] = []

    def check_size(self, value: bytes | None, key: Any = None, headers: Any = None, topic: str | None = None) -> None:
        return None

    def produce(self, topic: str, value: bytes | None, **_kwargs: Any) -> None:
        if value == b"bad":
            raise KafkaOperationError("produce to t failed: Local: Erroneous state")
        if value == b"stuck":
            raise ProducerInErrorState("produce to t failed: Local: Erroneous state")
        self.sent.append(value)


class GatedCommitter(RecordingCommitter):
    transactional = True

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def commit(self, offsets: list[TopicPartition], give_up: Callable[[], bool], group: Any) -> bool:
        self.entered.set()
        self.gate.wait(5)
        return True


def test_an_output_held_during_a_commit_that_cannot_be_produced_voids_the_transaction_and_the_lane_goes_on() -> None:
    committer, producer = GatedCommitter(), HeldProducer()
    lane = CommitLane(committer, producer)  # type: ignore[arg-type]
    try:
        lane.request([TopicPartition("t", 0, 1)])
        assert committer.entered.wait(5)
        lane.produce("t", b"bad")  # held: a commit is running
        lane.produce("t", b"after")
        committer.gate.set()
        outcomes: list[CommitOutcome] = []
        while len(outcomes) < 2:
            outcomes += _outcomes(lane)
        assert outcomes[0].done and isinstance(outcomes[1].error, TransactionAborted)
        assert producer.sent == [] and lane._thread is not None and lane._thread.is_alive()
        lane.request([TopicPartition("t", 0, 1)])  # settled: the lane commits again
        [outcome] = _outcomes(lane)
        assert outcome.done
    finally:
        lane.close()


def test_an_output_the_producer_refuses_for_its_state_voids_the_transaction_not_the_record() -> None:
    """Raised to the caller, the rendezvous dead-lettered and counted the record after a broker
    restart, in the transaction aborted: two records counted lost were both answered (a review).
    A refusal of the record itself still reaches the caller."""
    committer, producer = GatedCommitter(), HeldProducer()
    lane = CommitLane(committer, producer)  # type: ignore[arg-type]
    try:
        lane.produce("t", b"stuck")
        lane.produce("t", b"stuck")  # the same void: one outcome
        [outcome] = _outcomes(lane)
        assert isinstance(outcome.error, TransactionAborted) and "Erroneous state" in str(outcome.error)
        assert lane.wait_outcomes(0.05) == [] and producer.sent == []
        with pytest.raises(KafkaOperationError, match="Erroneous state"):
            lane.produce("t", b"bad")
    finally:
        lane.close()


class _Slow(RecordingCommitter):
    """A commit that runs until released (a flush on a sluggish broker)."""

    def __init__(self, fail_with: BaseException | None = None) -> None:
        super().__init__(fail_with)
        self.running, self.release = threading.Event(), threading.Event()

    def commit(self, offsets: list[TopicPartition], give_up: Callable[[], bool], group: Any) -> bool:
        self.running.set()
        assert self.release.wait(10), "never released"
        return super().commit(offsets, give_up, group)


@pytest.mark.parametrize("fails", [False, True])
def test_a_commit_running_when_partitions_are_lost_keeps_no_success(fails: bool) -> None:
    """Its outcome landed after the loss was handled, and the loop's next settle committed the
    lost partitions' offsets (a review). A failure is kept: its refused outputs may be of
    partitions still owned, and the service must stop on it."""
    committer = _Slow(RefusedForGood("delivery to out failed: Message size too large") if fails else None)
    lane = CommitLane(committer, None)
    try:
        lane.request([TopicPartition("in", 0, 6), TopicPartition("in", 1, 8)])
        assert committer.running.wait(10)
        lane.discard_outcomes()  # on the consumer's thread, in the lost-partitions callback: not waiting
        committer.release.set()
        if fails:
            [outcome] = _outcomes(lane)
            assert isinstance(outcome.error, RefusedForGood)
        else:
            with lane._lock:  # until the commit has ended and its outcome was (or was not) kept
                assert lane._lock.wait_for(lambda: not lane.busy(), 10)
            assert lane.outcomes() == [] and committer.finishes == []
    finally:
        lane.close()


def test_a_failure_recorded_before_partitions_are_lost_is_kept() -> None:
    """The loss dropped every outcome, a refusal already recorded too, and the service did not stop
    on it (a review): its refused outputs may be of partitions still owned."""
    lane = CommitLane(RecordingCommitter(RefusedForGood("delivery to out failed: Message size too large")), None)
    try:
        lane.request([TopicPartition("in", 0, 6)])
        with lane._lock:
            assert lane._lock.wait_for(lambda: not lane.busy() and lane._outcomes, 10)
        lane.discard_outcomes()
        [outcome] = _outcomes(lane)
        assert isinstance(outcome.error, RefusedForGood)
    finally:
        lane.close()


def test_outputs_held_during_a_long_commit_are_bounded_the_loop_waits_for_the_commit() -> None:
    """A transaction commit can run long (its coordinator away) while records keep coming: the
    outputs held meanwhile grew the process without limit. Past the bound the producing thread
    waits for the commit, and what was held goes out, in order, before what waited."""
    committer, producer = GatedCommitter(), HeldProducer()
    lane = CommitLane(committer, producer)  # type: ignore[arg-type]
    lane.max_held_bytes = 3_000

    def waits() -> float:
        return REGISTRY.get_sample_value("rdv_commit_held_waits_total") or 0.0

    waits_before = waits()
    try:
        lane.request([TopicPartition("t", 0, 1)])
        assert committer.entered.wait(5)
        for i in range(3):
            lane.produce("t", bytes([i]) * 1_000)  # held: 3,000 bytes, the bound
        assert producer.sent == []
        produced = threading.Event()

        def one_more() -> None:
            lane.produce("t", b"waited")
            produced.set()

        loop = threading.Thread(target=one_more)
        loop.start()
        with lane._lock:  # the loop waits, its record not held
            deadline = time.monotonic() + 5
            while waits() == waits_before and time.monotonic() < deadline:
                lane._lock.wait(0.05)
            assert waits() == waits_before + 1
            assert len(lane._held) == 3 and not produced.is_set()
        committer.gate.set()
        assert produced.wait(5)
        loop.join(5)
        assert producer.sent == [bytes([0]) * 1_000, bytes([1]) * 1_000, bytes([2]) * 1_000, b"waited"]
    finally:
        committer.gate.set()
        lane.close()


def test_commit_now_says_nothing_was_committed_when_the_broker_rejected_the_offsets() -> None:
    """At least once, a revoke's commit the group rejected (it moved on) was reported committed:
    the handler marked positions committed that were not, and kept what its re-read counted twice."""
    committer = RecordingCommitter()
    committer.takes_offsets = False
    lane = CommitLane(committer, None, background=False)  # type: ignore[arg-type]
    assert lane.commit_now([TopicPartition("t", 0, 9)], lambda: False) is False
    committer.takes_offsets = True
    assert lane.commit_now([TopicPartition("t", 0, 9)], lambda: False) is True


class AbortFailingWhileStopping(RecordingCommitter):
    """Its transaction failed, and so did the one abort tried while the service stops."""

    transactional = True

    def commit(self, offsets: list[TopicPartition], give_up: Callable[[], bool], group: Any) -> bool:
        self.commits.append(("abort failed", [tp.offset for tp in offsets]))
        raise AbortFailed("stopped while aborting the transaction (Local: Timed out)")


def test_commit_now_raises_an_abort_that_failed_while_stopping_as_it_is() -> None:
    """Raised as 'outputs were refused' (a TransactionAborted), the drain's commit aborted once
    more: 5 s of a drain in a broker outage (a review)."""
    committer = AbortFailingWhileStopping()
    lane = CommitLane(committer, None)
    try:
        lane.request([TopicPartition("t", 0, 100)])
        _until_an_outcome_is_held(lane)
        with pytest.raises(AbortFailed):
            lane.commit_now([TopicPartition("t", 0, 120)], lambda: False)
        assert committer.commits == [("abort failed", [100])]
    finally:
        lane.close()
