"""What replay takes for a request: what every worker takes (core/requests.py). A request with
created_at <= 0 once became the start of the log range replay reads its answers from."""

from __future__ import annotations

from services.cli.replay import _decode
from services.client.client import make_request
from services.core.codec import codec


def test_records_that_are_no_requests_are_counted_as_undecodable_not_replayed() -> None:
    requests = codec("request")
    good = make_request({"a": 1.0}, budget_ms=100, reply_topic=None, reply_partition=None)
    decoded, bad = _decode([requests.encode(good), requests.encode({**good, "created_at": 0}), b"garbage", None])
    assert [r["request_id"] for r in decoded] == [good["request_id"]] and bad == 3
