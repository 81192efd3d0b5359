"""Micro-batches of requests read by the compiled request walk: the worker's common case, cheaper.

A request framed with the current Request schema that names exactly its models' features, in the
signatures' order (a client writes a row's features in the order it was given them: the demo's
rows and a model's own feature list are in that order), all finite, is what a worker expects —
and for it fastavro's dict of the whole record (17 µs) and `Signature.prepare`'s pass over that
dict are work for nothing: the walk (services/core/compiled_requests.py) checks the record and
writes its features straight into the model's matrix; the id and the deadline are all the Score
writer still reads. A batch with any other record — damaged, of another writer schema or framing,
with features in another order, missing or extra, a NaN, not a request at all — is read the usual
way, whole (worker.py), so its errors, skips and dead letters are fastavro's; a record of the
current schema the walk finds invalid is refused there too (`decode`), even where fastavro reads it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.core.codec import Codec
from services.core.compiled_requests import (
    DEADLINE,
    EXACT,
    ID,
    ID_END,
    VALID,
    decode_request,
    feature_names,
    request_walker,
    walk_features,
    walked_problem,
    warm_up_features,
)
from services.core.signatures import Prepared


@dataclass(frozen=True)
class WalkedBatch:
    requests: list[dict[str, Any]]  # request_id and deadline of each record, in order
    checked: tuple[Prepared, float]  # the model's matrix of every record; the ms the walk took


class RequestWalker:
    """Reads whole batches for the feature names every model of the worker reads (None: they differ)."""

    def __init__(self, codec: Codec, names: tuple[str, ...] | None) -> None:
        self._codec = codec
        self._walker = request_walker(codec)
        self.usable = self._walker.usable and bool(names)
        self._names, self._ends = feature_names(names or ())

    def warm_up(self) -> None:
        """Compile (or load from the cache) the walk now, so that no batch waits for it."""
        if self._walker.usable:  # `decode` walks too, whatever the models read
            warm_up_features()

    def decode(self, value: bytes | None) -> dict[str, Any]:
        """fastavro's dict of one request, refused where the walk refuses it (fastavro would read
        some invalid bytes: core/compiled_requests.decode_request)."""
        return decode_request(self._codec, value)

    def read(self, values: Sequence[bytes | None]) -> WalkedBatch | None:
        """The batch, or None when any of its records needs the usual path."""
        if not self.usable:
            return None
        started = time.perf_counter()
        rows = np.empty((len(values), len(self._ends) - 1), dtype=np.float64)
        requests = []
        body_at, names, ends = self._walker.body_at, self._names, self._ends
        for i, value in enumerate(values):
            skip = body_at(value)
            if not skip:
                return None
            assert value is not None  # `body_at` saw to that
            fields = walk_features(value, skip, names, ends, rows, i)
            if not fields[VALID] or not fields[EXACT]:
                return None
            request_id = value[fields[ID] : fields[ID_END]].decode()
            if walked_problem(fields, request_id) is not None:
                return None
            requests.append({"request_id": request_id, "deadline": fields[DEADLINE]})
        prepared = Prepared(rows, list(range(len(rows))), {})
        return WalkedBatch(requests, (prepared, (time.perf_counter() - started) * 1000.0))
