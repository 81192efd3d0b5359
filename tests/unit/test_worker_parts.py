"""A model worker scores a poll's requests in parts of bounded bytes (services/model_worker/worker.py):
decoded whole, wide requests' dicts (~8x their bytes) took a worker past its pod's memory limit."""

from __future__ import annotations

import time
import types
from typing import Any

import pytest

from services.core.codec import codec
from services.model_worker import worker
from services.model_worker.models import demo_rows
from services.model_worker.settings import WorkerSettings
from services.model_worker.walked import RequestWalker
from services.model_worker.watchdog import ScoringWatchdog

REQUESTS, SCORES = codec("request"), codec("score")


class Record:
    """What the worker reads of a Kafka record."""

    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def value(self) -> bytes:
        return self._value

    def offset(self) -> int:
        return self._offset

    def partition(self) -> int:
        return 0

    def topic(self) -> str:
        return "rdv.requests"

    def key(self) -> None:
        return None

    def headers(self) -> None:
        return None


class Outputs:
    """The producer's surface the scorer writes scores with."""

    def __init__(self) -> None:
        self.scores: list[dict[str, Any]] = []

    def produce(self, topic: str, value: bytes, **_kwargs: Any) -> None:
        self.scores.append(SCORES.decode(value))


def test_parts_keep_the_order_and_the_bound_and_a_large_record_goes_alone() -> None:
    records = [Record(b"x" * size, i) for i, size in enumerate([3, 3, 3, 9, 1, 2, 4])]
    parts = worker.parts_by_bytes(records, 6)  # type: ignore[arg-type]
    assert [[r.offset() for r in part] for part in parts] == [[0, 1], [2], [3], [4, 5], [6]]
    assert worker.parts_by_bytes([], 6) == []


def test_a_poll_of_wide_requests_is_decoded_in_parts_and_every_request_scored(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = WorkerSettings(model="demo:champion", predict_timeout_s=0.0)
    hosted = worker.hosted_models(settings, "host-1")
    outputs = Outputs()
    scorer = worker._BatchScorer(
        types.SimpleNamespace(settings=settings, hosted=hosted, topics=settings.topics(), scored=0,
                              _walker=RequestWalker(REQUESTS, worker.shared_names(hosted))),  # type: ignore[arg-type]
        outputs, None, ScoringWatchdog(0.0, lambda h: h.name, outputs, None))  # type: ignore[arg-type]
    now = int(time.time() * 1000)
    wide = {**demo_rows(1, seed=4)[0], **{f"unknown-{i}": 1.0 for i in range(2_000)}}  # not walked: decoded
    records = [Record(REQUESTS.encode({"request_id": f"r-{i}", "created_at": now, "deadline": now + 1_000,
                                       "reply_to": None, "features": wide, "payload": None, "metadata": {}}), i)
               for i in range(10)]
    size = len(records[0].value())
    monkeypatch.setattr(worker, "PART_BYTES", 3 * size)
    decoded: list[int] = []
    decode = scorer._decode

    def noted(messages: list[Any]) -> Any:
        decoded.append(sum(len(m.value()) for m in messages))
        return decode(messages)

    monkeypatch.setattr(scorer, "_decode", noted)
    scorer.on_batch(records)  # type: ignore[arg-type]
    assert decoded == [3 * size, 3 * size, 3 * size, size]
    assert [s["request_id"] for s in outputs.scores] == [f"r-{i}" for i in range(10)]
