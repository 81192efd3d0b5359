"""The rendezvous' schedules: the control topic's history and live updates, and which version
governs a request.

A request is governed by the version in force at its `created_at`; versions are validated with
the rule every CLI command shares (`ScheduleBook.refusal`). If the control topic holds no version
of this schedule yet, the bootstrap schedule (from the flags) is published there as v1 before
anything is answered, so the topic stays the one source of truth.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

from confluent_kafka import Message

from services.control.schedule import Schedule
from services.control.topic import (
    READ_BACK_S,
    ControlFeed,
    ControlRecord,
    ScheduleBook,
    check_keeps_history,
    encode_schedule,
    read_back,
)
from services.core.errors import BadInput, ConfigError, DecodeFailed
from services.core.runtime import now_ms
from services.core.service import Context
from services.core.settings import Topics
from services.rendezvous import metrics as m

log = logging.getLogger(__name__)



class ScheduleFeed:
    """The schedule book, fed from the control topic; refused records go to `dead_letter`."""

    def __init__(self, name: str, bootstrap: Schedule, topics: Topics,
                 dead_letter: Callable[[Message, BadInput], None], *, seeded_by: Sequence[str] = (),
                 max_budget_ms: int | None = None):
        """`seeded_by`: the flags the bootstrap schedule was given by (said unused if another
        version is in force); `max_budget_ms`: what deadlines are cut to (said if a version's
        default deadline is longer)."""
        self.book = ScheduleBook(name)
        self.bootstrap = bootstrap
        self._seeded_by = tuple(seeded_by)
        self._max_budget_ms = max_budget_ms
        self.topics = topics
        self._dead_letter = dead_letter
        self._feed: ControlFeed | None = None
        self._shown_version = -1

    def for_request(self, created_at: int) -> Schedule:
        return self.book.for_request(created_at) if self.book.latest else self.bootstrap

    def named_between(self, start: int, end: int) -> frozenset[str]:
        return self.book.named_between(start, end) if self.book.latest else self.bootstrap.model_set

    def start(self, ctx: Context) -> None:
        """Replay the control topic's history; seed it with the bootstrap schedule if empty."""
        check_keeps_history(ctx.config, self.topics.control)  # else a later start reads another history
        self._feed = ControlFeed(ctx.config, self.topics.control)
        ctx.stack.callback(self._feed.close)
        self._applied_history(self._feed.read_history())
        if self.book.latest is not None:
            self._say_seed_unused(self.for_request(now_ms()))
        if self.book.latest is None:
            first = max(1, self.bootstrap.version)
            seed = dataclasses.replace(self.bootstrap, version=first, effective_at=0, created_at=now_ms())
            refused = self.book.refusal(seed, now_ms())
            if refused:  # every reader would refuse it: this instance alone would answer by it
                raise ConfigError(f"the bootstrap schedule {seed.name} cannot be published: {refused}")
            ctx.outputs.produce(self.topics.control, encode_schedule(seed), key=seed.new_key())
            ctx.outputs.commit_now([], give_up=lambda: False)  # the seed is public before we answer
            in_force = self._read_back(seed)
            log.info("control topic had no schedule %r: published the bootstrap one; v%d in force: %s",
                     seed.name, in_force.version, list(in_force.models))
        self.show(now_ms())

    def _read_back(self, seed: Schedule) -> Schedule:
        """The version in force once our seed is published: another instance starting now may have
        seeded first, and every reader takes the first v1 in log order; this one must too. The
        end offsets a read goes to can lag the commit just made (seen in tests on a fresh topic),
        so it reads on for a few seconds (`read_back`) before it answers by its own seed, saying so."""
        assert self._feed is not None
        read_back(self._feed, self._applied_history, lambda: self.book.latest is not None, READ_BACK_S)
        if self.book.latest is None:
            log.warning("the bootstrap schedule %s could not be read back from %s within %.0fs: answering by it; "
                        "another instance seeding at the same moment may answer by its own", seed.name,
                        self.topics.control, READ_BACK_S)
            self.book.add(seed)
        return self.book.latest or seed

    def _applied_history(self, records: list[ControlRecord]) -> None:
        for record in records:
            self._apply(record, live=False)

    def poll(self) -> None:
        """Apply what arrived on the control topic since the last call."""
        assert self._feed is not None
        for record in self._feed.poll():
            self._apply(record, live=True)

    def show(self, now: int) -> None:
        """Log and export the version in force when it changes."""
        schedule = self.for_request(now)
        if schedule.version != self._shown_version:
            m.SCHEDULE.clear()
            m.SCHEDULE.labels(schedule.name, str(schedule.version), schedule.preferred).set(1)
            self._shown_version = schedule.version
            log.info("schedule %s v%d in force: %s", schedule.name, schedule.version, list(schedule.models))
            if self._max_budget_ms is not None and schedule.default_deadline_ms > self._max_budget_ms:
                log.warning("schedule %s v%d's default deadline (%d ms) is longer than --max-budget-ms (%d ms): "
                            "requests without a deadline of their own are cut to %d ms", schedule.name,
                            schedule.version, schedule.default_deadline_ms, self._max_budget_ms, self._max_budget_ms)

    def _say_seed_unused(self, in_force: Schedule) -> None:
        """The flags that seed an empty control topic, given at a start that found it seeded
        otherwise: restarted with other models or waits, the service followed the topic's
        version, saying so at INFO only (a newcomer's review)."""
        if not self._seeded_by:
            return
        fields = ("models", "waits_ms", "default_deadline_ms", "traffic_model", "traffic_fraction")
        if all(getattr(in_force, f) == getattr(self.bootstrap, f) for f in fields):
            return
        flags = ", ".join("--" + name.replace("_", "-") for name in self._seeded_by) + " (or their RDV_ variables)"
        log.warning("%s seed(s) the control topic only when it holds no %s schedule: v%d is in force (%s, default "
                    "deadline %d ms), not theirs; change it with `rendezvous schedule set`", flags, in_force.name,
                    in_force.version, list(in_force.models), in_force.default_deadline_ms)

    def _apply(self, record: ControlRecord, *, live: bool) -> None:
        schedule = record.schedule
        if schedule is None:
            assert record.error is not None
            self._reject(record.msg, record.error.message, live)
            return
        if schedule.name != self.book.name:
            return  # another deployment's schedule
        known = next((v for v in self.book.versions if v.version == schedule.version), None)
        if known is not None and known.same_policy(schedule) and known.effective_at == schedule.effective_at:
            return  # the same version read again (e.g. our own bootstrap seed)
        reason = self.book.refusal(schedule, record.written_at)
        if reason:
            self._reject(record.msg, f"schedule {schedule.name} v{schedule.version} rejected: {reason}", live)
            return
        self.book.add(schedule, record.written_at)
        m.SCHEDULE_UPDATES.inc()
        late_ms = now_ms() - (self.book.latest_start or 0)
        if live and late_ms > 0 and len(self.book.versions) > 1:  # the first: no other governed before it
            # Requests created since its effective time may have been answered under the old
            # version here, while an instance re-reading them would use the new one.
            m.SCHEDULE_LATE.inc()
            log.warning("schedule %s v%d was read %d ms after it took effect: publish with a longer "
                        "--effective-in, from a host whose clock is not behind the broker's (NTP)", schedule.name,
                        schedule.version, late_ms)
        log.info("schedule %s v%d accepted (effective at %d): %s - %s", schedule.name, schedule.version,
                 schedule.effective_at, list(schedule.models), schedule.comment)

    def _reject(self, msg: Message, reason: str, live: bool) -> None:
        """Dead-letter a refused control record (history read at start-up was dealt with before)."""
        if not live:
            log.debug("skipping control record refused before: %s", reason)
            return
        current = self.book.latest
        stays = f"v{current.version} stays in force" if current else "no schedule yet"
        m.SCHEDULE_REJECTED.inc()
        log.warning("control record rejected: %s; %s", reason, stays)
        self._dead_letter(msg, DecodeFailed(f"{reason}; {stays}"))
