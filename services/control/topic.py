"""The control topic: versioned schedules, their history, and which one governs a request.

Records are keyed `<name>/<version>` (see Schedule.key), so compaction keeps one record per
version and the topic is the history. A schedule governs the requests *created* at or after
its `effective_at` (or after the broker appended it, or after its predecessor starts, if later:
`ScheduleBook.add`): every rendezvous instance, whatever its lag, picks the same schedule for
the same request, and the answer carries that schedule's version.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from services.control.schedule import Schedule
from services.core.codec import codec
from services.core.errors import BadInput, BrokerError, ConfigError, DecodeFailed
from services.core.kafka import ConfigsNotAuthorized, Producer, partition_counts, topic_configs
from services.core.topic_tail import TopicTail

log = logging.getLogger(__name__)


def decode_schedule(value: bytes | None) -> Schedule:
    """A Schedule from a control record; `BadInput` with the reason if it is not a valid one."""
    record = codec("schedule").decode(value)
    try:
        return Schedule.from_dict(record)
    except ConfigError as err:
        raise DecodeFailed(err.message) from None


def encode_schedule(schedule: Schedule) -> bytes:
    try:
        return codec("schedule").encode(schedule.to_dict())
    except UnicodeEncodeError:  # a lone surrogate: valid JSON (a file's "\ud800"), not UTF-8
        raise ConfigError(f"schedule {schedule.name[:60]!r}: its text holds a character that is not valid Unicode "
                          "(a lone surrogate, e.g. \\ud800 in a JSON file)") from None


# Versions stay below 2**53, so the next version always fits an Avro long (and a JSON number).
VERSION_HEADROOM = 1_000_000  # versions kept free above the highest one accepted
MAX_VERSION = 2**53
# A version may take effect at most this long after it was written (by the log's clock): an
# effective_at in the year 2100 would otherwise be "accepted" and never govern anything.
MAX_EFFECTIVE_AHEAD_MS = 7 * 24 * 3600 * 1000
# How often the slowest reader polls the control topic: the gateway's ScheduleFollower (a
# rendezvous polls it on every turn of its loop, at most 0.1 s apart when idle).
READER_POLL_S = 0.5
CLOCK_SLACK_MS = 100  # the broker's append time this far past this host's clock is a clock apart, not noise
# A change takes effect at least this long after it is published: one reader's poll, and as long
# again for the fetch and a loop turn busy with a batch. Sooner, the instances read it after it
# took effect: a request created in between was answered under the version before by a live
# instance, and under the new one by an instance re-reading it (the change was retroactive).
MIN_EFFECTIVE_IN_MS = int(2 * READER_POLL_S * 1000)


def history_loss(topic: str, configs: Mapping[str, str]) -> str | None:
    """Why the control topic, configured so (its describe_configs), would lose schedule versions
    (None: it keeps every one). Its records have a key per write, so compaction keeps them all;
    a delete policy with a finite retention drops the old ones, and an instance started after
    that reads no schedule, or an older version than the instances running."""
    policy = configs.get("cleanup.policy")
    if policy is None or "delete" not in {part.strip() for part in policy.split(",")}:
        return None  # compacted only (a policy the broker does not tell is no finding)
    limits = [f"{key}={configs[key]}" for key in ("retention.ms", "retention.bytes") if _deletes(configs.get(key))]
    if not limits:
        return None
    return (f"{topic} has cleanup.policy={policy} with {' and '.join(limits)}: the broker deletes old schedule "
            "versions, and an instance started after that reads none, or an older one; the control topic must "
            "be compacted (`rendezvous topics create` sets cleanup.policy=compact on an existing topic)")


def _deletes(retention: str | None) -> bool:
    """Whether a retention.ms / retention.bytes value the broker told deletes records (-1: no limit)."""
    if retention is None:
        return False  # the broker tells every value, defaults included: one it does not is no finding
    try:
        return int(retention) >= 0
    except ValueError:
        return True  # not a number the broker would take: not read as "no limit"


def check_keeps_history(config: Mapping[str, Any], topic: str) -> None:
    """ConfigError if the control topic would lose schedule versions (`history_loss`): `publish`, a
    rendezvous and a gateway at start. A principal without DESCRIBE_CONFIGS on it (the project's
    grants give it to the admin, the rendezvous and the gateway) is not refused for that: what it
    may do to the topic is the broker's to say, in its own words."""
    try:
        configs = topic_configs(config, topic)
    except ConfigsNotAuthorized as exc:
        log.warning("the clean-up policy of %s is not checked: %s", topic, exc)
        return
    problem = history_loss(topic, configs)
    if problem:
        raise ConfigError(problem)


class UnusableControlTopic(ConfigError):
    """The control topic is not one schedules can be kept on (several partitions)."""


def check_held(control: str, book: ScheduleBook, names: set[str], advice: str) -> None:
    """ConfigError when `control` holds no version of `book`'s schedule but holds others (`names`):
    a command checking or changing the wrong book checked or changed nothing that runs (a missing
    or mistyped --schedule-name; reviews). `advice` ends the message (the command's way out)."""
    if book.latest is None and names:
        held = ", ".join(sorted(repr(n) for n in names)[:10])
        raise ConfigError(f"{control} holds no schedule named {book.name!r} (it holds {held}): name the one your "
                          f"rendezvous answers by with --schedule-name{advice}")


def check_one_partition(config: Mapping[str, Any], topic: str, count: int | None = None) -> None:
    """ConfigError unless the control topic has one partition: a schedule's versions are ordered
    by it, and every reader takes a version's first record. With more, each version landed on any
    of them, readers fixed to the partitions of their start missed those added, and a new one read
    them in no defined order (the docs had invited growing every topic together; a review).
    `count`: the topic's partition count, when the caller has asked the broker for it already."""
    count = partition_counts(config, [topic]).get(topic, 0) if count is None else count
    if count != 1:
        raise UnusableControlTopic(f"{topic} has {count} partitions: the control topic must have one, so that every "
                                   "reader sees the schedule's versions in one order")


def history_note(config: Mapping[str, Any], topic: str) -> str | None:
    """`history_loss` of the control topic for a command that only shows what it holds (`schedule
    show`, `history`, `models`, undeploy's check): said, not refused, since what is there is all
    there is to show, and the versions already lost are lost. None when the topic keeps its
    versions or its configuration cannot be read: a courtesy there (the client role has no
    DESCRIBE_CONFIGS on the topic, and whether the broker answers is the read's to say)."""
    try:
        configs = topic_configs(config, topic)
    except BrokerError as exc:
        log.debug("the clean-up policy of %s is not checked: %s", topic, exc)
        return None
    return history_loss(topic, configs)


class ScheduleBook:
    """Every accepted version of one schedule name.

    `refusal` is the one rule that decides whether a control record becomes a version: the
    rendezvous and every CLI command apply it to the same records (with the record's own log
    time, not anyone's clock), so they always agree on the history and on what is in force.
    """

    def __init__(self, name: str):
        self.name = name
        self._versions: list[Schedule] = []  # every accepted version, in log order: the history
        # The versions that govern (all but those superseded while pending) and when each starts
        # (see `add`), ascending: what a request is looked up in.
        self._governing: list[Schedule] = []
        self._starts: list[int] = []
        self._superseded: dict[int, int] = {}  # version -> the one that superseded it while pending
        self.written_at: dict[int, int] = {}  # version -> when the broker appended it (when known)

    @classmethod
    def holding(cls, *schedules: Schedule) -> ScheduleBook:
        """A book of these versions, already accepted in this order (tests and benches)."""
        book = cls(schedules[0].name)
        for schedule in schedules:
            book.add(schedule)
        return book

    @property
    def latest(self) -> Schedule | None:
        return self._versions[-1] if self._versions else None

    @property
    def versions(self) -> list[Schedule]:
        return list(self._versions)

    def refusal(self, schedule: Schedule, written_at: int) -> str | None:
        """Why `schedule`, written to the log at `written_at`, cannot be the next version (None: it can)."""
        # Room is kept above every version: one near the top would leave none for the next, and the
        # compacted topic keeps it, so no schedule could ever change again. Only steps of one go
        # into that room (the CLI's next version), so a million more changes stay possible.
        latest = self.latest
        step = latest is not None and schedule.version == latest.version + 1
        highest = (MAX_VERSION if step else MAX_VERSION - VERSION_HEADROOM) - 1
        if not 1 <= schedule.version <= highest:
            beyond = f" (beyond it, only the next version, v{latest.version + 1})" if latest is not None else ""
            return f"version {schedule.version} is outside 1..{highest}{beyond}"
        if schedule.effective_at < 0:
            return f"effective_at {schedule.effective_at} is before 1970 (epoch milliseconds)"
        if schedule.effective_at > written_at + MAX_EFFECTIVE_AHEAD_MS:
            return (f"effective_at {schedule.effective_at} is more than "
                    f"{MAX_EFFECTIVE_AHEAD_MS // 86_400_000} days after the record was written ({written_at})")
        if latest is None:
            return None
        if schedule.version <= latest.version:
            return f"version {schedule.version} is not newer than v{latest.version}"
        if schedule.effective_at < latest.effective_at and not schedule.supersedes_pending:
            return f"effective_at {schedule.effective_at} precedes v{latest.version}'s ({latest.effective_at})"
        return None

    def take(self, records: Iterable[ControlRecord]) -> list[Schedule]:
        """Add the versions of this book's schedule among `records` that a reader accepts, in log
        order; those added."""
        added = []
        for record in records:
            schedule = record.schedule
            if schedule is None or schedule.name != self.name:
                continue
            if self.refusal(schedule, record.written_at) is None:
                self.add(schedule, record.written_at)
                added.append(schedule)
        return added

    def add(self, schedule: Schedule, written_at: int | None = None) -> None:
        """Append a version that passed `refusal`, written to the log at `written_at` (if known).

        The first version starts at 0: it governs every request before the next one's start
        (`for_request` takes the oldest version for older requests), its effective_at only orders
        the versions after it. Started at its effective_at, a first version published for later
        was taken for pending: `undeploy` let its models go while they answered every request, a
        `--supersede-pending` change looked requests it had governed up anew, and history said it
        never governed (a review).

        A version after the first starts at its effective_at or, if later, when it was written:
        the writer's clock behind the broker's would otherwise make it govern requests created
        before it existed, answered under the version before by a live rendezvous and under
        this one by an instance re-reading them. The write time is the record's (LogAppendTime),
        so every reader agrees on it.

        Nor does it start before the version it follows: the broker's append time can step back
        (its clock set back, a new leader's clock behind), and a start earlier than its
        predecessor's left the starts out of order, so the bisection picked a version by chance.

        Unless it `supersedes_pending`: then every version starting at or after its own start (all
        still pending when it was written, as it starts no earlier than that) never governs, and
        it starts as asked. (If the broker's clock stepped back past such a version's start, that
        version did govern for a while, and requests of that while are looked up anew.)"""
        start = 0
        if self._versions:
            start = self._start_of(schedule, written_at)
            if schedule.supersedes_pending:
                for superseded in self.supersedes(schedule, written_at):
                    self._superseded[superseded.version] = schedule.version
                cut = bisect.bisect_left(self._starts, start)
                del self._starts[cut:], self._governing[cut:]
            if self._starts:
                start = max(start, self._starts[-1])
        # In this order: another thread (a gateway's calls, while its follower reads the topic) finds
        # `latest` only once the version governs, and never more starts than governing versions
        # (`for_request` bisects the one and indexes the other): appended the other way round, the
        # first version made `in_force` raise IndexError for a moment (a review).
        self._governing.append(schedule)
        self._starts.append(start)
        self._versions.append(schedule)
        if written_at is not None:
            self.written_at[schedule.version] = written_at

    @property
    def latest_start(self) -> int | None:
        """When the latest version starts to govern (see `add`), None before the first."""
        return self._starts[-1] if self._starts else None

    def supersedes(self, schedule: Schedule, written_at: int | None = None) -> list[Schedule]:
        """The versions `schedule`, written to the log at `written_at`, supersedes as `add` takes
        it: none unless it `supersedes_pending`, else the governing ones starting at or after it
        (the one rule for the book and the CLI's note)."""
        if not schedule.supersedes_pending or not self._versions:
            return []
        return self._governing[bisect.bisect_left(self._starts, self._start_of(schedule, written_at)):]

    @staticmethod
    def _start_of(schedule: Schedule, written_at: int | None) -> int:
        """When a version after the first starts, before the versions before it hold it back."""
        return schedule.effective_at if written_at is None else max(schedule.effective_at, written_at)

    def superseded_by(self, version: int) -> int | None:
        """The version that superseded `version` while it was pending (it never governs), if one did."""
        return self._superseded.get(version)

    def displaced_by(self, version: int) -> int | None:
        """The version that governs in `version`'s place, which never governs: the one that
        superseded it, or a later one starting at the same time (held back to its start, as the
        next version after a pending one is). None: `version` governs, or did, or will."""
        if (by := self._superseded.get(version)) is not None:
            return by
        # Versions only grow, in the log as in `_governing`: found by bisection.
        at = bisect.bisect_left(self._governing, version, key=lambda s: s.version)
        if not 0 < at < len(self._governing) or self._governing[at].version != version:
            return None  # not governing, or the first: that one governs every request before its start too
        last = self._picked_at_start(at)
        return self._governing[last].version if last != at else None

    def _picked_at_start(self, at: int) -> int:
        """The governing version `for_request` picks at the start of `_governing[at]`: the last one
        starting then. Another than `at`: that version never governs."""
        return bisect.bisect_right(self._starts, self._starts[at]) - 1

    def for_request(self, created_at: int) -> Schedule:
        """The version in force when the request was created (the oldest one for older requests)."""
        index = bisect.bisect_right(self._starts, created_at) - 1
        return self._governing[max(0, index)]

    def in_force(self, now: int) -> Schedule:
        return self.for_request(now)

    def in_force_and_after(self, now: int) -> list[tuple[Schedule, int]]:
        """The version in force at `now` and every version still to take effect after it, each
        with when it starts; not one whose start a later version shares: it never governs (a
        rollback published beside a pending promotion made undeploy refuse for it; a review)."""
        first = max(0, bisect.bisect_right(self._starts, now) - 1)
        return [(self._governing[at], self._starts[at]) for at in range(first, len(self._governing))
                if self._picked_at_start(at) == at]

    def named_between(self, start: int, end: int) -> frozenset[str]:
        """Every model named by a version in force at some time in [start, end] (none before the
        first version is added)."""
        if not self._versions:
            return frozenset()
        first = max(0, bisect.bisect_right(self._starts, start) - 1)
        last = max(0, bisect.bisect_right(self._starts, end) - 1)
        return frozenset().union(*(version.model_set for version in self._governing[first:last + 1]))


@dataclass(frozen=True)
class ControlRecord:
    """One record of the control topic: a schedule, or the reason it is unusable."""

    msg: Message
    schedule: Schedule | None
    error: BadInput | None

    @property
    def written_at(self) -> int:
        """The record's timestamp on the log."""
        return int(self.msg.timestamp()[1])


class ControlFeed:
    """Reads the control topic from the beginning (assigned, no group): history, then live.

    A record that cannot be read *yet* (its schema id's registry is away) is not a refused one:
    taken for refused, it was skipped for good, and the instance stayed on an older version than
    its peers (a review). It and every record after it wait, in log order (a version's first write
    must stay first), and are read again at the next poll. The history read at start cannot wait
    so: it raises, rather than let the service seed or answer by a schedule the history overrides.

    Every reader of the control topic reads it through here, so here its one partition is checked
    (`check_one_partition`), on the count the tail asked for to assign the partitions."""

    def __init__(self, config: Mapping[str, Any], topic: str):
        self.topic = topic
        self._tail = TopicTail(config, topic, "control")
        try:
            check_one_partition(config, topic, self._tail.partition_count)
        except UnusableControlTopic:
            self._tail.close()
            raise
        self._held: list[Message] = []
        self._held_for = ""

    def read_history(self, timeout: float = 30.0) -> list[ControlRecord]:
        """Every record up to the end offsets as of now."""
        records = self._readable(list(self._tail.read_to_end(timeout)))
        if self._held:
            raise BrokerError(f"the schedule history on {self.topic} cannot be read yet ({self._held_for}); start "
                              "again once it can (a service may not answer by a schedule its history overrides)")
        return records

    def poll(self) -> list[ControlRecord]:
        """Whatever arrived since the last call (non-blocking), and what waited before it."""
        return self._readable(list(self._tail.poll()))

    def _readable(self, messages: list[Message]) -> list[ControlRecord]:
        """The records of the held messages and `messages`, up to the first that cannot be read yet."""
        queue, self._held = self._held + messages, []
        records: list[ControlRecord] = []
        for index, msg in enumerate(queue):
            record = _parse(msg)
            if record.error is not None and record.error.retriable:
                if not self._held_for:
                    log.warning("control record at %s[%d]@%d cannot be read yet (%s): it and those after it wait",
                                msg.topic(), msg.partition(), msg.offset(), record.error)
                self._held, self._held_for = queue[index:], str(record.error)
                return records
            records.append(record)
        self._held_for = ""
        return records

    def close(self) -> None:
        self._tail.close()


def _parse(msg: Message) -> ControlRecord:
    try:
        return ControlRecord(msg, decode_schedule(msg.value()), None)
    except BadInput as err:
        return ControlRecord(msg, None, err)


def load_book(config: Mapping[str, Any], topic: str, name: str) -> ScheduleBook:
    """The accepted history of schedule `name`, exactly as a rendezvous replaying the topic sees it."""
    return load_books(config, topic, name)[0]


def load_books(config: Mapping[str, Any], topic: str, name: str) -> tuple[ScheduleBook, set[str]]:
    """`load_book`, and the names of every schedule the topic holds (to say which exist when
    `name` is none of them: a command checking the wrong book checked nothing)."""
    feed = ControlFeed(config, topic)
    try:
        book, records = ScheduleBook(name), feed.read_history()
        book.take(records)
        return book, {record.schedule.name for record in records if record.schedule is not None}
    finally:
        feed.close()


def publish(config: Mapping[str, Any], topic: str, schedule: Schedule) -> Schedule:
    """Write one schedule version, wait until the broker has it, and read it back: the version
    every reader takes. That is another writer's when it published this version first (two
    operators at once, two demos), since every reader takes the first record of a version in log
    order and refuses the later ones: returned when it makes the same change (`same_policy`),
    else `ConfigError`. Ours read back is `schedule` itself: a caller tells the two apart by identity."""
    check_keeps_history(config, topic)  # a version the broker will delete would be no history
    check_one_partition(config, topic)
    producer = Producer(config)
    producer.produce(topic, encode_schedule(schedule), key=schedule.new_key(), partition=0)
    producer.flush()
    flushed_at = int(time.time() * 1000)  # this host's clock just after the broker appended it
    accepted, written_at = _read_back(config, topic, schedule)
    if accepted is None:
        raise ConfigError(f"v{schedule.version} was written, but no reader's v{schedule.version} could be read back "
                          f"within {READ_BACK_S:.0f} s: whether it is in force is unknown. See `rendezvous schedule "
                          "history` before you run it again")
    # The same change, by another writer: the same policy, in force no later than ours would have
    # been (one set for two hours later is another change: told "nothing more to do", its operator
    # waited two hours; a review).
    ours = accepted.to_dict() == schedule.to_dict()
    same = accepted.same_policy(schedule) and accepted.effective_at <= schedule.effective_at + MIN_EFFECTIVE_IN_MS
    if not ours and not same:
        # Not "run yours again": a rollback or a promotion is relative to the latest version, and
        # run again after another one, it undid that one (two on-call engineers rolling back at
        # once rolled the bad version back in; a review).
        raise ConfigError(f"v{schedule.version} was published by another change first: {list(accepted.models)} "
                          f"({accepted.comment}); yours was refused by every reader. See `rendezvous schedule "
                          f"history` before changing anything: a change made now is relative to v{schedule.version}")
    if not ours:
        return accepted  # another writer's same change
    if written_at is not None:
        _say_if_lead_lost(accepted, written_at, flushed_at)
    return schedule


def _say_if_lead_lost(schedule: Schedule, written_at: int, flushed_at: int) -> None:
    """A version that takes effect less than a reader's poll after the broker appended it: readers
    may read it after it governs. It governs from its append (`ScheduleBook.add`), so live
    instances may have decided requests of that moment under the version before, where one
    re-reading them uses this one: said, where it passed without a word (a review). Why, as
    measured: the broker's clock ahead of this host's (its append time after this host's clock
    just after it), or the publishing itself slow."""
    lead = schedule.effective_at - written_at
    ahead = written_at - flushed_at
    # Under a reader's poll, whatever the cause; under the whole lead with a clock measured apart
    # (a host 1.3 s behind, 'effective in 2s', lost 0.7 s of it without a word; a review).
    if lead >= READER_POLL_S * 1000 and (ahead <= CLOCK_SLACK_MS or lead >= MIN_EFFECTIVE_IN_MS):
        return
    why = (f"this host's clock is about {ahead} ms behind the broker's: set it right (NTP)" if ahead > CLOCK_SLACK_MS
           else "publishing it took that long: give it a longer --effective-in")
    log.warning("%s v%d takes effect %d ms after the broker appended it, where readers need %d ms to read it first: "
                "%s before the next change", schedule.name, schedule.version, max(0, lead), MIN_EFFECTIVE_IN_MS, why)


READ_BACK_S = 5.0  # the end offsets a read goes to can lag a write just acknowledged
READ_BACK_PACE_S = 0.1


def read_back(feed: ControlFeed, take: Callable[[list[ControlRecord]], object], found: Callable[[], bool],
              within_s: float) -> bool:
    """Read the topic on, from where `feed` stopped to the end offsets asked anew, handing each
    read's records to `take`, until `found()` or `within_s` seconds passed; whether found. Read
    once, a lagging end offset missed a record just written (the publish of a version, a
    rendezvous' bootstrap seed); a new reader each time made a client, asked for metadata and
    read the whole history again."""
    until = time.monotonic() + within_s
    while True:
        take(feed.read_history())
        if found():
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(READ_BACK_PACE_S)  # pacing the reads of the end offsets, not waiting instead of a condition


def _read_back(config: Mapping[str, Any], topic: str, schedule: Schedule) -> tuple[Schedule | None, int | None]:
    """The version every reader takes as `schedule.version`, and when the broker appended it, read
    again until one is there (`read_back`): read once, the operator was told another change had
    won (re-running a rollback then undid it)."""
    feed = ControlFeed(config, topic)
    try:
        book = ScheduleBook(schedule.name)
        def accepted() -> Schedule | None:
            return next((v for v in book.versions if v.version == schedule.version), None)

        read_back(feed, book.take, lambda: accepted() is not None, READ_BACK_S)
        return accepted(), book.written_at.get(schedule.version)
    finally:
        feed.close()
