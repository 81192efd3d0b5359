"""Score records as bytes, built field by field: the worker's per-request output cost.

fastavro's writer walks the schema for every record (≈ 15 µs per Score here), more than a
demo model now needs to score a row. A Score is a flat record whose model, version and instance
never change in a worker and whose times are shared by a micro-batch, so those bytes are built
once and each record only adds its request id, score, label, error and deadline. The bytes are
the Avro binary encoding of `schemas/score.avsc` behind the same single-object header the codec
writes (the unit tests compare them with `codec("score").encode` on many records).

`LAYOUT` is the field list this writer knows. If score.avsc ever differs from it, or a model
returns something outside the plain types below (a numpy float32, a non-string label, ...), the
record goes through the generic codec instead, so the output is always the codec's.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from services.core.avro_writer import long_bytes, string_bytes
from services.core.codec import codec
from services.core.score_limits import MAX_ERROR_CHARS, MAX_LABEL_CHARS

__all__ = ["LAYOUT", "Result", "ScoreWriter", "layout_matches", "unscored"]

LAYOUT: tuple[tuple[str, Any], ...] = (
    ("request_id", "string"),
    ("model", "string"),
    ("version", "string"),
    ("instance", "string"),
    ("score", ["null", "double"]),
    ("label", ["null", "string"]),
    ("error", ["null", "string"]),
    ("deadline", "long"),
    ("received_at", "long"),
    ("scored_at", "long"),
    ("compute_ms", "double"),
)
_NULL = b"\x00"
_SOME = b"\x02"  # union branch 1 (the non-null type), zig-zag encoded
_DOUBLE = struct.Struct("<d").pack
_MIN_LONG, _MAX_LONG = -(1 << 63), (1 << 63) - 1


class Result(Protocol):
    """What the worker knows about one scored request (worker.Scored, or `unscored`)."""

    @property
    def prediction(self) -> Any: ...

    @property
    def error(self) -> str | None: ...

    @property
    def compute_ms(self) -> float: ...


class _Unscored(NamedTuple):
    prediction: None
    error: str
    compute_ms: float


def unscored(reason: str, compute_ms: float) -> Result:
    """The result of a request its model gave no output for (stuck on its batch): its Score is an
    error saying `reason`. The watchdog's error Scores and the rescue process's are these, written
    by `ScoreWriter.encode_batch` as every other Score."""
    return _Unscored(None, reason, compute_ms)


def hung_reasons(stuck: str, timeout_s: float, models: int, *, holding_gil: bool = False) -> list[str]:
    """The reasons of the error Scores of a batch model `stuck` hung on, one per model whose turn
    had not ended: the stuck one's first, then the co-hosted ones after it that never got a turn.
    The watchdog (`holding_gil` False) and the rescue process (True: the worker could not even run
    its watchdog) write the same words, so a reader of the scores need not know which wrote them."""
    why = " (stuck holding the interpreter lock)" if holding_gil else ""
    first = f"model {stuck} did not answer within {timeout_s:g} s{why}"
    return [first] + [f"not scored: co-hosted model {stuck} hung on this batch"] * (models - 1)


def _plain_type(node: Any) -> Any:
    if isinstance(node, Mapping):
        return node["type"]  # e.g. {"type": "long", "logicalType": "timestamp-millis"}
    return node


def layout_matches(schema: Mapping[str, Any]) -> bool:
    """True when `schema` (score.avsc) has exactly the fields, in the order, this writer writes."""
    fields = tuple((f["name"], _plain_type(f["type"])) for f in schema.get("fields", ()))
    return fields == LAYOUT


class ScoreWriter:
    """Encodes the Score records of one worker (model, version and instance fixed)."""

    def __init__(self, model: str, version: str, instance: str) -> None:
        self._codec = codec("score")
        self._fast = layout_matches(self._codec.schema)
        self._names = {"model": model, "version": version, "instance": instance}
        self._constant = string_bytes(model) + string_bytes(version) + string_bytes(instance)
        self._labels: dict[str, bytes] = {}

    def encode_batch(
        self, requests: Sequence[Mapping[str, Any]], results: Sequence[Result], received_at: int, scored_at: int
    ) -> tuple[list[bytes], list[int]]:
        """One encoded Score per request; also the indices of the outputs that could not be
        encoded (each of those becomes an error Score saying why)."""
        tails: dict[float, bytes] = {}
        times = long_bytes(received_at) + long_bytes(scored_at)
        values: list[bytes] = []
        unencodable: list[int] = []
        for index, (request, result) in enumerate(zip(requests, results, strict=True)):
            try:
                value = self._fast_record(request, result, times, tails) if self._fast else None
            except Exception:  # noqa: BLE001 - e.g. a label with a lone surrogate: the generic path says why
                value = None
            if value is None:
                value, failed = self._generic(request, result, received_at, scored_at)
                if failed:
                    unencodable.append(index)
            values.append(value)
        return values, unencodable

    def _fast_record(
        self, request: Mapping[str, Any], result: Result, times: bytes, tails: dict[float, bytes]
    ) -> bytes | None:
        """The record's bytes, or None when a value is not of the plain type this path writes."""
        request_id, deadline, prediction = request["request_id"], request["deadline"], result.prediction
        score = label = None
        if prediction is not None:
            score, label = prediction.score, prediction.label
        error, compute_ms = result.error, result.compute_ms
        if (
            type(request_id) is not str or type(deadline) is not int or not _MIN_LONG <= deadline <= _MAX_LONG
            or (score is not None and type(score) is not float)
            or (label is not None and (type(label) is not str or len(label) > MAX_LABEL_CHARS))
            or (error is not None and type(error) is not str)
            or type(compute_ms) is not float
        ):
            return None
        tail = tails.get(compute_ms)
        if tail is None:
            tail = tails[compute_ms] = times + _DOUBLE(compute_ms)
        return b"".join((
            self._codec.header,
            string_bytes(request_id),
            self._constant,
            _NULL if score is None else _SOME + _DOUBLE(score),
            _NULL if label is None else self._label(label),
            _NULL if error is None else _SOME + string_bytes(error[:MAX_ERROR_CHARS]),
            long_bytes(deadline),
            tail,
        ))

    def _label(self, label: str) -> bytes:
        encoded = self._labels.get(label)
        if encoded is None:
            encoded = _SOME + string_bytes(label)
            if len(self._labels) < 1024:  # classifiers have few labels; a regressor's text never fills it
                self._labels[label] = encoded
        return encoded

    def _generic(
        self, request: Mapping[str, Any], result: Result, received_at: int, scored_at: int
    ) -> tuple[bytes, int]:
        prediction = result.prediction
        error = result.error
        record = {
            "request_id": request["request_id"],
            **self._names,
            # getattr: a model returning something else than Predictions (plain floats, None) is
            # that request's error below (not encodable), never the worker's end.
            "score": getattr(prediction, "score", prediction) if prediction is not None else None,
            "label": getattr(prediction, "label", None) if prediction is not None else None,
            # Escaped: an exception's text may hold what UTF-8 cannot carry (a lone surrogate).
            "error": error[:MAX_ERROR_CHARS].encode("utf-8", "backslashreplace").decode() if isinstance(error, str)
            else error,
            "deadline": request["deadline"],
            "received_at": received_at,
            "scored_at": scored_at,
            "compute_ms": result.compute_ms,
        }
        label = record["label"]
        if isinstance(label, str) and len(label) > MAX_LABEL_CHARS:
            record.update(score=None, label=None,
                          error=f"the model's label of {len(label)} characters is over the limit of {MAX_LABEL_CHARS}")
            return self._codec.encode(record), 1 if error is None else 0
        try:
            return self._codec.encode(record), 0
        # A model output Avro cannot carry (e.g. a label that is not a string) is that
        # request's error, never the worker's end.
        except Exception as exc:  # noqa: BLE001
            failed = 1 if error is None else 0
            why = f"model output not encodable: {exc}"[:MAX_ERROR_CHARS]
            # The reason itself may hold what could not be encoded (a lone surrogate): escaped.
            why = why.encode("utf-8", "backslashreplace").decode("utf-8")
            record.update(score=None, label=None, error=why)
            return self._codec.encode(record), failed
