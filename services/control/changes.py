"""Schedule changes as values: the next version, a promotion, a rollback.

The commands (`schedule set`, `promote`, `rollback`) build a draft here, check it, and publish
it (services/control/topic.py). Nothing here talks to Kafka.
"""

from __future__ import annotations

import dataclasses

from services.control.schedule import Schedule
from services.control.topic import ScheduleBook
from services.core.errors import ConfigError
from services.core.model_names import check_model_name


def current(book: ScheduleBook) -> Schedule:
    """The latest version, or a clear refusal when there is none yet."""
    if book.latest is None:
        raise ConfigError(
            f"no schedule {book.name!r} on the control topic yet: start a rendezvous (it publishes its "
            "bootstrap schedule) or run `rendezvous schedule set --models ...`"
        )
    return book.latest


def next_version(book: ScheduleBook, draft: Schedule, now_ms: int, effective_in_ms: int,
                 effective_at: int | None = None, supersede: bool = False) -> Schedule:
    """`draft` as the version after the current one (v1 when there is none yet), taking effect
    `effective_in_ms` from now, or at `effective_at` when given (a file's time, kept exact: made
    a duration and back, it moved by the seconds spent between), never before the current one
    does; unless `supersede`, when versions still pending that start no earlier never govern."""
    latest = book.latest
    version, not_before = (latest.version + 1, latest.effective_at) if latest is not None else (1, 0)
    asked = effective_at if effective_at is not None else now_ms + effective_in_ms
    return dataclasses.replace(draft, name=book.name, version=version, created_at=now_ms,
                               effective_at=asked if supersede else max(asked, not_before),
                               supersedes_pending=supersede)


def check_promotable(candidate: str, canary: str) -> None:
    """What can be said of a candidate before the schedule is read: a model's name, not the canary."""
    check_model_name(candidate, "promote: model")
    if canary and candidate == canary:
        raise ConfigError(f"{candidate} is the canary, a fixed reference model: it is never promoted")


def promotion(current_schedule: Schedule, candidate: str, canary: str, comment: str = "") -> Schedule:
    """The schedule with `candidate` first and the old champion as the first fallback."""
    champion = current_schedule.models[0]
    check_promotable(candidate, canary)
    if champion == candidate:
        raise ConfigError(f"{candidate} is already the champion of {current_schedule.name} "
                          f"(v{current_schedule.version})")
    order = (candidate, champion, *(m for m in current_schedule.models[1:] if m != candidate))
    # Waits stay with their place in the order: the first place's is how long an answer waits for
    # the preferred model. Kept by model, `--wait champion=50` left the new champion none (answers
    # at the deadline, not a fallback at 50 ms) and gave the old one's 50 ms to nobody first; a
    # short fallback wait moved to first place gave the new champion up (a review).
    by_place = [current_schedule.waits_ms.get(m) for m in current_schedule.models]
    waits = {m: w for m, w in zip(order, by_place, strict=False) if w is not None}
    promoted = dataclasses.replace(current_schedule, models=order, waits_ms=waits, supersedes_pending=False,
                                   comment=comment or f"promote {candidate} (was {champion})")
    # The candidate answers every request first now: its split ends. A split on the old champion
    # (which did nothing while it was preferred) would make it answer its share first: it ends too.
    if current_schedule.traffic_model in (candidate, champion):
        promoted = dataclasses.replace(promoted, traffic_model=None, traffic_fraction=0.0)
    return promoted


def rollback(book: ScheduleBook, comment: str = "", to: int = 0, replacing: Schedule | None = None,
             cancels: bool = False) -> Schedule:
    """Version `to`'s policy (default: the latest before the latest one that governs, did or
    will), as a draft of the next version. Run twice without `to`, it restores what the first
    rolled back from, if that governs (a pending version the first one was held back to never
    does: the second finds nothing to restore, and says so). A version that never governs is no
    default: the promotion a `schedule set --supersede-pending` cancelled came back live in 2 s,
    ungated, when that change was rolled back (a review). `replacing`: the version the restored
    policy takes the place of (default: the latest; with --supersede-pending, the one in force);
    `cancels`: it supersedes pending versions, so restoring the policy in force is no change-nothing."""
    latest = current(book)
    versions = book.versions
    if len(versions) < 2:
        raise ConfigError(f"nothing to roll back to: {book.name} has only v{latest.version}")
    if to == latest.version:
        raise ConfigError(f"--to {to}: v{to} is the latest version already")
    if to:
        previous = next((v for v in versions if v.version == to), None)
        if previous is None:
            raise ConfigError(f"--to {to}: {book.name} has no v{to} (versions: "
                              f"{', '.join(f'v{v.version}' for v in versions[-20:])})")
    else:
        previous = next((v for v in reversed(versions[:-1]) if book.displaced_by(v.version) is None), None)
        if previous is None:
            raise ConfigError(f"nothing to roll back to: no version of {book.name} before v{latest.version} "
                              "governs (--to N for one that never did)")
    replaced = replacing or latest
    if previous.same_policy(replaced) and not cancels:  # published, it would be a version that changes nothing
        raise ConfigError(f"v{previous.version}'s policy is the one in force already (v{replaced.version}): "
                          "nothing to roll back (--to N for an earlier version)")
    # Its policy only: whether it superseded versions pending then is no wish of this change's.
    return dataclasses.replace(previous, comment=comment or f"rollback to v{previous.version}",
                               supersedes_pending=False)
