"""Settings of the live comparison service."""

from __future__ import annotations

from dataclasses import dataclass

from services.control.schedule import DEFAULT_NAME as DEFAULT_SCHEDULE_NAME
from services.control.schedule import check_schedule_name
from services.core.errors import ConfigError
from services.core.settings import MAX_BATCH, ServiceSettings, setting


@dataclass(frozen=True)
class ComparisonSettings(ServiceSettings):
    """What the comparison service reads, how long its window is, and how it exports."""

    window_s: float = setting(
        300.0,
        "Length of the sliding window the gauges describe, in seconds of event time (the records' "
        "created_at; the window ends at the newest created_at seen, so a replay shows its own past).",
        above=0,
    )
    buckets: int = setting(
        10, "Time buckets the window is made of; the window slides by one bucket (window_s / buckets).",
        minimum=1,
    )
    # At least 0.1 s: each export merges the whole window; 1e-9 (taken before) exported after
    # every batch, whatever the batch (the misconfiguration probe).
    export_interval_s: float = setting(5.0, "How often the window's gauges are recomputed (s, at least 0.1).",
                                       minimum=0.1)
    reference_size: int = setting(
        5000,
        "Scores of each model that form its frozen 'self' reference for drift (its first N scores "
        "seen by this process); drift gauges appear once a model has that many.",
        minimum=1,
    )
    champion: str = setting(
        "",
        "The champion the pairs compare against. Default: the preferred model of the schedule in force "
        "(--schedule-name, followed on the control topic); with no schedule there, the chosen model of "
        "the latest record answered with status OK.",
    )
    schedule_name: str = setting(
        DEFAULT_SCHEDULE_NAME, "The schedule whose preferred model is the champion, unless --champion names one.",
    )
    canary: str = setting(
        "canary",
        "Name of the canary model: every other model's score distribution is also compared with "
        "it (reference=canary); empty = none.",
    )
    max_models: int = setting(
        50,
        "Most distinct model names (and 4x as many model/version pairs) given their own label "
        "values; later ones are counted as '_other', so a bad producer cannot explode cardinality. When "
        "all are taken, names no longer in the window give their places (and series) back, and, while a name "
        "waits for one, names with under 1% of the champion's outputs in the window.",
        minimum=1,
    )
    future_tolerance_s: float = setting(
        120.0,
        "A record created more than this far in the future (by this host's clock) is dead-lettered: "
        "it would move the window's end and expire everything else (s). The rendezvous refuses "
        "requests created more than a minute ahead of the broker's clock, and this host's may lag it; "
        "one within it moves the end by at most this much (and by at most half of --window-s).",
        above=0,
    )

    def future_tolerance_ms(self) -> int:
        """How far ahead of this host's clock a record may be created: at most half the window,
        so that one record cannot expire most of what the window holds."""
        return int(min(self.future_tolerance_s, self.window_s / 2) * 1000)
    max_batch: int = setting(
        5000, "Most records handled per poll (a backlog is folded in batches this large: each batch has a fixed cost).",
        minimum=1, maximum=MAX_BATCH,
    )
    commit_interval_ms: int = setting(
        1000, "How often the positions after the handled records are committed (ms).",
        minimum=1,
    )
    group: str = setting("", "Consumer group (default: <prefix>comparison).", identifier=True)
    start_from: str = setting(
        "latest",
        "Where a new consumer group starts: latest (a live view from now on) or earliest (replay "
        "the log's retention through the event-time window).",
    )

    def validate(self) -> None:
        for name in ("window_s", "export_interval_s", "future_tolerance_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("buckets", "reference_size", "max_models", "max_batch", "commit_interval_ms"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.bucket_ms() < 1:
            raise ConfigError(f"--window-s {self.window_s} split in {self.buckets} buckets is under 1 ms")
        check_schedule_name(self.schedule_name, "--schedule-name")
        if self.start_from not in ("earliest", "latest"):
            raise ConfigError(f"--start-from must be earliest or latest, got {self.start_from!r}")

    def bucket_ms(self) -> int:
        return int(self.window_s * 1000) // self.buckets

    def group_id(self) -> str:
        return self.group or f"{self.topic_prefix}comparison"
