"""The watchdog's bookkeeping of the batch being scored (the process exit: tests/faults/test_hung_model.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import Message

from services.core.errors import KafkaOperationError
from services.model_worker.watchdog import Watched
from tests.integration.harness import wait_until


def batch(models: list[str]) -> Watched[str]:
    sources = [Message(topic="rq", partition=p, offset=o, value=b"") for p, o in [(0, 7), (1, 3), (0, 9), (1, 4)]]
    return Watched(models, sources, lambda _model, _reason: None)


def test_a_model_that_claimed_its_batch_is_not_abandoned() -> None:
    watched = batch(["a", "b", "c"])
    assert watched.claim("a")
    assert watched.abandon() == ["b", "c"]  # the stuck one (b) first


def test_after_the_watchdog_gave_up_no_model_writes_the_batch_again() -> None:
    watched = batch(["a", "b"])
    assert watched.abandon() == ["a", "b"]
    assert not watched.claim("a")
    assert watched.abandon() == []


def test_the_commit_goes_one_past_each_partitions_last_record() -> None:
    ends = {(tp.topic, tp.partition): tp.offset for tp in batch(["a"]).end_offsets()}
    assert ends == {("rq", 0): 10, ("rq", 1): 5}


def test_writing_a_models_scores_is_no_models_turn() -> None:
    """A produce waiting for the broker after model a's turn was counted as model b's: a healthy
    b got error Scores and the worker exited."""
    watched = batch(["a", "b"])
    assert watched.turn_started is not None  # a's turn
    assert watched.claim("a")
    assert watched.turn_started is None  # a's Scores being written: nobody's time
    watched.next_turn()
    assert watched.turn_started is not None and watched.pending == ["b"]


def test_the_liveness_and_group_limits_leave_every_co_hosted_model_its_turn() -> None:
    from services.model_worker.worker import max_poll_interval_ms, stalled_after_s

    assert stalled_after_s(0, 3) is None  # models may take as long as they like
    assert stalled_after_s(60, 1) == 120.0
    assert stalled_after_s(55, 3) == 3 * 55 + 60  # three healthy 55 s turns stalled it at 120 s
    assert max_poll_interval_ms(60, 1) == 300_000
    assert max_poll_interval_ms(240, 2) == (2 * 240 + 60) * 1000
    # No limit: the worker sets none (librdkafka's, or --kafka-config's; refused before as the worker's own key).
    from services.model_worker.worker import max_poll_interval

    assert max_poll_interval(0, 1) == {} and max_poll_interval(60, 1) == {"max.poll.interval.ms": 300_000}


def _watchdog(board: Any = None, consumer: Any = None, start: bool = True) -> tuple[Any, threading.Event]:
    """A watchdog with a 0.2 s timeout whose exit only sets an event. It has no producer: in these
    tests writing the error Scores fails first, so it never reaches it (nor commits)."""
    from services.model_worker.watchdog import ScoringWatchdog

    exited = threading.Event()
    watchdog = ScoringWatchdog(0.2, str, None, consumer, exit_process=exited.set, board=board)  # type: ignore[arg-type]
    if start:
        watchdog.start()
    return watchdog, exited


def _failing_writes(written: list[str]) -> Any:
    def write_errors(model: str, reason: str) -> None:
        written.append(model)
        raise KafkaOperationError("produce to rdv.scores failed: Local: Fatal error")

    return write_errors


def test_the_worker_exits_even_when_the_error_scores_cannot_be_written() -> None:
    """The poll loop waits for that exit (`hold`): a watchdog thread dying before it hung the worker."""
    watchdog, exited = _watchdog()
    written: list[str] = []
    watchdog.watch(["m"], [Message(topic="rq", partition=0, offset=5, value=b"")], _failing_writes(written))
    assert exited.wait(30) and written == ["m"]
    watchdog.stop()


def test_after_standing_down_for_the_rescue_the_watchdog_watches_the_next_batch(caplog: Any) -> None:
    """It stood down for good once the rescue process had taken a batch, even after the rescue
    stood down in turn (the model returned): a later stuck batch then hung the worker."""
    from types import SimpleNamespace

    from confluent_kafka import Consumer

    from services.model_worker.rescue_board import Board, Reader

    board = Board()
    rescue = Reader(board.path)
    # The rescue's board takes the group's metadata: a real consumer gives it without a broker.
    native = Consumer({"group.id": "watchdog-test", "bootstrap.servers": "127.0.0.1:9", "log_level": 0})
    try:
        # Its thread starts once the rescue holds the batch: started before, a test thread held up
        # for the watchdog's 0.2 s between the two steps saw it give up instead (forced with a
        # 0.4 s sleep before the take: no stand-down line, 30 s wait, failure).
        watchdog, exited = _watchdog(board, SimpleNamespace(native=native), start=False)
        sources = [Message(topic="rq", partition=0, offset=5, value=b"")]
        first: list[str] = []
        watched = watchdog.watch(["m"], sources, _failing_writes(first))
        rescue.take()  # the rescue process took the batch (as if the model held the interpreter lock)
        watchdog.start()
        # Until the watchdog found the batch overdue and stood down.
        wait_until(lambda: "the rescue process took the batch" in caplog.text, 30, "the watchdog to stand down")
        assert not watched.claim("m")  # the model returned after all: not while the rescue holds the batch
        rescue.release()  # the rescue saw the turn end and stood down
        assert watched.claim("m")
        watchdog.done()
        second: list[str] = []
        watchdog.watch(["m"], sources, _failing_writes(second))  # stuck too, with the interpreter lock free
        assert exited.wait(30) and (first, second) == ([], ["m"])
        watchdog.stop()
    finally:
        native.close()
        rescue.close()
        board.close()


def test_the_watchdog_stands_down_when_the_overdue_turn_ended_before_it_acted() -> None:
    """A model answering just as the watchdog found its turn overdue: the watchdog abandoned the
    next model's turn, begun a moment before, blamed that model for the batch and exited (a review)."""
    from services.model_worker.watchdog import ScoringWatchdog

    exits: list[bool] = []
    written: list[str] = []
    watchdog = ScoringWatchdog(2.0, str, None, None, exit_process=lambda: exits.append(True))  # type: ignore[arg-type]
    watched = watchdog.watch(["a", "b"], [Message(topic="rq", partition=0, offset=5, value=b"")],
                             lambda model, _reason: written.append(model))
    watched.turn_started = time.monotonic() - 2.5  # a's turn, overdue
    started = watchdog._overdue(watched)
    assert started is not None
    assert watched.claim("a")  # a answered after all, and b's turn begins
    watched.next_turn()
    assert watchdog._give_up(watched, started) is None
    assert watched.pending == ["b"] and not watched.abandoned and written == [] and exits == []
    assert watchdog._overdue(watched) is None  # b's own turn is watched from its start


class _Committed:
    """A consumer that records the watchdog's commits, and a producer whose flush finds nothing
    left (the commit thread's flush already took the failure)."""

    def __init__(self) -> None:
        self.commits: list[list[tuple[int, int]]] = []

    def commit(self, offsets: list[Any]) -> None:
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])

    def flush(self, _timeout: float) -> None:
        return None


class _Flushed:
    """At least once, the commit thread's flush: the earlier batch's Scores delivered, or not."""

    transactional = False

    def __init__(self, lost: bool) -> None:
        self.lost = lost

    def commit(self, offsets: list[Any], give_up: Any, group: Any = None) -> bool:
        from services.core.commits import TransactionAborted

        if self.lost:
            raise TransactionAborted("outputs not delivered (delivery to rdv.scores failed: Local: Message timed out)")
        return True


@pytest.mark.parametrize("lost", [True, False])
def test_the_watchdog_commits_past_no_batch_whose_scores_the_commit_thread_found_lost(lost: bool) -> None:
    """The loop asked for a commit of the batch before (0:0-4), then its model hung on 0:5-7. The
    commit thread's flush took the failure of that earlier batch's Scores (the producer hands a
    failure to one flush only), and the loop, stuck, never settled it. The watchdog's own flush
    found nothing amiss and committed 0:8: the earlier batch committed past, its Scores lost."""
    from confluent_kafka import TopicPartition

    from services.core.commits import CommitLane
    from services.model_worker.watchdog import ScoringWatchdog

    clients = _Committed()
    lane = CommitLane(_Flushed(lost), None)  # type: ignore[arg-type]
    try:
        lane.request([TopicPartition("rq", 0, 5)])
        exits: list[bool] = []
        watchdog: ScoringWatchdog[str] = ScoringWatchdog(
            2.0, str, clients, clients, exit_process=lambda: exits.append(True),  # type: ignore[arg-type]
            outputs_lost=lane.failed_unsettled)
        sources = [Message(topic="rq", partition=0, offset=o, value=b"") for o in range(5, 8)]
        watched = watchdog.watch(["a"], sources, lambda _m, _r: None)
        assert watchdog._give_up(watched) is True and exits == [True]
        assert clients.commits == ([] if lost else [[(0, 8)]])
    finally:
        lane.close()


def test_with_no_limit_the_user_may_set_how_long_a_batch_may_take() -> None:
    """--predict-timeout-s 0 promised no limit, but a batch past 300 s lost its partitions, and
    --kafka-config max.poll.interval.ms was refused as the worker's own key (a review)."""
    import pytest

    from services.core.errors import ConfigError
    from services.core.settings import from_namespace
    from services.model_worker.settings import WorkerSettings
    from services.model_worker.worker import ModelWorker

    def worker(timeout: str) -> ModelWorker:
        return ModelWorker(from_namespace(WorkerSettings, None, model="demo:champion", predict_timeout_s=timeout,
                                          kafka_config="max.poll.interval.ms=900000", bootstrap="127.0.0.1:1"))

    assert worker("0").service.spec.config["max.poll.interval.ms"] == "900000"
    with pytest.raises(ConfigError, match=r"max\.poll\.interval\.ms: model champion sets it itself"):
        worker("60")
