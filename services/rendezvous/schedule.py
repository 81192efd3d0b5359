"""The schedule: which model's answer is returned, and how long to wait for each.

A schedule is an immutable value; the rendezvous swaps it whole (a later issue makes that
live from the control topic). The policy, applied whenever something happens to a request:

- walk the models in preference order;
- a model with a usable score wins at once (status OK for the first, FALLBACK otherwise);
- a model that reported an error is "answered: unusable": skip it at once;
- a model that has not answered yet is waited for until its give-up time
  (created_at + its wait, capped by the deadline); after that it is skipped;
- when every model was skipped: ERROR if they all failed, TIMEOUT otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from services.core.errors import ConfigError


class Status(StrEnum):
    OK = "OK"
    FALLBACK = "FALLBACK"
    TIMEOUT = "TIMEOUT"
    ERROR = "ERROR"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one model reported for one request."""

    usable: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    status: Status
    model: str | None
    reason: str


@dataclass(frozen=True)
class Schedule:
    """Ordered model preference with optional per-model waits and a default deadline budget."""

    models: tuple[str, ...]
    waits_ms: Mapping[str, int] = field(default_factory=dict)
    default_deadline_ms: int = 200
    name: str = "default"
    version: int = 1

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(f"invalid schedule {self.name!r}: " + "; ".join(problems))
        object.__setattr__(self, "waits_ms", dict(self.waits_ms))

    def problems(self) -> list[str]:
        found = []
        if not self.models:
            found.append("it names no model")
        if len(set(self.models)) != len(self.models):
            found.append(f"a model is listed twice in {list(self.models)}")
        if any(not m or not isinstance(m, str) for m in self.models):
            found.append("model names must be non-empty strings")
        unknown = set(self.waits_ms) - set(self.models)
        if unknown:
            found.append(f"waits name models not in the schedule: {sorted(unknown)}")
        if any(not isinstance(w, int) or w < 0 for w in self.waits_ms.values()):
            found.append("waits must be whole milliseconds >= 0")
        if not isinstance(self.default_deadline_ms, int) or self.default_deadline_ms <= 0:
            found.append("default_deadline_ms must be a positive whole number")
        return found

    @property
    def preferred(self) -> str:
        return self.models[0]

    def deadline_for(self, created_at: int, deadline: int) -> int:
        """The request's own absolute deadline, or created_at + the default budget if it set none."""
        return deadline if deadline > 0 else created_at + self.default_deadline_ms

    def give_up_at(self, model: str, created_at: int, deadline: int) -> int:
        wait = self.waits_ms.get(model)
        return deadline if wait is None else min(deadline, created_at + wait)

    def decide(
        self, outcomes: Mapping[str, Outcome], created_at: int, deadline: int, now: int
    ) -> Decision | None:
        """The answer to send now, or None to keep waiting."""
        skipped: list[str] = []
        for rank, model in enumerate(self.models):
            outcome = outcomes.get(model)
            if outcome is not None and outcome.usable:
                if rank == 0:
                    return Decision(Status.OK, model, "preferred model answered")
                return Decision(Status.FALLBACK, model, "fallback: " + "; ".join(skipped))
            if outcome is not None:
                skipped.append(f"{model} failed ({outcome.error})")
            elif now >= self.give_up_at(model, created_at, deadline):
                skipped.append(f"{model} late")
            else:
                return None
        if all(outcomes.get(m) is not None for m in self.models):
            return Decision(Status.ERROR, None, "every model failed: " + "; ".join(skipped))
        return Decision(Status.TIMEOUT, None, "no usable score by the deadline: " + "; ".join(skipped))

    def next_check(self, outcomes: Mapping[str, Outcome], created_at: int, deadline: int, now: int) -> int:
        """When waiting may end without a new score: the next give-up time after `now`."""
        times = [
            t for m in self.models
            if m not in outcomes and (t := self.give_up_at(m, created_at, deadline)) > now
        ]
        return min(times, default=deadline)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "models": list(self.models),
            "waits_ms": dict(self.waits_ms),
            "default_deadline_ms": self.default_deadline_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        known = {"name", "version", "models", "waits_ms", "default_deadline_ms"}
        extra = set(data) - known
        if extra:
            raise ConfigError(f"invalid schedule: unknown field(s) {sorted(extra)}; known: {sorted(known)}")
        models = data.get("models")
        if not isinstance(models, list):
            raise ConfigError("invalid schedule: 'models' must be a list of model names")
        waits = data.get("waits_ms", {})
        if not isinstance(waits, dict):
            raise ConfigError("invalid schedule: 'waits_ms' must map model names to milliseconds")
        return cls(
            models=tuple(models),
            waits_ms=waits,
            default_deadline_ms=data.get("default_deadline_ms", 200),
            name=str(data.get("name", "default")),
            version=data.get("version", 1),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Schedule:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read schedule file {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"schedule file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"schedule file {path} must hold a JSON object")
        return cls.from_dict(data)
