"""A mailbox per request: what arrived for it, whether it was answered and logged, and whether
the replies it sent to return addresses are acknowledged.

Why replies count: they go out through a non-transactional producer, at once. If the instance
crashed after its transaction committed an answer but before the broker acknowledged the reply,
and the request's offset were committed too, nobody would ever send that reply. So a request's
offset is finished only once it is `settled`: closed *and* every reply acknowledged (or refused
for good). A crash before that makes the new owner re-read the request, find its answer and send
the reply again (an identical repeat, never a different answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.control.schedule import Decision, Schedule


@dataclass(slots=True)
class Arrival:
    """One model's score as the log took it (`at`: its append time); also what the schedule
    decides by (`schedule.Reported`)."""

    model: str
    version: str
    score: float | None
    label: str | None
    error: str | None
    at: int
    compute_ms: float
    usable: bool  # a score and no error: what the schedule may answer with


@dataclass(slots=True)
class Mailbox:
    request_id: str
    partition: int
    opened_at: int  # log time of the first record for it (request or score)
    has_request: bool = False
    request_at: int = 0  # log time of its request (`opened_at` is a score's when its scores came first)
    created_at: int = 0
    deadline: int = 0  # effective: the request's own or the schedule's default, clamped
    schedule: Schedule | None = None  # the version governing this request
    # Digest of the request's features and payload (core/request_inputs.py); None: not known to be
    # the first request's (one re-read after a restart may be a later one under its id).
    inputs: bytes | None = b""
    replies: list[tuple[str, int | None]] = field(default_factory=list)  # return addresses
    arrivals: dict[str, Arrival] = field(default_factory=dict)
    decision: Decision | None = None
    answer: dict[str, Any] | None = None  # the Answer record sent (for repeats of the request)
    restored: bool = False  # answered before a restart: finish its comparison record only
    closed: bool = False
    wake_at: int = -1  # log time of this mailbox's pending timer (-1: none)
    unacked: int = 0  # replies sent and not yet acknowledged by the broker
    held: int = 0  # estimated bytes the join counts for it against --max-held-bytes (join.py `_hold`)
    past_due: str = ""  # why: its deadline had passed when the request was appended (join.py `_past_due`)

    @property
    def settled(self) -> bool:
        """Nothing of this request is in flight any more: its offset may be committed."""
        return self.closed and self.unacked == 0

    def add(self, arrival: Arrival) -> bool:
        """Record a model's score; False if that model already reported (a duplicate: the first
        one in log order counts, as it does for any instance re-reading the partition)."""
        if arrival.model in self.arrivals:
            return False
        self.arrivals[arrival.model] = arrival
        return True


@dataclass(slots=True)
class Receipt:
    """Replies sent for a request record that has no open mailbox (a repeated or re-read request
    whose mailbox is closed): its offset is finished once they are acknowledged."""

    unacked: int = 0

    @property
    def settled(self) -> bool:
        return self.unacked == 0
