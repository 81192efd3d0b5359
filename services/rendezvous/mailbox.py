"""A mailbox per request: what arrived for it, and whether it was answered and logged."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.control.schedule import Decision, Outcome, Schedule


@dataclass(slots=True)
class Arrival:
    """One model's score as it reached the rendezvous."""

    model: str
    version: str
    score: float | None
    label: str | None
    error: str | None
    arrived_at: int
    compute_ms: float
    late: bool


@dataclass(slots=True)
class Mailbox:
    request_id: str
    partition: int
    deadline: int
    created_at: int = 0
    has_request: bool = False
    reply_topic: str | None = None
    reply_partition: int | None = None
    arrivals: dict[str, Arrival] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    decision: Decision | None = None
    answered_at: int | None = None
    closed: bool = False
    wake_at: int = 0
    schedule: Schedule | None = None  # the version governing this request (set with the request)
    restored: bool = False  # answered before a restart; re-read to finish its comparison record
    opened_at: int = 0  # when the first record for it arrived (rendezvous clock)

    def add(self, arrival: Arrival) -> bool:
        """Record a model's score; False if that model already reported (a duplicate)."""
        if arrival.model in self.arrivals:
            return False
        self.arrivals[arrival.model] = arrival
        self.outcomes[arrival.model] = Outcome(arrival.error is None and arrival.score is not None,
                                               arrival.error)
        return True
