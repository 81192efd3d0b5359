"""What the join reads, as plain values: a request or a score, with where and when the log took it.

The service turns Kafka records into these (`request_in`, `score_in`), so the join itself never
sees a Kafka type and is unit-tested with plain values. `log_time` is the record's timestamp on
the broker (`message.timestamp.type=LogAppendTime` on the requests and scores topics): the
clock every decision is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.core.codec import Codec
from services.core.errors import DecodeFailed
from services.core.requests import request_problem


@dataclass(slots=True)
class RequestIn:
    request_id: str
    partition: int
    offset: int
    log_time: int
    created_at: int
    deadline: int  # absolute epoch ms as sent; 0 = the schedule's default budget
    reply_topic: str | None = None
    reply_partition: int | None = None
    problem: str | None = None  # why the request cannot be scored (it is answered ERROR)


@dataclass(slots=True)
class ScoreIn:
    request_id: str
    partition: int
    offset: int
    log_time: int
    model: str
    version: str
    score: float | None
    label: str | None
    error: str | None
    compute_ms: float = 0.0


def request_in(codec: Codec, value: bytes | None, partition: int, offset: int, log_time: int) -> RequestIn:
    """A RequestIn; `BadInput` if the bytes are no Request or carry no request_id to answer."""
    request = codec.decode(value)
    rid = request["request_id"]
    if not rid:
        raise DecodeFailed("request_id is empty: nothing to answer it by")
    reply = request["reply_to"]
    return RequestIn(
        rid, partition, offset, log_time, request["created_at"], request["deadline"],
        reply["topic"] if reply else None, reply["partition"] if reply else None, request_problem(request),
    )


def score_in(codec: Codec, value: bytes | None, partition: int, offset: int, log_time: int) -> ScoreIn:
    score = codec.decode(value)
    if not score["request_id"] or not score["model"]:
        raise DecodeFailed("a score needs a request_id and a model name")
    return ScoreIn(
        score["request_id"], partition, offset, log_time, score["model"], score["version"], score["score"],
        score["label"], score["error"], score["compute_ms"],
    )
