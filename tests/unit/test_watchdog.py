"""The watchdog's bookkeeping of the batch being scored (the process exit: tests/faults/test_hung_model.py)."""

from __future__ import annotations

from confluent_kafka import Message

from services.model_worker.watchdog import Watched


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
