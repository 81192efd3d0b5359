"""Settings of one rendezvous instance."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass

from services.control.schedule import DEFAULT_NAME, Schedule, authored, check_schedule_name
from services.core.errors import ConfigError
from services.core.numbers import ascii_int
from services.core.settings import MAX_BATCH, ServiceSettings, legal_topic, parse_pairs, setting
from services.rendezvous.join import JoinLimits

DEFAULT_SCHEDULE_NAME = DEFAULT_NAME
MIN_HELD_BYTES = 1024 * 1024  # one orphan with its 64 unscheduled scores may hold that much


@dataclass(frozen=True)
class RendezvousSettings(ServiceSettings):
    """How the rendezvous joins scores to requests and when it answers."""

    schedule_file: str = setting(
        "", "JSON schedule file (models, waits_ms, default_deadline_ms, name, version)."
    )
    schedule_name: str = setting(
        DEFAULT_SCHEDULE_NAME, "Which schedule on the control topic this rendezvous follows (a schedule file's "
        "'name', if it has one, must be this)."
    )
    models: tuple[str, ...] = setting(
        ("champion",),
        "Model preference order when no schedule file is given, e.g. champion,challenger,canary.",
    )
    wait: tuple[str, ...] = setting((), "Per-model wait before falling back, e.g. --wait champion=50 (ms).")
    deadline_ms: int = setting(200, "Default answer budget for requests that carry no deadline (ms).", minimum=1)
    linger_ms: int = setting(
        1000, "How long after the deadline to keep collecting scores for the comparison log (ms).",
        minimum=1,
    )
    orphan_grace_ms: int = setting(
        10_000, "How long a score may wait for its request before it is dropped (ms): once requests appended "
        "this long after the score are read and its own is not among them.",
        minimum=1,
    )
    model_ttl_s: float = setting(
        30.0, "A model that sent no score for this long is no longer expected in comparison records (s); "
        "one outside the schedule that scored no request read in a request's time, to its deadline and "
        "linger, is not expected from then on, until it scores again.",
    )
    commit_interval_ms: int = setting(
        100, "How often finished work is committed (ms); commits run beside the poll loop. Exactly-once: at most "
        "half of --transaction-timeout-ms (a transaction stays open about this long).",
        minimum=1,
    )
    max_batch: int = setting(1000, "Most records handled per poll.", minimum=1, maximum=MAX_BATCH)
    cloudevents: bool = setting(
        False, "Add CloudEvents binary-mode headers (ce_id = request id, ce_type, ce_source, ce_specversion) to "
        "answers and comparison records, so CloudEvents tools read those topics as events."
    )
    group: str = setting("", "Consumer group (default: <prefix>rendezvous); instances share it.", identifier=True)
    start_from: str = setting(
        "earliest", "Where a new consumer group starts: earliest or latest (a partition's end when first assigned, "
        "committed at once, so what arrives while its owner is away is read by the next).",
    )
    processing: str = setting(
        "exactly-once",
        "exactly-once: answers, comparison records and input offsets commit in one Kafka transaction "
        "(readers use read_committed); at-least-once: flush, then commit offsets (a crash may repeat answers).",
    )
    instance: str = setting(
        "", "Stable id of this replica (e.g. a StatefulSet pod name): makes it a static group member and names "
        "its transactional id, so a restart takes its partitions back at once. Default: unique per process "
        "(host-pid), so several instances on one host share the work."
    )
    session_timeout_ms: int = setting(
        6_000, "How long a silent instance keeps its partitions before the group moves them (ms); the broker's "
        "group.min.session.timeout.ms (default 6000) is the lowest it accepts.",
        # librdkafka's least; its most is max.poll.interval.ms (300000): above it, refused only once the
        # broker had answered, blaming --kafka-config (librdkafka's own bound, 3600000, was allowed here).
        minimum=1, maximum=300_000,
    )
    stall_timeout_ms: int = setting(
        30_000, "How long the poll loop may stop turning (a hang: a deadlock, a call that never returns) before "
        "the instance leaves its consumer group, the others take its partitions over, and its readiness fails "
        "(ms; its consumer's max.poll.interval.ms, at least --session-timeout-ms).",
        # librdkafka's default, 300 s, kept a hung instance's partitions unanswered for five minutes,
        # its heartbeats going on from librdkafka's thread, and held every rebalance of the group as
        # long (a review). 30 s: the loop turns at least once a second; what may take longer runs off
        # it (commits, return-address checks, and recovery's reading of the broker: on the loop, a
        # scan past the limit left the group, came back lost and scanned again, for good; 2 min was
        # the default while it did).
        minimum=1, maximum=86_400_000,
    )
    transaction_timeout_ms: int = setting(
        10_000, "How long the broker keeps a dead instance's transaction open before aborting it (ms).",
        minimum=1_000,  # librdkafka's least, refused only once the broker answered (blaming --kafka-config)
    )
    max_mailboxes: int = setting(
        100_000, "Requests in flight before request intake pauses (resumes below 80%); bounds memory under a flood.",
        minimum=10,
    )
    max_orphans: int = setting(
        50_000, "Requests whose scores came before them, at most (their scores wait for them; the oldest are "
        "dropped beyond; from half of it, the scores of partitions whose requests are not read yet wait).",
        minimum=10,
    )
    max_held_bytes: int = setting(
        256 * 1024 * 1024, "Bytes the scores not joined yet may hold, estimated: those waiting for their requests "
        "(the oldest are dropped beyond; from half of it, scores wait as for --max-orphans) and those of models a "
        "request's schedule does not name (refused beyond half of it, or when all is held).",
        minimum=MIN_HELD_BYTES,
    )
    max_budget_ms: int = setting(
        60_000, "Longest deadline a request may ask for, from its created_at (ms); longer ones are clamped.",
        minimum=1,
    )
    reply_topics: str = setting(
        "", "Which topics may be a return address (a regular expression matched against the whole name; default: "
        "the replies topic and those named after it, <replies>.<name>; '.*' for any). The deployment's own topics "
        "and Kafka-internal ones never may; its replies topic always may."
    )
    drain_timeout_s: float = setting(
        10.0, "On SIGTERM: how long to keep finishing requests in flight before committing and exiting (s)."
    )
    recovery_margin_s: float = setting(
        60.0, "Taking over a partition committed without output offsets: outputs this much older than the first "
        "re-read request are checked too (clock skew)."
    )
    output_linger_ms: int = setting(
        20, "How long answers/log records may wait to be batched into one produce request (ms); they are "
        "made final by the commit anyway, and replies to return addresses never wait.", maximum=900_000,
    )
    clock_record_delay_ms: int = setting(
        3, "A timer due this long by the wall clock on a quiet scores partition asks for a clock record (ms)."
    )

    def validate(self) -> None:
        for name in ("deadline_ms", "linger_ms", "orphan_grace_ms", "commit_interval_ms", "max_batch",
                     "max_budget_ms", "session_timeout_ms", "stall_timeout_ms", "transaction_timeout_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.processing not in ("exactly-once", "at-least-once"):
            raise ConfigError(f"--processing must be exactly-once or at-least-once, got {self.processing!r}")
        if self.processing == "exactly-once" and self.commit_interval_ms * 2 > self.transaction_timeout_ms:
            # The broker aborts a transaction open longer than its timeout: each one opened at a
            # commit and committed an interval later would be aborted, its outputs redone, for good.
            # Half leaves the commit itself room on a slow broker.
            raise ConfigError(f"--commit-interval-ms {self.commit_interval_ms} must be at most half of "
                              f"--transaction-timeout-ms ({self.transaction_timeout_ms}): the broker aborts a "
                              "transaction open longer than that, so none would commit; raise the timeout (the "
                              "broker's transaction.max.timeout.ms, 900000 by default, is its most)")
        if self.max_mailboxes < 10 or self.max_orphans < 10:
            raise ConfigError("--max-mailboxes and --max-orphans must be >= 10")
        if self.max_held_bytes < MIN_HELD_BYTES:
            raise ConfigError(f"--max-held-bytes must be at least {MIN_HELD_BYTES}, got {self.max_held_bytes}")
        if self.start_from not in ("earliest", "latest"):
            raise ConfigError(f"--start-from must be earliest or latest, got {self.start_from!r}")
        check_schedule_name(self.schedule_name, "--schedule-name")
        if self.instance and not legal_topic(self.instance):  # refused by the broker only at the group's join
            raise ConfigError(f"--instance {self.instance[:80]!r}: use letters, digits, '.', '_' and '-' (at most "
                              "249): it is the Kafka group.instance.id of this replica")
        try:
            re.compile(self.reply_topic_pattern())
        except re.error as exc:
            raise ConfigError(f"--reply-topics is not a regular expression: {exc}") from None
        self.schedule()

    def seeded_by(self) -> list[str]:
        """The flags given that make the schedule seeding an empty control topic."""
        return self.given("models", "wait", "deadline_ms", "schedule_file")

    def schedule(self) -> Schedule:
        beside = self.given("models", "wait", "deadline_ms") if self.schedule_file else []
        if beside:
            # Dropped silently: the file's schedule was followed (a probe); `schedule set` refuses the same.
            flags = " and ".join("--" + name.replace("_", "-") for name in beside)
            raise ConfigError(f"--schedule-file gives the models, waits and default deadline: {flags} go in the file "
                              "('models', 'waits_ms', 'default_deadline_ms')")
        if self.schedule_file:
            # The rendezvous follows --schedule-name on the control topic; a file naming another
            # schedule would silently become that one's version.
            return Schedule.from_file(self.schedule_file).named(self.schedule_name, self.schedule_file)
        waits = {}
        for model, ms in parse_pairs(self.wait, "--wait"):
            try:
                waits[model] = ascii_int(ms)
            except ValueError:
                raise ConfigError(f"--wait {model}={ms}: expected whole milliseconds") from None
        try:
            return authored(Schedule(models=self.models, waits_ms=waits, default_deadline_ms=self.deadline_ms,
                                     name=self.schedule_name, comment="bootstrap from the rendezvous' flags"))
        except ConfigError as err:
            # Named as the flags it comes from (and their variables, RDV_MODELS being the demo's too,
            # in another form): "schedule: model 'champion=demo:champion': ..." named neither (a review).
            raise ConfigError(f"--models, --wait and --deadline-ms make no valid schedule: {err}") from None

    def limits(self) -> JoinLimits:
        return JoinLimits(
            max_budget_ms=self.max_budget_ms, linger_ms=self.linger_ms, orphan_grace_ms=self.orphan_grace_ms,
            max_orphans=self.max_orphans, max_held_bytes=self.max_held_bytes,
            model_ttl_ms=int(self.model_ttl_s * 1000),
        )

    def static_member(self) -> bool:
        return bool(self.instance)

    def transactional_id(self) -> str:
        return f"{self.group_id()}-{self.instance or _PROCESS_ID}"

    def reply_topic_pattern(self) -> str:
        """--reply-topics, or by default the replies topic and those named after it (a client's
        own, `rdv.replies.alice`): a client could otherwise have answers written into any topic
        the rendezvous may write (another deployment's control topic, say, a security review;
        the whole prefix was not narrow enough: `rdv.staging.control` is under `rdv.`)."""
        return self.reply_topics or re.escape(self.topics().replies) + r"(\..+)?"

    def group_id(self) -> str:
        return self.group or f"{self.topic_prefix}rendezvous"


_PROCESS_ID = f"{socket.gethostname()}-{os.getpid()}"
