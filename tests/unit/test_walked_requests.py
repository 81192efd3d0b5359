"""The model worker's walked batches (services/model_worker/walked.py): a batch the walk takes
gives the models what fastavro's decode and the signature's check give them, bit for bit; any
batch with one record of another kind is left to that usual path, whole."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.client.client import make_request
from services.core.codec import HEADER_SIZE, Codec, codec
from services.core.errors import DecodeFailed
from services.core.signatures import FeatureSpec, Signature
from services.model_worker.models import Prediction, demo_rows, load_model
from services.model_worker.walked import RequestWalker
from services.model_worker.worker import Hosted, score_co_hosted, shared_names

REQUESTS = codec("request")
NAMES = tuple(demo_rows(1, seed=3)[0])


def encoded(features: dict[str, float], **fields: Any) -> bytes:
    """A request as any producer may write it: the fields given replace a valid one's (the client
    refuses to send, e.g., one without features)."""
    record = make_request({"x": 1.0}, budget_ms=200, reply_topic="replies", reply_partition=None, request_id="r-1")
    return REQUESTS.encode({**record, "features": dict(features), **fields})


def prepared_usually(values: list[bytes], signature: Signature) -> np.ndarray:
    prepared = signature.prepare([REQUESTS.decode(v)["features"] for v in values])
    assert not prepared.errors
    return prepared.matrix


def test_a_walked_batch_is_what_decoding_and_checking_give() -> None:
    rows = demo_rows(20, seed=5)
    values = [REQUESTS.encode(make_request(r, budget_ms=200, reply_topic=None, reply_partition=None)) for r in rows]
    walked = RequestWalker(REQUESTS, NAMES).read(values)
    assert walked is not None
    decoded = [REQUESTS.decode(v) for v in values]
    assert [(r["request_id"], r["deadline"]) for r in walked.requests] == [
        (d["request_id"], d["deadline"]) for d in decoded]
    prepared, _ms = walked.checked
    expected = prepared_usually(values, Signature.all_required(NAMES))
    assert prepared.matrix.tobytes() == expected.tobytes()
    assert prepared.valid == list(range(20)) and not prepared.errors


GOOD = dict(zip(NAMES, np.linspace(0.5, 30.5, len(NAMES)).tolist(), strict=True))
UNUSUAL = {
    "features in another order": lambda: encoded(dict(reversed(list(GOOD.items())))),
    "a feature missing": lambda: encoded({k: v for k, v in GOOD.items() if k != NAMES[3]}),
    "an extra feature": lambda: encoded({**GOOD, "extra": 1.0}),
    "a NaN": lambda: encoded({**GOOD, NAMES[0]: math.nan}),
    "an infinity": lambda: encoded({**GOOD, NAMES[-1]: -math.inf}),
    "an empty request id": lambda: encoded(GOOD, request_id=""),
    "no created_at": lambda: encoded(GOOD, created_at=0),
    "no value": lambda: None,
    "a cut record": lambda: encoded(GOOD)[:-4],
    "a byte too many": lambda: encoded(GOOD) + b"\x00",
    "another writer schema": lambda: b"\xc3\x01" + bytes(8) + encoded(GOOD)[HEADER_SIZE:],
    "registry framing": lambda: b"\x00\x00\x00\x00\x07" + encoded(GOOD)[HEADER_SIZE:],
}


@pytest.mark.parametrize("kind", sorted(UNUSUAL))
def test_one_unusual_record_sends_the_whole_batch_the_usual_way(kind: str) -> None:
    walker = RequestWalker(REQUESTS, NAMES)
    good = encoded(GOOD)
    assert walker.read([good, good]) is not None
    assert walker.read([good, UNUSUAL[kind](), good]) is None


def test_no_walk_when_the_models_read_different_names() -> None:
    a = Hosted(load_model("demo:champion"), "a", "", "host-1", "reject")
    b = Hosted(load_model("demo:canary"), "b", "", "host-1", "reject")
    assert shared_names([a, b]) == NAMES  # other requirements, the same names: one walk serves both
    few = Signature((FeatureSpec(NAMES[0]),))
    b.signature = few
    assert shared_names([a, b]) is None
    assert RequestWalker(REQUESTS, None).read([encoded(GOOD)]) is None


SMALL = ("a", "b", "c")
rows = st.dictionaries(st.sampled_from([*SMALL, "d"]), st.floats(width=64), max_size=4)
ids = st.text(max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(rows, ids, st.integers(0, 2**40)), min_size=1, max_size=4))
def test_the_walk_takes_exactly_the_batches_a_strict_signature_takes_as_they_are(batch: list[Any]) -> None:
    values = [encoded(features, request_id=rid, created_at=created) for features, rid, created in batch]
    walked = RequestWalker(REQUESTS, SMALL).read(values)
    decoded = [REQUESTS.decode(v) for v in values]
    as_is = all(tuple(d["features"]) == SMALL and all(map(math.isfinite, d["features"].values()))
                and d["request_id"] and d["created_at"] > 0 for d in decoded)  # fmt: skip
    assert (walked is not None) == as_is
    if walked is not None:
        expected = prepared_usually(values, Signature.all_required(SMALL))
        assert walked.checked[0].matrix.tobytes() == expected.tobytes()


class _Doubling:
    """A model that scales its input in place (allowed: the batch is its own)."""

    name, version = "doubling", "1"
    feature_names: tuple[str, ...] = SMALL

    def load(self) -> None:
        pass

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        batch *= 2.0
        return [Prediction(float(row.sum())) for row in batch]


def test_co_hosted_models_each_get_their_own_copy_of_a_walked_batch() -> None:
    hosted = [Hosted(_Doubling(), f"m{i}", "", "host-1", "reject") for i in range(3)]
    values = [encoded({"a": 1.0, "b": 2.0, "c": 3.0})]
    walked = RequestWalker(REQUESTS, shared_names(hosted)).read(values)
    assert walked is not None
    results = {h.name: r for h, r in score_co_hosted(hosted, walked.requests, walked.checked)}
    usual = {h.name: r for h, r in score_co_hosted(hosted, [REQUESTS.decode(v)["features"] for v in values])}
    scores = {name: [s.prediction.score for s in r if s.prediction] for name, r in results.items()}
    assert scores == {name: [s.prediction.score for s in r if s.prediction] for name, r in usual.items()}
    assert scores == {"m0": [12.0], "m1": [12.0], "m2": [12.0]}


class _Summing(_Doubling):
    """The same in-place model, with a contract of its own (ranges, or none)."""

    def __init__(self, signature: Signature) -> None:
        self.signature = signature


def test_a_walked_batch_is_checked_against_each_co_hosted_models_declared_ranges() -> None:
    """The walk checks names and finiteness: a model with ranges beside one without had a value
    of 1e6 scored as walked (a review), where the usual way refused it."""
    ranged = Signature((FeatureSpec("a", maximum=10.0), FeatureSpec("b"), FeatureSpec("c", minimum=0.0)))
    plain = Signature.all_required(SMALL)
    hosted = [Hosted(_Summing(spec), name, "", "host-1", "reject")
              for name, spec in (("plain", plain), ("ranged", ranged), ("also-plain", plain))]
    values = [encoded({"a": 1.0, "b": 2.0, "c": 3.0}), encoded({"a": 1e6, "b": 2.0, "c": 3.0}),
              encoded({"a": 1.0, "b": 2.0, "c": -1.0})]
    assert shared_names(hosted) == SMALL
    walked = RequestWalker(REQUESTS, SMALL).read(values)
    assert walked is not None
    results = {h.name: r for h, r in score_co_hosted(hosted, walked.requests, walked.checked)}
    usual = {h.name: r for h, r in score_co_hosted(hosted, [REQUESTS.decode(v)["features"] for v in values])}
    outcome = {name: [(s.prediction.score if s.prediction else None, s.error) for s in r]
               for name, r in results.items()}
    assert outcome == {name: [(s.prediction.score if s.prediction else None, s.error) for s in r]
                       for name, r in usual.items()}
    assert outcome["plain"] == outcome["also-plain"] == [(12.0, None), (2000010.0, None), (4.0, None)]
    assert outcome["ranged"] == [(12.0, None),
                                 (None, "outside the model's range: a=1000000.0 (above its maximum 10.0)"),
                                 (None, "outside the model's range: c=-1.0 (below its minimum 0.0)")]


@pytest.mark.parametrize("names", [NAMES, None])
def test_a_record_the_walk_refuses_is_refused_on_the_usual_way_too(names: tuple[str, ...] | None) -> None:
    """The usual way is fastavro's, which reads a union's branch -1 as its last: a forged request
    scored with confidence. The worker's decode refuses it, whatever names its models read."""
    good = encoded(GOOD)
    at = good.index(b"\x02\x0ereplies")  # reply_to's branch 1, then its topic
    forged = good[:at] + b"\x01" + good[at + 1 :]
    assert REQUESTS.decode(forged)["reply_to"]["topic"] == "replies"  # fastavro's reading
    walker = RequestWalker(REQUESTS, names)
    assert walker.decode(good) == REQUESTS.decode(good)
    with pytest.raises(DecodeFailed, match="union's branch out of range"):
        walker.decode(forged)
    with pytest.raises(DecodeFailed, match="trailing bytes"):  # fastavro's reason when it has one
        walker.decode(good + b"\x00")
    other_framing = b"\x00\x00\x00\x00\x07" + forged[HEADER_SIZE:]
    with pytest.raises(DecodeFailed, match="schema-registry"):  # not walked: fastavro's error as before
        walker.decode(other_framing)


def test_a_request_registry_framed_with_the_current_schema_is_walked_and_refused_alike() -> None:
    requests = Codec(REQUESTS.schema, [])
    requests.write_registry_id(7)  # as the registry answered: id 7 is the current schema
    record = make_request(GOOD, budget_ms=200, reply_topic="replies", reply_partition=None, request_id="r-1")
    good = requests.encode(record)
    walker = RequestWalker(requests, NAMES)
    walked = walker.read([good])
    assert walked is not None and walked.requests == [{"request_id": "r-1", "deadline": record["deadline"]}]
    at = good.index(b"\x02\x0ereplies")
    with pytest.raises(DecodeFailed, match="union's branch out of range"):
        walker.decode(good[:at] + b"\x01" + good[at + 1 :])


def test_every_reader_that_decodes_requests_whole_refuses_what_the_walk_refuses() -> None:
    """Replay and the rescue process read with fastavro alone: replay scored a forged record the
    live workers refused, and the rescue wrote error Scores for it (a review)."""
    from confluent_kafka import Message

    from services.cli.replay import _request
    from services.core.compiled_requests import decode_request
    from services.model_worker.rescue import requests_of

    good = encoded(GOOD)
    at = good.index(b"\x02\x0ereplies")
    forged = good[:at] + b"\x01" + good[at + 1 :]
    assert _request(REQUESTS, good) is not None and _request(REQUESTS, forged) is None
    found = requests_of([Message(topic="rdv.requests", partition=0, offset=i, value=v)
                         for i, v in enumerate([good, forged])])
    assert [msg.offset() for msg, _request in found] == [0]
    # Registry-framed with an id met for the first time in this decode: looked up, then walked.
    registry = Codec(REQUESTS.schema, [])
    registry.read_registry_ids(lambda _id: REQUESTS.schema)
    framed = b"\x00\x00\x00\x00\x09" + forged[HEADER_SIZE:]
    with pytest.raises(DecodeFailed, match="union's branch out of range"):
        decode_request(registry, framed)
    assert decode_request(registry, b"\x00\x00\x00\x00\x09" + good[HEADER_SIZE:])["request_id"] == "r-1"
