"""Settings of one rendezvous instance."""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass

from services.control.schedule import Schedule
from services.core.errors import ConfigError
from services.core.settings import KafkaSettings, parse_pairs, setting


@dataclass(frozen=True)
class RendezvousSettings(KafkaSettings):
    """How the rendezvous joins scores to requests and when it answers."""

    schedule_file: str = setting(
        "", "JSON schedule file (models, waits_ms, default_deadline_ms, name, version)."
    )
    schedule_name: str = setting(
        "default", "Which schedule on the control topic this rendezvous follows."
    )
    models: tuple[str, ...] = setting(
        ("champion",),
        "Model preference order when no schedule file is given, e.g. champion,challenger,canary.",
    )
    wait: tuple[str, ...] = setting((), "Per-model wait before falling back, e.g. --wait champion=50 (ms).")
    deadline_ms: int = setting(200, "Default answer budget for requests that carry no deadline (ms).")
    linger_ms: int = setting(
        1000, "How long after the deadline to keep collecting scores for the comparison log (ms)."
    )
    orphan_grace_ms: int = setting(
        10_000, "How long after its deadline a score may wait for its request before it is dropped (ms)."
    )
    model_ttl_s: float = setting(
        30.0, "A model that sent no score for this long is no longer expected in comparison records (s)."
    )
    commit_interval_ms: int = setting(100, "How often finished offsets are committed (ms).")
    max_batch: int = setting(1000, "Most records handled per poll.")
    group: str = setting("", "Consumer group (default: <prefix>rendezvous); instances share it.")
    start_from: str = setting("earliest", "Where a new consumer group starts: earliest or latest.")
    metrics_port: int = setting(0, "Port of the /metrics, /healthz and /readyz endpoint (0 = off).")
    processing: str = setting(
        "exactly-once",
        "exactly-once: answers, comparison records and input offsets commit in one Kafka transaction "
        "(readers use read_committed); at-least-once: flush, then commit offsets (a crash may repeat answers).",
    )
    transactional_replies: bool = setting(
        False, "With exactly-once: also put answers to return addresses in the transaction (a client then "
        "never sees a repeated answer, but waits for the commit interval)."
    )
    instance: str = setting(
        "", "Stable id of this replica (default: the host name); with exactly-once it names the "
        "transactional id, so a restarted replica aborts its predecessor's open transaction at once."
    )
    session_timeout_ms: int = setting(
        10_000, "How long a silent instance keeps its partitions before the group moves them (ms)."
    )
    static_membership: bool = setting(
        False, "Join the group as a static member named --instance: a restarted replica gets its partitions "
        "back at once. Caveat: after a broker outage longer than the session timeout librdkafka treats the "
        "fenced old member as fatal and the service exits (to be restarted)."
    )
    transaction_timeout_ms: int = setting(
        10_000, "How long the broker keeps a dead instance's transaction open before aborting it (ms)."
    )
    max_mailboxes: int = setting(
        100_000, "Requests in flight before intake pauses (resumes below 80%); bounds memory under a flood."
    )
    drain_timeout_s: float = setting(
        10.0, "On SIGTERM: how long to keep finishing requests in flight before committing and exiting (s)."
    )
    recovery_margin_s: float = setting(
        60.0, "After a restart, outputs this much older than the first re-read request are checked too (clock skew)."
    )

    def validate(self) -> None:
        for name in ("deadline_ms", "linger_ms", "orphan_grace_ms", "commit_interval_ms", "max_batch"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.processing not in ("exactly-once", "at-least-once"):
            raise ConfigError(f"--processing must be exactly-once or at-least-once, got {self.processing!r}")
        if self.max_mailboxes < 10:
            raise ConfigError(f"--max-mailboxes must be >= 10, got {self.max_mailboxes}")
        if self.start_from not in ("earliest", "latest"):
            raise ConfigError(f"--start-from must be earliest or latest, got {self.start_from!r}")
        self.schedule()

    def schedule(self) -> Schedule:
        if self.schedule_file:
            return dataclasses.replace(Schedule.from_file(self.schedule_file), name=self.schedule_name)
        waits = {}
        for model, ms in parse_pairs(self.wait, "--wait"):
            try:
                waits[model] = int(ms)
            except ValueError:
                raise ConfigError(f"--wait {model}={ms}: expected whole milliseconds") from None
        return Schedule(models=self.models, waits_ms=waits, default_deadline_ms=self.deadline_ms,
                        name=self.schedule_name, comment="bootstrap from the rendezvous' flags")

    def transactional_id(self) -> str:
        return f"{self.group_id()}-{self.instance or socket.gethostname()}"

    def group_id(self) -> str:
        return self.group or f"{self.topic_prefix}rendezvous"
