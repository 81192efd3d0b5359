"""Settings of `rendezvous compare` (flags, `RDV_*` variables; see services/core/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass

from services.core.errors import ConfigError
from services.core.ranges import Bounds, parse_bounds, parse_duration_ms
from services.core.runtime import now_ms
from services.core.settings import KafkaSettings, check_format, check_writable_file, setting


@dataclass(frozen=True)
class CompareSettings(KafkaSettings):
    """A report on the comparison log (`rdv.log`) over a time or offset range."""

    since: str = setting("", "Report the last DURATION up to now, e.g. 90s, 10m, 2h, 1d.")
    from_: str = setting(
        "",
        "Start of the range: an ISO time (2024-05-01T12:00:00Z; no zone = UTC), epoch ms, or offset:N "
        "(the same offset in every partition). Default: the beginning of the topic.",
        env="RDV_FROM",
        flag="--from",
    )
    to: str = setting(
        "", "End of the range, exclusive; the same forms as --from. Default: the end of the topic "
        "when the read starts."
    )
    html: str = setting("", "Also write a self-contained HTML report with plots to this file.")
    format: str = setting("table", "Output: table (for people) or json (for scripts).")
    champion: str = setting(
        "", "The model the others are compared with. Default: the model most often chosen with status OK."
    )
    max_records: int = setting(
        0, "Stop reading after this many records (0 = no limit); memory at its peak (the columns and the "
        "summary) is ~450 bytes per record of two outputs, ~520 of three. A range surely over the free memory "
        "is refused before it is read."
    )
    bucket: str = setting(
        "", "Time bucket of the agreement-over-time plot, e.g. 1m. Default: about 50 buckets over the range."
    )
    workers: int = setting(
        2, "Processes that read and decode a large range (200,000+ records; the partitions are split "
        "between them, at most one per CPU). Decoding is CPU-bound: one process uses one core.", minimum=1,
    )

    def validate(self) -> None:
        check_format(self.format)
        if self.html:
            check_writable_file(self.html, "--html")  # now, not after the whole range was read
        self.bounds()
        self.bucket_ms()
        if self.max_records < 0:
            raise ConfigError(f"--max-records must be >= 0, got {self.max_records}")

    def bounds(self, now: int | None = None) -> Bounds:
        """The range, with `--since` measured back from `now` (epoch ms; default: the clock)."""
        return parse_bounds(self.since, self.from_, self.to, now_ms() if now is None else now)

    def bucket_ms(self) -> int | None:
        return parse_duration_ms(self.bucket, "--bucket") if self.bucket else None
