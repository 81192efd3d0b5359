"""What a new owner's scan (services/rendezvous/recovery.py scan_finished) finds already done for
the requests it re-reads, from the records on the answers and log topics."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Producer

from services.client.client import make_request
from services.core.codec import codec
from services.core.settings import Topics
from services.rendezvous import recovery
from services.rendezvous.recovery import Mark, ScanCancelled, scan_finished

pytestmark = pytest.mark.kafka

T0 = 1_700_000_000_000


def _answer(rid: str) -> dict[str, Any]:
    return {"request_id": rid, "status": "OK", "model": "champion", "version": "v1", "score": 0.25,
            "label": "benign", "reason": "preferred model answered", "created_at": T0, "deadline": T0 + 200,
            "answered_at": T0 + 3, "schedule": "default", "schedule_version": 1}


def _logged(answer: dict[str, Any]) -> dict[str, Any]:
    outputs = [{"model": model, "version": "v1", "score": score, "label": "benign", "error": None,
                "latency_ms": 3.0, "compute_ms": 0.1, "late": model != "champion"}
               for model, score in (("challenger", 0.5), ("champion", 0.25))]
    return {"request_id": answer["request_id"], "created_at": T0, "deadline": T0 + 200,
            "answered_at": answer["answered_at"], "status": "OK", "chosen_model": "champion",
            "reason": answer["reason"], "schedule": "default", "schedule_version": 1, "outputs": outputs}


def test_a_request_answered_before_the_mark_and_logged_after_it_is_found_with_its_answer(
    topics: Topics, config: dict[str, Any]
) -> None:
    """X was answered at once (its answer before the mark the committed request Q was read at),
    then logged once its last score came (after the mark). The scan finds X logged: a retry of X
    must get X's answer again, which it takes from the comparison record (it found none)."""
    answers, logs, requests = codec("answer"), codec("comparison"), codec("request")
    producer = Producer(config)
    x, q = _answer("x"), _answer("q")
    for rid in ("x", "q"):  # the requests: Q at offset 1 is the committed one, re-read
        request = make_request({"f": 1.0}, budget_ms=200, reply_topic=None, reply_partition=None, request_id=rid)
        producer.produce(topics.requests, requests.encode(request), partition=0)
    producer.produce(topics.answers, answers.encode(x), partition=0)  # offset 0: before the mark
    producer.produce(topics.answers, answers.encode(q), partition=0)  # offset 1
    producer.produce(topics.log, logs.encode(_logged(x)), partition=0)  # offset 0: after the mark
    assert producer.flush(30) == 0

    found = scan_finished(config, topics, {0: (1, Mark(answers=1, log=0))}, margin_ms=0)

    assert found.finished.logged == {"x"}
    assert found.finished.answered == {"q": q, "x": x}
    # Requests below the end at the scan (2) keep the floors as their marks (service.py `_mark`).
    assert found.reread_ends == {0: 2}
    assert (found.floors[(topics.answers, 0)], found.floors[(topics.log, 0)]) == (1, 0)


def test_a_scan_given_up_stops_reading_and_says_so(topics: Topics, config: dict[str, Any]) -> None:
    """A takeover's scan runs off the poll loop; when its partitions are taken away meanwhile
    (takeover.py `_drop_job`) it is told to stop, and stops at the records it reads next."""
    answers, requests = codec("answer"), codec("request")
    producer = Producer(config)
    for rid in ("a", "b"):
        request = make_request({"f": 1.0}, budget_ms=200, reply_topic=None, reply_partition=None, request_id=rid)
        producer.produce(topics.requests, requests.encode(request), partition=0)
        producer.produce(topics.answers, answers.encode(_answer(rid)), partition=0)
    assert producer.flush(30) == 0
    asked: list[bool] = []

    def given_up() -> bool:
        asked.append(True)
        return True

    with pytest.raises(ScanCancelled, match=r"recovery of partitions \[0\] given up"):
        scan_finished(config, topics, {0: (0, Mark(answers=0, log=0))}, margin_ms=0, cancelled=given_up)
    assert asked == [True]
    kept_on = scan_finished(config, topics, {0: (0, Mark(answers=0, log=0))}, margin_ms=0, cancelled=lambda: False)
    assert set(kept_on.finished.answered) == {"a", "b"}


def test_answers_written_shortly_before_the_re_read_window_are_remembered_and_the_window_still_counts(
    topics: Topics, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry of a request closed before the committed one is read after it: the previous owner
    would have repeated its answer from memory, the new owner has only the scan. It remembers the
    answers of the last `remember_ms` before the window (undecoded), on partitions re-read and on
    those with nothing to redo alike; an id the window itself holds is the window's."""
    answers, requests = codec("answer"), codec("request")
    producer = Producer(config)
    for partition, rids in ((0, ("old", "x", "q")), (1, ("done",))):
        for rid in rids:
            request = make_request({"f": 1.0}, budget_ms=200, reply_topic=None, reply_partition=None, request_id=rid)
            producer.produce(topics.requests, requests.encode(request), partition=partition)
    old, x, q, done = (_answer(rid) for rid in ("old", "x", "q", "done"))
    for record in (old, x, q):  # offsets 0, 1, 2: the mark is at 2 (q's request, offset 2, re-read)
        producer.produce(topics.answers, answers.encode(record), key=record["request_id"], partition=0)
    producer.produce(topics.answers, answers.encode(x), key="x", partition=0)  # again in the window
    producer.produce(topics.answers, answers.encode(done), key="done", partition=1)
    assert producer.flush(30) == 0

    found = scan_finished(config, topics, {0: (2, Mark(answers=2, log=0)), 1: (1, Mark(answers=1, log=0))},
                          margin_ms=0, remember_ms=60_000)

    assert set(found.finished.answered) == {"q", "x"}
    assert sorted(found.finished.remembered) == ["done", "old"]
    for rid, record, partition in (("old", old, 0), ("done", done, 1)):
        where, _at, value = found.finished.remembered[rid]
        assert where == partition and answers.decode(value) == record
    assert found.floors[(topics.answers, 0)] == 2  # where this owner's outputs may start: the mark
    nothing = scan_finished(config, topics, {0: (2, Mark(answers=2, log=0))}, margin_ms=0)
    assert nothing.finished.remembered == {}  # remember_ms 0: none
    monkeypatch.setattr(recovery, "REMEMBERED_AT_MOST", 1)  # only x's answer, just before the mark: the window's
    capped = scan_finished(config, topics, {0: (2, Mark(answers=2, log=0))}, margin_ms=0, remember_ms=60_000)
    assert capped.finished.remembered == {}


def test_a_takeover_long_after_the_crash_remembers_the_answers_before_the_re_read_requests(
    topics: Topics, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The previous owner remembered a closed id until its requests partition was read a minute
    past it; a retry of `old` appended right after the crash would have got its answer again. A
    new owner taking over five minutes later looked for those answers from its own clock, found
    none, and decided the retry a second time (a review): the window is the re-read requests'."""
    answers, requests = codec("answer"), codec("request")
    producer = Producer(config)
    for rid in ("old", "q"):  # q at offset 1 is the committed one, re-read
        request = make_request({"f": 1.0}, budget_ms=200, reply_topic=None, reply_partition=None, request_id=rid)
        producer.produce(topics.requests, requests.encode(request), partition=0)
    old = _answer("old")
    producer.produce(topics.answers, answers.encode(old), key="old", partition=0)  # offset 0: before the mark
    assert producer.flush(30) == 0
    taken_over_at = recovery.now_ms() + 300_000
    monkeypatch.setattr(recovery, "now_ms", lambda: taken_over_at)

    found = scan_finished(config, topics, {0: (1, Mark(answers=1, log=0))}, margin_ms=0, remember_ms=60_000)

    assert sorted(found.finished.remembered) == ["old"]


def test_the_time_of_a_committed_offset_at_a_closing_transaction_marker_is_none_without_waiting_it_out(
    topics: Topics, config: dict[str, Any]
) -> None:
    """An upstream producer's transactions end the requests partition with a marker: the offset a
    rendezvous commits after the last request is the marker's, below the partition's end. Reading
    the time there polled for 15 s without a record, and every takeover of such a partition waited
    as long (a check of the scan's change to read that time at every takeover)."""
    from confluent_kafka import TopicPartition

    from services.core.kafka import reader

    producer = Producer({**config, "transactional.id": f"upstream-{topics.requests}"})
    producer.init_transactions()
    producer.begin_transaction()
    request = make_request({"f": 1.0}, budget_ms=200, reply_topic=None, reply_partition=None, request_id="x")
    producer.produce(topics.requests, codec("request").encode(request), partition=0)
    producer.commit_transaction()
    probe = reader(config, "recovery")
    polls = []

    class Counted:  # the real consumer, its polls counted
        def __getattr__(self, name: str) -> Any:
            return getattr(probe, name)

        def poll(self, timeout: float) -> Any:
            polls.append(timeout)
            return probe.poll(timeout)

    try:
        _low, end = probe.get_watermark_offsets(TopicPartition(topics.requests, 0), timeout=10)
        assert end == 2  # the request at 0, the marker at 1
        assert recovery._timestamp_at(Counted(), topics.requests, 0, 1, end) is None  # type: ignore[arg-type]
        assert len(polls) < 10, f"{len(polls)} polls: the 15 s were waited out"
        at = recovery._timestamp_at(Counted(), topics.requests, 0, 0, end)  # type: ignore[arg-type]
        assert at is not None and at > 0
    finally:
        probe.close()


def test_an_output_in_the_window_that_cannot_be_read_still_counts_its_request_as_done(
    topics: Topics, config: dict[str, Any]
) -> None:
    """An answer written under another version's schema (an older instance taking over from a
    newer one) was skipped: its request, re-read, got a second decision. Its key, the request
    id, says it was done; a log record without a usable key can only be passed over."""
    requests = codec("request")
    producer = Producer(config)
    for rid in ("q", "r"):
        request = make_request({"f": 1.0}, budget_ms=200, reply_topic=None, reply_partition=None, request_id=rid)
        producer.produce(topics.requests, requests.encode(request), partition=0)
    newer_schema = b"\xc3\x01" + bytes(8) + b"a record of a schema this version does not know"
    producer.produce(topics.answers, newer_schema, key="q", partition=0)
    producer.produce(topics.log, newer_schema, partition=0)  # no key: not counted
    assert producer.flush(30) == 0

    found = scan_finished(config, topics, {0: (0, Mark(answers=0, log=0))}, margin_ms=0)

    assert found.finished.logged == {"q"} and found.finished.answered == {}
    assert found.finished.partition_of == {"q": 0}
