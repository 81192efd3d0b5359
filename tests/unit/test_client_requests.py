"""What the client refuses to send (services/client/client.py make_request): a caller's mistake is
one InvalidRequest naming it, never a confident score of something else (text read as a number,
True as 1.0) and never a bare TypeError/OverflowError from deep in the encoder."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.client.client import InvalidRequest, make_request
from services.core.codec import codec
from services.core.errors import RendezvousError


def request(features: Any = None, **kwargs: Any) -> dict[str, Any]:
    settings = {"budget_ms": 200, "reply_topic": "rdv.replies", "reply_partition": 0, **kwargs}
    return make_request({"x": 1.0} if features is None else features, **settings)


@pytest.mark.parametrize(("features", "refusal"), [
    ({"x": "14.2"}, "feature 'x': str '14.2' is not a number"),
    ({"x": True}, "feature 'x': bool True is not a number"),
    ({"x": None}, "feature 'x': NoneType None is not a number"),
    ({"x": [1.0, 2.0]}, "feature 'x': list [1.0, 2.0] is not a number"),
    ({"x": 10**400}, "feature 'x': int too large to convert to float"),
    ({1: 1.0}, "feature name 1: must be a non-empty string of text"),
    ({"": 1.0}, "feature name '': must be a non-empty string of text"),
    ({"\ud800": 1.0}, "feature name '\\ud800': must be a non-empty string of text"),
    ([("x", 1.0)], "features must map names to numbers, got list"),
])
def test_a_feature_that_is_not_a_named_number_is_refused(features: Any, refusal: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        request(features)
    assert str(refused.value) == refusal
    assert isinstance(refused.value, RendezvousError)


@pytest.mark.parametrize(("kwargs", "refusal"), [
    ({"request_id": ""}, "request_id '': must be a non-empty string of text"),
    ({"request_id": 7}, "request_id 7: must be a non-empty string of text"),
    ({"request_id": "r" * 1025}, "request_id of 1025 characters is over the limit of 1024"),
    ({"budget_ms": 0}, "budget_ms must be a positive number of milliseconds, got 0"),
    ({"budget_ms": -5}, "budget_ms must be a positive number of milliseconds, got -5"),
    ({"budget_ms": 2.5}, "budget_ms must be a positive number of milliseconds, got 2.5"),
    ({"budget_ms": 2**63}, f"created_at {0} plus budget_ms {2**63} is no time in epoch ms"),
    ({"created_at": 2**63 - 10}, f"created_at {2**63 - 10} plus budget_ms 200 is no time in epoch ms"),
    ({"created_at": -1}, "created_at -1 plus budget_ms 200 is no time in epoch ms"),
    # What every service refuses (core/requests.py request_problem), refused before sending too.
    ({"created_at": 0}, "created_at must be epoch milliseconds, got 0"),
])
def test_an_id_budget_or_time_that_no_request_can_carry_is_refused(kwargs: dict[str, Any], refusal: str) -> None:
    if kwargs.get("budget_ms") == 2**63:
        kwargs["created_at"] = 0
    with pytest.raises(InvalidRequest) as refused:
        request(**kwargs)
    assert str(refused.value) == refusal


def test_a_request_without_features_or_payload_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"^request carries neither features nor a payload$"):
        request({})
    assert request({}, payload=("text/plain", b"x"))["features"] == {}


def test_numbers_of_any_real_kind_are_sent_as_floats() -> None:
    record = request({"a": 1, "b": np.float32(0.5), "c": np.int64(3), "d": float("nan")}, request_id="r1")
    assert record["features"] == pytest.approx({"a": 1.0, "b": 0.5, "c": 3.0, "d": float("nan")}, nan_ok=True)
    assert all(type(v) is float for v in record["features"].values())
    assert codec("request").decode(codec("request").encode(record))["request_id"] == "r1"


@pytest.mark.parametrize(("kwargs", "refusal"), [
    ({"payload": ("text/plain",)},
     "payload must be a (content type: str, data: bytes) pair, got tuple ('text/plain',)"),
    ({"payload": ("text/plain", "x")}, "payload must be a (content type: str, data: bytes) pair, got tuple "
                                       "('text/plain', 'x')"),
    ({"payload": b"x"}, "payload must be a (content type: str, data: bytes) pair, got bytes b'x'"),
    ({"metadata": {"k": 1}}, "metadata must map strings of text to strings of text: 'k' -> 1"),
    ({"metadata": {"k": "\ud800"}}, "metadata must map strings of text to strings of text: 'k' -> '\\ud800'"),
    ({"payload": ("text/\ud800", b"x")}, "payload must be a (content type: str, data: bytes) pair, got tuple "
                                         "('text/\\ud800', b'x')"),
    ({"metadata": [("k", "v")]}, "metadata must map strings to strings, got list"),
])
def test_a_payload_or_metadata_of_the_wrong_kind_is_refused_naming_it(kwargs: dict[str, Any], refusal: str) -> None:
    """An IndexError, a ValueError quoting the whole value, a TypeError from fastavro (a review)."""
    with pytest.raises(InvalidRequest) as refused:
        request(**kwargs)
    assert str(refused.value) == refusal
    record = request(payload=("text/plain", bytearray(b"x")), metadata={"k": "v"})
    assert record["payload"] == {"content_type": "text/plain", "data": b"x"} and record["metadata"] == {"k": "v"}
