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
