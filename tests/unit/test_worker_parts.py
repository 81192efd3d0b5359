"""A model worker scores a poll's requests in parts of bounded bytes (services/model_worker/worker.py):
decoded whole, wide requests' dicts (~8x their bytes) took a worker past its pod's memory limit."""

from __future__ import annotations

import time
import types
from typing import Any

import pytest
from confluent_kafka import Message

from services.core.codec import codec
from services.model_worker import worker
from services.model_worker.models import demo_rows
from services.model_worker.settings import WorkerSettings
from services.model_worker.walked import RequestWalker
from services.model_worker.watchdog import ScoringWatchdog

REQUESTS, SCORES = codec("request"), codec("score")


def record(value: bytes, offset: int, partition: int = 0) -> Message:
    return Message(topic="rdv.requests", partition=partition, offset=offset, value=value)


class Outputs:
    """The producer's surface the scorer writes scores with."""

    def __init__(self) -> None:
        self.scores: list[dict[str, Any]] = []

    def produce(self, topic: str, value: bytes, **_kwargs: Any) -> None:
        self.scores.append(SCORES.decode(value))


def test_parts_keep_the_order_and_the_bound_and_a_large_record_goes_alone() -> None:
    records = [record(b"x" * size, i) for i, size in enumerate([3, 3, 3, 9, 1, 2, 4])]
    parts = worker.parts_by_bytes(records, 6)
    assert [[r.offset() for r in part] for part in parts] == [[0, 1], [2], [3], [4, 5], [6]]
    assert worker.parts_by_bytes([], 6) == []


def batch_scorer(settings: WorkerSettings, outputs: Outputs) -> Any:
    """The worker's batch path with its models, writing Scores to `outputs` (no Kafka, no watchdog)."""
    hosted = worker.hosted_models(settings, "host-1")
    return worker._BatchScorer(
        types.SimpleNamespace(settings=settings, hosted=hosted, topics=settings.topics(), scored=0,
                              _walker=RequestWalker(REQUESTS, worker.shared_names(hosted))),  # type: ignore[arg-type]
        outputs, None, ScoringWatchdog(0.0, lambda h: h.name, outputs, None))  # type: ignore[arg-type]


class Rewinds:
    """The consumer's `rewind` as the worker calls it: noted, refused for the partitions given."""

    def __init__(self, refused: frozenset[int] = frozenset()) -> None:
        self.refused, self.starts = refused, []  # type: ignore[var-annotated]

    def rewind(self, start: Any) -> bool:
        self.starts.append((start.partition, start.offset))
        return start.partition not in self.refused


def wide_poll(count: int, partitions: int) -> list[Message]:
    now = int(time.time() * 1000)
    wide = {**demo_rows(1, seed=4)[0], **{f"unknown-{i}": 1.0 for i in range(2_000)}}  # not walked: decoded
    records = []
    for i in range(count):
        value = REQUESTS.encode({"request_id": f"r-{i}", "created_at": now, "deadline": now + 1_000,
                                 "reply_to": None, "features": wide, "payload": None, "metadata": {}})
        records.append(record(value, i // partitions, i % partitions))
    return records


@pytest.mark.parametrize("refused", [frozenset(), frozenset({1})])
def test_a_poll_of_wide_requests_scores_one_part_and_reads_the_rest_again(
    monkeypatch: pytest.MonkeyPatch, refused: frozenset[int]
) -> None:
    """One part per pass of the loop: scored in several parts, one poll held the loop parts x
    models x the timeout, past every bound sized for one batch (a review)."""
    from services.core.service import Positions

    outputs = Outputs()
    scorer = batch_scorer(WorkerSettings(model="demo:champion", predict_timeout_s=0.0), outputs)
    records = wide_poll(10, partitions=2)  # partition 0: r-0, r-2, ...; partition 1: r-1, r-3, ...
    size = len(records[0].value())
    monkeypatch.setattr(worker, "PART_BYTES", 3 * size)
    decoded: list[int] = []
    decode = scorer._decode
    monkeypatch.setattr(scorer, "_decode", lambda msgs: decoded.append(len(msgs)) or decode(msgs))
    consumer, positions = Rewinds(refused), Positions()
    loop = types.SimpleNamespace(_scorer=scorer, ctx=types.SimpleNamespace(consumer=consumer), positions=positions)
    worker.ModelWorker.on_batch(loop, records)  # type: ignore[arg-type]
    assert consumer.starts == [(1, 1), (0, 2)]  # r-3 and r-4: the first of each partition's rest
    if not refused:
        assert decoded == [3] and [s["request_id"] for s in outputs.scores] == ["r-0", "r-1", "r-2"]
        assert {tp.partition: tp.offset for tp in positions.finished()} == {0: 2, 1: 1}
    else:  # partition 1 could not be rewound: its rest is scored now, a part at a time
        assert decoded == [3, 3, 1] and len(outputs.scores) == 7
        assert {tp.partition: tp.offset for tp in positions.finished()} == {0: 2, 1: 5}


def test_a_normal_poll_is_one_part() -> None:
    records = [record(b"x" * 700, i) for i in range(256)]
    part, rest = worker.first_part(records, worker.PART_BYTES)
    assert part == records and rest == []


def test_a_request_whose_features_name_one_feature_twice_gets_an_error_score_from_each_model() -> None:
    """An Avro map may repeat a key; a reader keeps the last value, and the worker scored the
    request with confidence on one of the two (a review: a full row plus mean_radius=1000 again
    scored 'malignant'). Each model's Score says why it was not scored instead; a batch mixing it
    with valid requests scores those as they are scored alone."""
    now = int(time.time() * 1000)
    settings = WorkerSettings(model="demo:champion", co_host=("challenger=demo:challenger",), predict_timeout_s=0.0)
    outputs = Outputs()
    scorer = batch_scorer(settings, outputs)
    rows = demo_rows(3, seed=6)

    def encoded(rid: str, features: dict[str, float]) -> bytes:
        return REQUESTS.encode({"request_id": rid, "created_at": now, "deadline": now + 1_000, "reply_to": None,
                                "features": features, "payload": None, "metadata": {}})

    # The same length as mean_radius: its bytes turned into a second mean_radius entry.
    twice = encoded("twice", {**rows[1], "mean_radiuX": 1000.0}).replace(b"mean_radiuX", b"mean_radius")
    assert REQUESTS.decode(twice)["features"]["mean_radius"] == 1000.0 and len(REQUESTS.decode(twice)["features"]) == 30
    scorer.on_batch([record(encoded("first", rows[0]), 0), record(twice, 1), record(encoded("last", rows[2]), 2)])
    alone = Outputs()
    scorer.producer = alone
    scorer.on_batch([record(encoded("first", rows[0]), 0), record(encoded("last", rows[2]), 2)])
    by_id = {(s["model"], s["request_id"]): s for s in outputs.scores}
    for model in ("champion", "challenger"):
        refused = by_id[(model, "twice")]
        assert refused["score"] is None and refused["error"].startswith(
            "the features name a feature more than once (31 entries for 30 names)")
    assert [(s["model"], s["request_id"], s["score"]) for s in alone.scores] == [
        (s["model"], s["request_id"], s["score"]) for s in outputs.scores if s["request_id"] != "twice"]


class _CatchUpConsumer:
    """A consumer whose group never committed, and whose time lookup failed for partition 1."""

    def __init__(self) -> None:
        self.assigned: list[Any] = []
        self.lookups: list[list[int]] = []

    def committed(self, partitions: list[Any], timeout: float) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition(tp.topic, tp.partition, -1001) for tp in partitions]

    def offsets_for_times(self, partitions: list[Any], timeout: float) -> list[Any]:
        from confluent_kafka import KafkaError

        self.lookups.append([tp.partition for tp in partitions])
        # As confluent-kafka's TopicPartitions read (their error cannot be set from Python).
        return [types.SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=-1 if tp.partition == 1 else 40,
                                      error=KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION) if tp.partition == 1
                                      else None) for tp in partitions]

    def get_watermark_offsets(self, tp: Any, timeout: float = 0, cached: bool = False) -> tuple[int, int]:
        return 0, 900

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = [(tp.partition, tp.offset) for tp in partitions]


def test_a_partition_whose_catch_up_lookup_failed_is_tried_again_then_left_to_the_groups_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A lookup error was taken for "no record after --start-at": the partition began at its end and
    that end was committed, its history skipped for good (a review). Its lookup is tried again;
    out of tries it alone starts as the group would, the others at --start-at (a review of the mend:
    a failed partition sent them all to the group's start)."""
    from confluent_kafka import OFFSET_INVALID, TopicPartition

    from services.model_worker.worker import CATCH_UP_TRIES, ModelWorker

    monkeypatch.setattr(worker, "CATCH_UP_PAUSE_S", 0.0)
    scorer = ModelWorker.__new__(ModelWorker)
    scorer.name = "champion"
    consumer = _CatchUpConsumer()
    partitions = [TopicPartition("rdv.requests", p) for p in range(3)]
    with caplog.at_level("WARNING"):
        scorer._start_new_partitions_at(consumer, partitions, 1_700_000_000_000)
    assert consumer.assigned == [(0, 40), (1, OFFSET_INVALID), (2, 40)]
    assert consumer.lookups == [[0, 1, 2], *[[1]] * (CATCH_UP_TRIES - 1)]
    assert "where --start-at begins was not found on partitions [1]" in caplog.text


def test_a_new_group_about_to_score_a_long_history_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A model moved into a co-hosting worker got a new group, which scored every request the topic
    kept again, its fresh requests waiting behind them, without a word (a review)."""
    from confluent_kafka import TopicPartition

    from services.model_worker.worker import ModelWorker

    worker = ModelWorker.__new__(ModelWorker)
    worker.name, worker._group_id = "champion+challenger", "rdv.model.champion+challenger"
    with caplog.at_level("WARNING"):
        worker._say_earliest_start(_CatchUpConsumer(), [TopicPartition("rdv.requests", p) for p in range(3)])
    assert ("group rdv.model.champion+challenger has no committed offsets on 3 partition(s): it scores the 2700 "
            "requests kept there") in caplog.text and "--start-from latest" in caplog.text


class _AloneFailsConsumer(_CatchUpConsumer):
    """Asked alone, partition 1 (no leader) fails the whole lookup, as librdkafka does; partition 2
    has no record after the time, and the first ask of its end fails."""

    def __init__(self) -> None:
        super().__init__()
        self.ends_asked = 0

    def offsets_for_times(self, partitions: list[Any], timeout: float) -> list[Any]:
        from confluent_kafka import KafkaError, KafkaException

        if [tp.partition for tp in partitions] == [1]:
            self.lookups.append([1])
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))
        found = super().offsets_for_times(partitions, timeout)
        for tp in found:
            if tp.partition == 2:
                tp.offset = -1
        return found

    def get_watermark_offsets(self, tp: Any, timeout: float = 0, cached: bool = False) -> tuple[int, int]:
        from confluent_kafka import KafkaError, KafkaException

        self.ends_asked += 1
        if self.ends_asked == 1:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return super().get_watermark_offsets(tp, timeout, cached)


def test_a_lookup_failing_whole_when_asked_alone_keeps_what_was_found_and_a_raise_sets_no_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Asked alone, a partition without a leader fails the whole call: that threw away the lookups
    found and sent every partition to --start-from; and an attempt that raised left the offsets it
    had set for the next (a review of the mend)."""
    from confluent_kafka import OFFSET_INVALID, KafkaException, TopicPartition

    from services.model_worker.worker import ModelWorker

    monkeypatch.setattr(worker, "CATCH_UP_PAUSE_S", 0.0)
    scorer = ModelWorker.__new__(ModelWorker)
    scorer.name = "champion"
    consumer = _AloneFailsConsumer()
    partitions = [TopicPartition("rdv.requests", p) for p in range(3)]
    with pytest.raises(KafkaException):  # the end of partition 2 not read: `_catch_up` tries again
        scorer._start_new_partitions_at(consumer, partitions, 1_700_000_000_000)
    assert [tp.offset for tp in partitions] == [OFFSET_INVALID] * 3 and consumer.assigned == []
    scorer._start_new_partitions_at(consumer, partitions, 1_700_000_000_000)
    assert consumer.assigned == [(0, 40), (1, OFFSET_INVALID), (2, 900)]


class SizedOutputs(Outputs):
    """A producer whose scores topic refuses a record over `limit` bytes, as the real one does."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def produce(self, topic: str, value: bytes, **kwargs: Any) -> None:
        from services.core.errors import RecordTooLarge

        if len(value) > self.limit:
            raise RecordTooLarge(f"a record of {len(value)} bytes is over what {topic} takes")
        super().produce(topic, value, **kwargs)


def test_a_score_over_what_the_scores_topic_takes_is_written_as_an_error_score_without_its_label() -> None:
    """No Score at all was written (a dead letter only with --dead-letter), though it was counted
    as an error Score, and the rendezvous waited for the model to its deadline (a review)."""
    from services.model_worker.models import Prediction

    now = int(time.time() * 1000)
    outputs = SizedOutputs(limit=600)
    scorer = batch_scorer(WorkerSettings(model="demo:champion", predict_timeout_s=0.0), outputs)
    hosted = scorer.w.hosted[0]
    requests = [{"request_id": rid, "deadline": now + 1_000} for rid in ("long-label", "short")]
    results = [worker.Scored(Prediction(0.5, "L" * 1_000), None, 1.0), worker.Scored(Prediction(0.5, "ok"), None, 1.0)]
    scorer._write(hosted, results, requests, [record(b"", 0), record(b"", 1)], now)
    by_id = {s["request_id"]: s for s in outputs.scores}
    assert by_id["short"]["label"] == "ok" and by_id["short"]["error"] is None
    refused = by_id["long-label"]
    assert refused["score"] is None and refused["label"] is None
    assert refused["error"].startswith("its Score of ") and "over what the scores topic takes" in refused["error"]
