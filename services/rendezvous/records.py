"""What the join reads, as plain values: a request or a score, with where and when the log took it.

The service turns Kafka records into these (`request_in`, `score_in`), so the join itself never
sees a Kafka type and is unit-tested with plain values. `log_time` is the record's timestamp on
the broker (`message.timestamp.type=LogAppendTime` on the requests and scores topics): the
clock every decision is measured against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

from services.core.codec import Codec
from services.core.compiled_requests import (
    INPUTS,
    INPUTS_END,
    Walker,
    refuse_unwalked,
    request_walker,
    unwalked,
    walk_request,
    walked_problem,
)
from services.core.errors import DecodeFailed
from services.core.request_inputs import digest_of, inputs_digest
from services.core.requests import id_too_long, request_problem
from services.core.score_limits import MAX_ERROR_CHARS, oversized
from services.rendezvous.compiled_records import SCORE_LAYOUT, double_at, walk_score

T = TypeVar("T")


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
    inputs: bytes = b""  # digest of what the models score: features and payload (`inputs_digest`)


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
    return _read(codec, request_walker(codec), walk_request, _request_walked, request_decoded,
                 value, partition, offset, log_time)


def request_decoded(codec: Codec, value: bytes | None, partition: int, offset: int, log_time: int) -> RequestIn:
    """`request_in` through fastavro's decode of the whole record."""
    request = codec.decode(value)
    rid = _answerable(request["request_id"])
    reply = request["reply_to"]
    return RequestIn(
        rid, partition, offset, log_time, request["created_at"], request["deadline"],
        reply["topic"] if reply else None, reply["partition"] if reply else None, request_problem(request),
        digest_of(request),
    )


def score_in(codec: Codec, value: bytes | None, partition: int, offset: int, log_time: int) -> ScoreIn:
    return _read(codec, _score_walker(codec), walk_score, _score_walked, score_decoded,
                 value, partition, offset, log_time)


def _read(
    codec: Codec, walker: Walker, walk: Callable[[bytes, int], tuple[int, ...]],
    walked: Callable[[bytes, tuple[int, ...], int, int, int], T],
    decoded: Callable[[Codec, bytes | None, int, int, int], T],
    value: bytes | None, partition: int, offset: int, log_time: int,
) -> T:
    """A record of the current schema read by its compiled walk (`walked`), and refused where the
    walk refuses it (`refuse_unwalked`); any other by fastavro (`decoded`). A registry id met in
    that decode may name the current schema: the record is then walked too, as every later one
    of its id will be (an id the skeleton left unresolved, or evicted; a review)."""
    skip = walker.body_at(value)
    decoded_already = not skip
    if decoded_already:
        result = decoded(codec, value, partition, offset, log_time)  # another framing or schema
        skip = walker.body_at(value)
        if not skip:
            return result
    assert value is not None
    fields = walk(value, skip)
    if fields[0]:
        return walked(value, fields, partition, offset, log_time)
    if decoded_already:
        raise unwalked(codec)  # fastavro read it: its decode has no reason to give
    refuse_unwalked(codec, value)


def score_decoded(codec: Codec, value: bytes | None, partition: int, offset: int, log_time: int) -> ScoreIn:
    """`score_in` through fastavro's decode of the whole record."""
    score = codec.decode(value)
    _joinable(score["request_id"], score["model"])
    _small(score["label"], score["version"], score["model"])
    error = score["error"]
    return ScoreIn(
        score["request_id"], partition, offset, log_time, score["model"], score["version"], score["score"],
        score["label"], error[:MAX_ERROR_CHARS] if error is not None else None, score["compute_ms"],
    )


# Per codec, not per (codec, layout): a call hashes its key, and a layout is a nested tuple.
@cache
def _score_walker(codec: Codec) -> Walker:
    return Walker(codec, SCORE_LAYOUT)


def _answerable(request_id: str) -> str:
    """The request id of a request, which it is answered by; `DecodeFailed` if empty, or too long
    for its answer to be written (core/requests.py: id_too_long)."""
    if not request_id:
        raise DecodeFailed("request_id is empty: nothing to answer it by")
    if too_long := id_too_long(request_id):
        raise DecodeFailed(f"{too_long}: its answer could not be written")
    return request_id


def _joinable(request_id: str, model: str) -> None:
    """`DecodeFailed` unless a score names the request and the model it joins by (no request has
    an id over MAX_REQUEST_ID)."""
    if not request_id or not model:
        raise DecodeFailed("a score needs a request_id and a model name")
    if too_long := id_too_long(request_id):
        raise DecodeFailed(too_long)


def _small(label: str | None, version: str, model: str) -> None:
    """`DecodeFailed` for a label, version or model name longer than a worker writes
    (score_limits.py): kept in its mailbox, and by an orphan's, a forged one near the record size
    held a megabyte a score."""
    if too_long := oversized(label, version, model):
        raise DecodeFailed(f"a score with {too_long}")


def _text(value: bytes, start: int, end: int) -> str:
    return value[start:end].decode()  # the walk checked it is UTF-8


def _request_walked(value: bytes, fields: tuple[int, ...], partition: int, offset: int, log_time: int) -> RequestIn:
    """`request_in` from a valid Request's walk (core/compiled_requests.walk_request)."""
    _ok, rid, rid_end, created, deadline, reply, topic, topic_end, has_partition, reply_partition = fields[:10]
    request_id = _answerable(_text(value, rid, rid_end))
    return RequestIn(
        request_id, partition, offset, log_time, created, deadline,
        _text(value, topic, topic_end) if reply else None, reply_partition if reply and has_partition else None,
        walked_problem(fields, request_id), inputs_digest(value[fields[INPUTS] : fields[INPUTS_END]]),
    )  # fmt: skip


def _score_walked(value: bytes, fields: tuple[int, ...], partition: int, offset: int, log_time: int) -> ScoreIn:
    """`score_in` from a valid Score's walk (compiled_records.walk_score)."""
    (_ok, rid, rid_end, model, model_end, version, version_end, scored, score_at, labelled, label, label_end,
     failed, error, error_end, compute_at) = fields  # fmt: skip
    request_id, model_name = _text(value, rid, rid_end), _text(value, model, model_end)
    _joinable(request_id, model_name)
    version_text, label_text = _text(value, version, version_end), _text(value, label, label_end) if labelled else None
    _small(label_text, version_text, model_name)
    return ScoreIn(
        request_id, partition, offset, log_time, model_name, version_text,
        double_at(value, score_at) if scored else None, label_text,
        _text(value, error, error_end)[:MAX_ERROR_CHARS] if failed else None, double_at(value, compute_at),
    )  # fmt: skip
