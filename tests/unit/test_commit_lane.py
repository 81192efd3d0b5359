"""The commit lane: commits off the poll loop, consumer calls only on the caller's thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import TopicPartition

from services.core.commits import CommitLane, CommitOutcome


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

    def finish(self, offsets: list[TopicPartition], wait: bool) -> None:
        self.finishes.append((threading.current_thread().name, wait))

    def abort(self) -> None:
        return None


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
