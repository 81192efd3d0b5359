"""What an OIP model name means here: the schedule (the rendezvous' answer) or one model of it.

`{name}` is the schedule's name (e.g. `default`): the call is answered by the rendezvous, and the
OIP model version is the schedule's version in force. `{name}` may also be a model the deployment
knows (in the schedule, or with a published signature), for testing a challenger directly: the
call still goes through the schedule (every model scores every request), and the response carries
that model's own output as the comparison log recorded it (engine.py).

Schedules are followed live from the control topic with the rendezvous' own acceptance rule
(`ScheduleBook.refusal`), so the gateway and the rendezvous agree on what is in force.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from services.control.schedule import Schedule
from services.control.topic import ScheduleBook
from services.core.score_limits import MAX_MODEL_CHARS, MAX_VERSION_CHARS
from services.gateway.errors import InvalidInput, NotFound, TurnedAway
from services.gateway.oip import OUTPUTS
from services.gateway.signatures import Contract, FeatureSpec, Signatures

log = logging.getLogger(__name__)

SCHEDULE = "schedule"
MODEL = "model"
NAMES_IN_A_404 = 20  # model names a 404 lists, at most


class Schedules(Protocol):
    """The versions of one schedule (ScheduleFollower reads them from the control topic)."""

    book: ScheduleBook
    stopped: str | None  # why the versions stopped being followed, if they did

    def in_force(self) -> Schedule | None: ...


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved model name: what answers, in which version, reading which features."""

    name: str
    kind: str  # SCHEDULE or MODEL
    version: str
    versions: tuple[str, ...]
    features: tuple[FeatureSpec, ...] | None  # what it lists (a call may send them); None: a contract unknown
    schedule: Schedule
    # The contract a call's rows are held to (its features, required ones, ranges and policy for
    # others): the model's own, or a schedule's preferred model's, known even while another
    # model's is not. None: unpublished. A row it refuses would be answered by a fallback, 200.
    held_to: Contract | None = None
    # The features a call may carry: the contract's own, or, where it ignores others, those of
    # every model of the schedule (a typo none reads is still refused). None: not known, unchecked.
    accepts: frozenset[str] | None = None

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        return None if self.features is None else tuple(f.name for f in self.features)


def check_target_lengths(name: str, version: str) -> None:
    """A model name or version longer than any model's (the rendezvous refuses a score naming a
    longer one, score_limits.py) names nothing here: refused as malformed, naming the field, rather
    than looked up and echoed back in a 404."""
    for what, value, limit in (("model name", name, MAX_MODEL_CHARS), ("model version", version, MAX_VERSION_CHARS)):
        if len(value) > limit:
            raise InvalidInput(f"{what} of {len(value)} characters is over the limit of {limit}")


class Catalog:
    def __init__(self, schedules: Schedules, signatures: Signatures, *, enforce: bool):
        self.schedules = schedules
        self.signatures = signatures
        # Published contracts are the models' own: a feature none of them reads is refused (400).
        # A fallback list only describes; it refuses nothing.
        self.enforce = enforce
        # The schedule's target and the names every model of it reads, rebuilt when the schedule in
        # force changes or after a second (published signatures may change): every call resolves
        # them (a call to a model ignoring extra features built the names each time, ≈ 0.1 ms of the
        # event loop; a review).
        self._cached: _InForce | None = None

    @property
    def schedule_name(self) -> str:
        return self.schedules.book.name

    def schedule(self) -> Schedule:
        """The version in force; `TurnedAway` (503 / UNAVAILABLE: retry) before there is one. It
        was a 404 / NOT_FOUND, which callers take for for good, and on which tritonclient's
        `is_model_ready` raised instead of saying False (a review)."""
        schedule = self.schedules.in_force()
        if schedule is None:
            raise TurnedAway(f"schedule {self.schedule_name!r} has no version on the control topic yet "
                             "(is the rendezvous running?); retry")
        return schedule

    def models(self) -> dict[str, str]:
        """Model names a caller may ask for directly, with their published versions ('' unknown)."""
        schedule = self.schedules.in_force()
        known = {name: "" for name in (schedule.models if schedule else ())}
        known.update(self.signatures.models())
        return known

    def resolve(self, name: str, version: str = "") -> Target:
        check_target_lengths(name, version)
        if name == self.schedule_name:
            return self._schedule_target(version)
        models = self.models()
        if name not in models:
            # A few names: the models topic may hold a thousand contracts, all of them joined for
            # every 404 (20 MB, 32 ms of the event loop at 20,000 forged names; a review).
            names = [self.schedule_name, *sorted(models)]
            more = f" and {len(names) - NAMES_IN_A_404} more" if len(names) > NAMES_IN_A_404 else ""
            raise NotFound(f"unknown model {name!r}; this gateway serves: {', '.join(names[:NAMES_IN_A_404])}{more}")
        return self._model_target(name, models[name], version)

    def _schedule_target(self, version: str) -> Target:
        schedule = self.schedule()
        if version and version != str(schedule.version):
            raise NotFound(f"schedule {schedule.name!r} version {version!r} is not in force (v{schedule.version} "
                           "is); leave the version out or ask for that one")
        return self._in_force(schedule).target

    def _in_force(self, schedule: Schedule) -> _InForce:
        cached, now = self._cached, time.monotonic()
        if cached is not None and cached.schedule is schedule and now - cached.at < 1.0:
            return cached
        union, held = self._union(schedule.models), self._contract(schedule.models[0])
        names = None if union is None else frozenset(f.name for f in union)
        # What a call may send is what it lists: a preferred model refusing other features, its
        # own (the union listed led clients to build calls it refused; a review). Only the version
        # in force may be asked for (OIP's `versions`: those a call may name).
        listed = held.features if held is not None and not held.ignores_extra else union
        target = Target(schedule.name, SCHEDULE, str(schedule.version), (str(schedule.version),),
                        listed, schedule, held, _accepted(held, names))
        self._cached = _InForce(schedule, now, names, target)
        return self._cached

    def _model_target(self, name: str, published: str, version: str) -> Target:
        if version and not published:  # no version to check it against: the call's would be echoed unchecked
            raise NotFound(f"model {name!r} has published no version, so none can be asked for; leave the "
                           "version out")
        if version and version != published:
            raise NotFound(f"model {name!r} serves version {published!r}, not {version!r}")
        schedule, held = self.schedule(), self._contract(name)
        others = self._in_force(schedule).names if held is not None and held.ignores_extra else None
        return Target(name, MODEL, published, (published,) if published else (),
                      None if held is None else held.features, schedule, held, _accepted(held, others))

    def _contract(self, model: str) -> Contract | None:
        contract = self.signatures.contract(model)
        if contract is None:
            self.signatures.want()
        return contract

    def _union(self, models: Iterable[str]) -> tuple[FeatureSpec, ...] | None:
        """Every feature any of the models reads, the preferred model's first (None: one is unknown).
        Only the names and types describe the schedule: its rows are held to its preferred
        model's contract alone (`Target.held_to`)."""
        seen: dict[str, FeatureSpec] = {}
        for model in models:
            contract = self._contract(model)
            if contract is None:
                return None
            for spec in contract.features:
                seen.setdefault(spec.name, FeatureSpec(spec.name, False, spec.datatype))
        return tuple(seen.values())

    def check_features(self, target: Target, names: Iterable[str]) -> None:
        """400 for what the contract the target's rows are held to would refuse: a feature it
        does not accept, a required one missing, or (a contract that ignores others) none of its
        own. One model's unpublished contract once skipped every check, and a row the preferred
        model refused was answered by a fallback, 200 (a review)."""
        held = target.held_to
        if not self.enforce or held is None:
            return
        given = set(names)
        if target.accepts is not None and (unknown := sorted(given - target.accepts)):
            whose = (f" (its preferred model {target.schedule.models[0]!r} refuses a feature it does not read)"
                     if target.kind == SCHEDULE and not held.ignores_extra else "")
            raise InvalidInput(f"unknown feature(s) {', '.join(repr(n) for n in unknown[:10])} for "
                               f"{target.name!r}{whose}; it reads: {', '.join(sorted(target.accepts)[:40])}")
        missing = [f.name for f in held.features if f.required and f.name not in given]
        if missing:
            raise InvalidInput(f"missing required feature(s) {', '.join(repr(n) for n in missing[:10])} "
                               f"for {target.name!r}")
        if given and given.isdisjoint(held.names):  # the worker's own refusal under extra="ignore"
            model = target.schedule.models[0] if target.kind == SCHEDULE else target.name
            raise InvalidInput(f"none of the features given is one {model!r} reads (it reads: "
                               f"{', '.join(sorted(held.names)[:40])}); {model!r} would refuse the row")

    def check_ranges(self, target: Target, rows: Sequence[Mapping[str, float]]) -> None:
        """400 for a value outside a range the target's contract declares (a schedule's: its
        preferred model's), naming the first row of the first feature found outside: its worker
        would refuse the row, and the call would come back 502 for the client's input. Each
        column is tested by its min and max (C loops) and searched only when one is outside:
        a value at a time cost twice the rows' parse (a review)."""
        if not self.enforce or target.held_to is None:
            return
        for spec in target.held_to.features:
            if spec.minimum is None and spec.maximum is None:
                continue
            column = [value for row in rows if (value := row.get(spec.name)) is not None]
            if not column or not (spec.outside(min(column)) or spec.outside(max(column))):
                continue
            index, value = next((i, v) for i, row in enumerate(rows)
                                if (v := row.get(spec.name)) is not None and spec.outside(v))
            whose = (f"{target.name!r} (its preferred model {target.schedule.models[0]!r} declares the range)"
                     if target.kind == SCHEDULE else f"{target.name!r} (outside the range its contract declares)")
            raise InvalidInput(f"input {spec.name!r} row {index}: {value!r} is {spec.outside(value)} for {whose}")

    def metadata(self, target: Target) -> dict[str, Any]:
        """The OIP model metadata (REST form; gRPC builds its message from the same dict)."""
        inputs = [{"name": f.name, "datatype": f.datatype, "shape": [-1]} for f in target.features or ()]
        outputs = [{"name": name, "datatype": "FP64" if name == "score" else "BYTES", "shape": [-1]}
                   for name in OUTPUTS]
        platform = "rendezvous_schedule" if target.kind == SCHEDULE else "rendezvous_model"
        return {"name": target.name, "versions": list(target.versions), "platform": platform,
                "inputs": inputs, "outputs": outputs}


@dataclass(frozen=True, slots=True)
class _InForce:
    """What is built of the schedule in force, at `at` (time.monotonic())."""

    schedule: Schedule
    at: float
    names: frozenset[str] | None  # every feature its models read (None: a contract is unknown)
    target: Target


def _accepted(held: Contract | None, others: frozenset[str] | None) -> frozenset[str] | None:
    """The features a call held to `held` may carry: its own; where it ignores others, every one
    the models of the schedule read as well (`others`; None: one of them is unknown, unchecked)."""
    if held is None:
        return None
    if not held.ignores_extra:
        return held.names
    return None if others is None else held.names | others
