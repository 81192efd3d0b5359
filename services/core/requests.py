"""What makes a decoded Request a request at all: one rule for the rendezvous and every worker.

Avro already guarantees the types; these are the checks it cannot express. A record that fails
them is never scored: the rendezvous answers it ERROR with the reason (a client always gets an
answer) and dead-letters it; the workers skip it and count it (a Score for it would only be
late for that ERROR answer).

Whether a valid request suits one particular model is that model's signature's business
(`services/core/signatures.py`), answered with an error Score.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.core.errors import DecodeFailed

__all__ = ["MAX_REQUEST_ID", "RETRY_NOT_KEPT", "RepeatedFeatures", "check_request", "id_too_long", "request_problem"]

# Characters in a request id, at most. Every output about a request carries its id (a Score, the
# Answer, the comparison record, the reply's key): an id near Kafka's record size would make them
# too large to write, and such a request could never be answered. UUIDs take 36.
MAX_REQUEST_ID = 1024

# In the reason of the one ERROR the rendezvous does not remember: its refusal of a retry of an open
# request that has as many return addresses waiting as it keeps (services/rendezvous/join.py). A retry
# under the id after the answer gets the answer, not this; every other answer to an id (its refusals
# of other inputs or another partition under a known id included) is given again while the id is
# known. The gateway tells its callers which (services/gateway/engine.py `_raise_failures`).
RETRY_NOT_KEPT = "this retry is not kept"


def id_too_long(request_id: str) -> str | None:
    """Why `request_id` is too long to be any request's (one line), or None: the one rule for
    requests, scores and every service."""
    if len(request_id) > MAX_REQUEST_ID:
        return f"request_id of {len(request_id)} characters is over the limit of {MAX_REQUEST_ID}"
    return None


def request_problem(request: Mapping[str, Any]) -> str | None:
    """Why `request` is not a valid request (one line), or None."""
    request_id = request.get("request_id")
    if not request_id:
        return "request_id is empty"
    if isinstance(request_id, str) and (too_long := id_too_long(request_id)):
        return too_long
    created_at = request.get("created_at")
    if not isinstance(created_at, int) or created_at <= 0:
        return f"created_at must be epoch milliseconds, got {created_at!r}"
    deadline = request.get("deadline", 0)
    if not isinstance(deadline, int) or deadline < 0:
        return f"deadline must be epoch milliseconds or 0, got {deadline!r}"
    if not request.get("features") and request.get("payload") is None:
        return "request carries neither features nor a payload"
    return None


class RepeatedFeatures(dict[str, Any]):
    """A decoded request's features whose Avro map names a feature more than once: a reader keeps
    a repeated name's last value (fastavro does, as Java's readers do), and scored, the request got
    a confident answer for one of two values (a review). No model scores it: each gives an error
    Score with `reason` (core/signatures.py), and the rendezvous answers ERROR with it."""

    def __init__(self, features: Mapping[str, Any], entries: int) -> None:
        super().__init__(features)
        self.entries = entries

    @property
    def reason(self) -> str:
        return (f"the features name a feature more than once ({self.entries} entries for {len(self)} names): which "
                "of its values is meant is not known")


def check_request(request: Mapping[str, Any]) -> None:
    """Raise `DecodeFailed` (a `BadInput`) when `request_problem` finds one."""
    problem = request_problem(request)
    if problem is not None:
        raise DecodeFailed(problem)
