"""The schedule: which model's answer is returned, and how long to wait for each.

A schedule is an immutable value. The policy, applied whenever something happens to a request:

- walk the models in preference order;
- a model with a usable score wins at once (status OK for the first, FALLBACK otherwise);
- a model that reported an error is "answered: unusable": skip it at once;
- a model that has not answered yet is waited for until its give-up time
  (created_at + its wait, capped by the deadline); after that it is skipped;
- when every model was skipped: ERROR if they all failed, TIMEOUT otherwise.

Time here is the *log's* clock, so that any instance deciding from the same records decides
the same (see services/rendezvous/join.py): a score counts for a model if the broker appended
it at or before that model's give-up time (`Outcome.at`), and a model is given up once the
partition's clock (the newest append time read) has passed its give-up time.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from services.core.errors import ConfigError
from services.core.model_names import check_model_name
from services.core.settings import not_a_readable_file
from services.core.unique_json import DuplicateKey, loads_unique

DEFAULT_NAME = "default"  # a schedule file without a name gets it, and takes the name it is used under
DEFAULT_DEADLINE_MS = 200


def check_schedule_name(name: str, flag: str) -> None:
    """A name a schedule can be found by: an empty one, or one with spaces around it, was followed
    or published as given, a schedule no other command used (a probe)."""
    if not name.strip():
        raise ConfigError(f"{flag} is empty: name a schedule (the default is {DEFAULT_NAME!r})")
    if name != name.strip():
        raise ConfigError(f"{flag} {name!r} has spaces around it: schedules are named without")


class Status(StrEnum):
    OK = "OK"
    FALLBACK = "FALLBACK"
    TIMEOUT = "TIMEOUT"
    ERROR = "ERROR"


class Reported(Protocol):
    """What `decide` reads of a model's report: an `Outcome`, or the rendezvous' own record of the
    score (mailbox.Arrival), which it passes as is rather than build an Outcome per score."""

    @property
    def usable(self) -> bool: ...
    @property
    def error(self) -> str | None: ...
    @property
    def at(self) -> int: ...


# Python 3.11's EnumType has a __getattr__, which makes every `Status.X` a slow lookup (~10x a
# plain class attribute's): the hot path reads its member from here.
_OK = Status.OK


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one model reported for one request, and when the log took it (epoch ms)."""

    usable: bool
    error: str | None = None
    at: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer, and `at`: the log time by which it was determined (the winning score's append
    time, or the give-up times it had to pass), the same for every instance that decides it."""

    status: Status
    model: str | None
    reason: str
    at: int = 0


@dataclass(frozen=True)
class Schedule:
    """Ordered model preference with optional per-model waits and a default deadline budget.

    `traffic_model`/`traffic_fraction` answer that share of requests (chosen by a stable hash
    of the request_id, so every instance agrees) with a challenger first. `effective_at`:
    the schedule governs requests created at or after it (epoch ms).
    """

    models: tuple[str, ...]
    waits_ms: Mapping[str, int] = field(default_factory=dict)
    default_deadline_ms: int = DEFAULT_DEADLINE_MS
    name: str = DEFAULT_NAME
    version: int = 1
    traffic_model: str | None = None
    traffic_fraction: float = 0.0
    effective_at: int = 0
    created_at: int = 0
    comment: str = ""
    # Whether it takes effect at its effective_at even where a version written before it is still
    # pending (services/control/topic.py ScheduleBook.add): an urgent rollback beside a promotion
    # scheduled for tomorrow. Not part of the policy (`same_policy`).
    supersedes_pending: bool = False

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
        # The bounds of the schedule record's Avro fields (schemas/schedule.avsc: int and long):
        # beyond them it cannot be encoded (an OverflowError at publish, or at a rendezvous' start)
        # and readers in other languages refuse it.
        if any(not isinstance(w, int) or not 0 <= w <= MAX_INT for w in self.waits_ms.values()):
            found.append(f"waits must be whole milliseconds from 0 to {MAX_INT}")
        if not isinstance(self.default_deadline_ms, int) or not 0 < self.default_deadline_ms <= MAX_INT:
            found.append(f"default_deadline_ms must be a whole number from 1 to {MAX_INT}")
        if not isinstance(self.version, int) or not 0 <= self.version <= MAX_LONG:
            found.append("version must be a whole number >= 0 (an Avro long)")
        for name in ("effective_at", "created_at"):
            value = getattr(self, name)
            if not isinstance(value, int) or not -MAX_LONG - 1 <= value <= MAX_LONG:
                found.append(f"{name} must be epoch milliseconds (an Avro long)")
        if self.traffic_model is not None and self.traffic_model not in self.models:
            found.append(f"traffic model {self.traffic_model!r} is not in the schedule")
        if not 0.0 <= self.traffic_fraction <= 1.0:
            found.append(f"traffic fraction must be within [0, 1], got {self.traffic_fraction}")
        return found

    @property
    def preferred(self) -> str:
        return self.models[0]

    @cached_property
    def model_set(self) -> frozenset[str]:
        """The models as a set, for subset tests per event (kept in the instance's __dict__)."""
        return frozenset(self.models)

    def answering(self) -> list[str]:
        """The models it answers with first: the preferred one, and the traffic split's."""
        return [self.models[0]] + ([self.traffic_model] if self.traffic_model else [])

    def deadline_for(self, created_at: int, deadline: int) -> int:
        """The request's own absolute deadline, or created_at + the default budget if it set none."""
        return deadline if deadline > 0 else created_at + self.default_deadline_ms

    def give_up_at(self, model: str, created_at: int, deadline: int) -> int:
        wait = self.waits_ms.get(model)
        return deadline if wait is None else min(deadline, created_at + wait)

    def order_for(self, request_id: str) -> tuple[str, ...]:
        """Preference order for one request: the traffic split's model first for its share."""
        model = self.traffic_model
        if model is None or self.traffic_fraction <= 0.0 or model == self.models[0]:
            return self.models
        if zlib.crc32(request_id.encode()) / 2**32 >= self.traffic_fraction:
            return self.models
        return (model, *(m for m in self.models if m != model))

    def decide(
        self, outcomes: Mapping[str, Reported], created_at: int, deadline: int, clock: int, request_id: str = ""
    ) -> Decision | None:
        """The answer once the log's clock reads `clock`, or None to keep waiting.

        An outcome appended after its model's give-up time is late: it counts as not there.
        """
        # Called for every event of every request: give_up_at is inlined, max() is a comparison.
        skipped: list[str] = []
        at = created_at
        waits = self.waits_ms
        order = self.models if self.traffic_model is None else self.order_for(request_id)
        for rank, model in enumerate(order):
            wait = waits.get(model)
            give_up = deadline if wait is None else min(deadline, created_at + wait)
            outcome = outcomes.get(model)
            if outcome is None or outcome.at > give_up:  # none, or too late to count
                if clock <= give_up:
                    return None
                if give_up > at:
                    at = give_up
                skipped.append(f"{model} late")
                continue
            if outcome.at > at:
                at = outcome.at
            if outcome.usable:
                if rank == 0:
                    return Decision(_OK, model, "preferred model answered", at)
                return Decision(Status.FALLBACK, model, "fallback: " + "; ".join(skipped), at)
            skipped.append(f"{model} failed ({outcome.error or 'a score with neither a score nor an error'})")
        if all(outcomes.get(m) is not None and outcomes[m].at <= self.give_up_at(m, created_at, deadline)
               for m in order):
            return Decision(Status.ERROR, None, "every model failed: " + "; ".join(skipped), at)
        return Decision(Status.TIMEOUT, None, "no usable score by the deadline: " + "; ".join(skipped), at)

    def next_check(self, outcomes: Mapping[str, Reported], created_at: int, deadline: int, clock: int) -> int:
        """The log time whose passing may decide without a new score: the next give-up time at or
        after `clock` of a model that has not answered in time."""
        waits = self.waits_ms  # give_up_at inlined, and no list built: once per request at least
        earliest = None
        for m in self.models:
            wait = waits.get(m)
            t = deadline if wait is None else min(deadline, created_at + wait)
            if t >= clock and (earliest is None or t < earliest) and (m not in outcomes or outcomes[m].at > t):
                earliest = t
        return deadline if earliest is None else earliest

    def named(self, name: str, path: str | Path) -> Schedule:
        """This schedule (read from the file at `path`) as one of schedule `name`: refused when
        the file names another, which would silently have become a version of `name`."""
        if self.name not in (DEFAULT_NAME, name):
            raise ConfigError(f"schedule file {path} names schedule {self.name!r}, not {name!r}: pass "
                              f"--schedule-name {self.name}, or change the file's name")
        return dataclasses.replace(self, name=name)

    def to_dict(self) -> dict[str, Any]:
        """The Schedule record (schemas/schedule.avsc) and the JSON file format."""
        traffic = None
        if self.traffic_model is not None:
            traffic = {"model": self.traffic_model, "fraction": self.traffic_fraction}
        return {
            "name": self.name,
            "version": self.version,
            "models": list(self.models),
            "waits_ms": dict(self.waits_ms),
            "default_deadline_ms": self.default_deadline_ms,
            "traffic": traffic,
            "effective_at": self.effective_at,
            "created_at": self.created_at,
            "comment": self.comment,
            "supersedes_pending": self.supersedes_pending,
        }

    def new_key(self) -> str:
        """A Kafka key for one write of this version to the control topic, unique to that write.
        Readers accept the first record of a version in log order; were two writers' records of
        one version under one key, compaction would keep the second, and a reader starting after
        it would accept another version than those already running."""
        return f"{self.name}/{self.version:010d}/{uuid.uuid4().hex[:12]}"

    def same_policy(self, other: Schedule) -> bool:
        """Equal apart from name, version, timing and comment (what rollback restores)."""
        a, b = self.to_dict(), other.to_dict()
        return all(a[k] == b[k] for k in ("models", "waits_ms", "default_deadline_ms", "traffic"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        known = {"name", "version", "models", "waits_ms", "default_deadline_ms", "traffic", "effective_at",
                 "created_at", "comment", "supersedes_pending"}
        extra = set(data) - known
        if extra:
            raise ConfigError(f"invalid schedule: unknown field(s) {sorted(extra)}; known: {sorted(known)}")
        models = data.get("models")
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ConfigError("invalid schedule: 'models' must be a list of model names")
        waits = data.get("waits_ms", {})
        if not isinstance(waits, dict):
            raise ConfigError("invalid schedule: 'waits_ms' must map model names to milliseconds")
        traffic = _traffic_of(data.get("traffic"))
        return cls(
            models=tuple(models),
            waits_ms={str(m): _whole(w, f"waits_ms[{m!r}]") for m, w in waits.items()},
            default_deadline_ms=_whole(data.get("default_deadline_ms", 200), "default_deadline_ms"),
            name=_text(data.get("name", "default"), "name"),
            version=_whole(data.get("version", 1), "version"),
            traffic_model=traffic.get("model"),
            traffic_fraction=_fraction(traffic.get("fraction", 0.0)),
            effective_at=_whole(data.get("effective_at", 0), "effective_at"),
            created_at=_whole(data.get("created_at", 0), "created_at"),
            comment=_text(data.get("comment", ""), "comment"),
            supersedes_pending=_flag(data.get("supersedes_pending", False), "supersedes_pending"),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Schedule:
        unreadable = not_a_readable_file(path)  # a pipe was read and waited on for good
        if unreadable:
            raise ConfigError(f"cannot read schedule file {path}: {unreadable}")
        try:
            data = loads_unique(Path(path).read_text(encoding="utf-8"))
        except DuplicateKey as exc:  # json kept the last without a word (a probe: "models" twice)
            raise ConfigError(f"schedule file {path}: {exc}: one value each") from None
        except OSError as exc:
            raise ConfigError(f"cannot read schedule file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"schedule file {path} is not UTF-8 text (a binary file?)") from None
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"schedule file {path} is not valid JSON: {str(exc)[:80]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"schedule file {path} must hold a JSON object")
        return authored(cls.from_dict(data))


def authored(schedule: Schedule) -> Schedule:
    """`schedule` as an operator may write it (a file, flags): stricter than what a reader of the
    control topic accepts, which must go on reading what older versions wrote. Every model name is
    one a worker could have, and a traffic split names a challenger: on the preferred model it does
    nothing, until a promotion makes that model a fallback answering its share first."""
    for model in schedule.models:
        check_model_name(model, "schedule: model")
    if schedule.traffic_model is not None and schedule.traffic_model == schedule.preferred:
        raise ConfigError(f"traffic split: {schedule.traffic_model} is the preferred model (the first), which "
                          "answers every request first already; name a challenger")
    return schedule


_TRAFFIC_KEYS = frozenset({"model", "fraction"})


def _traffic_of(value: Any) -> dict[str, Any]:
    """The traffic split of a schedule's JSON: null (none) or exactly {"model": name, "fraction": f}.
    A mistyped key ("share") or a false-like value (0, [], "") was taken for no split, silently."""
    if value is None:
        return {}
    form = 'null or {"model": name, "fraction": 0..1}'
    if not isinstance(value, dict):
        raise ConfigError(f"invalid schedule: 'traffic' must be {form}, got {json.dumps(value)[:60]}")
    if set(value) != _TRAFFIC_KEYS or not isinstance(value["model"], str) or not value["model"]:
        raise ConfigError(f"invalid schedule: 'traffic' must be {form}, got the keys {sorted(map(str, value))}")
    return value


def _whole(value: Any, field_name: str) -> int:
    """A whole number from a file or record: 5 or 5.0, never True, "5", 5.5, NaN or a list."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"invalid schedule: {field_name} must be a whole number, got {_short(value)}")
    if isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"invalid schedule: {field_name} must be a whole number, got {_short(value)}")
    return int(value)


MAX_INT = 2**31 - 1  # an Avro int
MAX_LONG = 2**63 - 1  # an Avro long


def _fraction(value: Any) -> float:
    refusal = ConfigError(f"invalid schedule: traffic fraction must be a number in [0, 1], got {_short(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise refusal
    try:
        return float(value)
    except OverflowError:  # an int past any float (10**400): a traceback, not this line
        raise refusal from None


def _flag(value: Any, field_name: str) -> bool:
    """true or false, never 1, "yes" or null (a file's typo read as a wish)."""
    if not isinstance(value, bool):
        raise ConfigError(f"invalid schedule: {field_name} must be true or false, got {_short(value)}")
    return value


def _text(value: Any, field_name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"invalid schedule: {field_name} must be a string, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."
