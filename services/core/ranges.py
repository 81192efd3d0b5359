"""Time and offset range flags (compare, replay, promote --window, --start-at), parsed before any
broker is contacted.

    --since 10m                      the last 10 minutes, up to the end of the topic
    --from 2024-05-01T12:00Z         an ISO time (no zone given = UTC, so a range means the same
    --from 1714564800000             thing on every machine), epoch milliseconds,
    --from offset:1200               or an offset (applied to every partition)
    --to ...                         the same forms; exclusive: the range is [from, to)

Times are Kafka record timestamps of `rdv.log` (when the rendezvous wrote the record, within
`--linger-ms` of the request's deadline); the reader turns them into per-partition offsets with
`offsets_for_times`, so a range is read exactly, never scanned from the beginning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.core.errors import ConfigError

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# Epoch milliseconds below this (1973-03-03) are almost surely epoch *seconds* typed by mistake.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_EPOCH_MS = 100_000_000_000
# The end of year 9999 (what an ISO time can name) and Kafka's largest offset.
_MAX_EPOCH_MS = 253_402_300_799_999
_MAX_OFFSET = 2**63 - 1
# A duration longer than this reaches before any Kafka record (about 8,000 years).
_MAX_DURATION_MS = _MAX_EPOCH_MS // 1_000 * 1_000
OFFSET_PREFIX = "offset:"


@dataclass(frozen=True)
class TimeBound:
    """A record timestamp, epoch ms."""

    ms: int


@dataclass(frozen=True)
class OffsetBound:
    """The same offset in every partition."""

    offset: int


Bound = TimeBound | OffsetBound


@dataclass(frozen=True)
class Bounds:
    """[start, end); None = the beginning / the end of the topic when the read starts."""

    start: Bound | None = None
    end: Bound | None = None

    def describe(self) -> str:
        return f"from {_describe(self.start, 'the beginning')} to {_describe(self.end, 'the end')}"


def _describe(bound: Bound | None, default: str) -> str:
    if bound is None:
        return default
    if isinstance(bound, OffsetBound):
        return f"offset {bound.offset}"
    return format_ms(bound.ms)


def format_ms(ms: int) -> str:
    """Epoch ms as an ISO UTC time to the second, e.g. 2024-05-01 12:00:00Z (a time no calendar
    date can show, e.g. 2^63 - 1, as its number)."""
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return f"{ms} ms since 1970"


def format_duration_ms(ms: float) -> str:
    """A duration in `parse_duration_ms`'s units, exact when it is a whole number of one (`5m`,
    `2h`), else to a tenth of the largest unit it reaches (`1.5h`, `2.3s`)."""
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_MS[unit]
        if ms >= size:
            return f"{int(ms) // size}{unit}" if ms % size == 0 else f"{ms / size:.1f}{unit}"
    return f"{ms:.0f}ms" if ms else "0s"


def parse_duration_ms(text: str, flag: str = "--since") -> int:
    """`90s`, `10m`, `2h`, `1d`, `500ms`, `1.5h` -> milliseconds (positive)."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(f"{flag}: expected a duration like 90s, 10m, 2h, got {text!r}")
    amount = float(match.group(1)) * _UNIT_MS[match.group(2)]
    if amount > _MAX_DURATION_MS:
        raise ConfigError(f"{flag}: the duration is longer than any Kafka log, got {text[:40]!r}")
    ms = int(amount)
    if ms <= 0:
        raise ConfigError(f"{flag}: the duration must be positive, got {text!r}")
    return ms


def parse_bound(text: str, flag: str) -> Bound:
    """An ISO time, epoch milliseconds, or `offset:N`."""
    value = text.strip()
    if value.lower().startswith(OFFSET_PREFIX):
        number = value[len(OFFSET_PREFIX):].strip()
        if not (number.isascii() and number.isdigit()) or int(number) > _MAX_OFFSET:
            raise ConfigError(f"{flag}: expected offset:N with N a whole number from 0 to 2^63-1, got {text[:40]!r}")
        return OffsetBound(int(number))
    if value.isascii() and value.isdigit():
        ms = int(value)
        if ms < _MIN_EPOCH_MS:
            raise ConfigError(f"{flag}: {text!r} looks like epoch seconds; give epoch milliseconds")
        if ms > _MAX_EPOCH_MS:
            raise ConfigError(f"{flag}: {text[:40]!r} is after the year 9999; give epoch milliseconds")
        return TimeBound(ms)
    return TimeBound(_parse_iso_ms(value, flag))


def _parse_iso_ms(value: str, flag: str) -> int:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{flag}: expected an ISO time (2024-05-01T12:00:00Z), epoch ms or offset:N, got {value!r}"
        ) from None
    ms = epoch_ms(moment)
    if ms < 0:  # Kafka's offset lookup reads -1, -2 and -3 as latest, earliest and max timestamp
        raise ConfigError(f"{flag}: {value[:40]!r} is before 1970; no Kafka record is")
    return ms


def epoch_ms(moment: datetime) -> int:
    """`moment` in whole milliseconds since the epoch (UTC when it names no zone), exactly: the
    float product timestamp() * 1000 fell 1 ms short for some times (2038-06-21T11:24:11.299Z read
    as ...298)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def parse_bounds(since: str, start: str, end: str, now_ms: int) -> Bounds:
    """The range the three flags describe; `--since` and `--from` exclude each other."""
    if since and start:
        raise ConfigError("give either --since or --from, not both")
    lower: Bound | None = None
    if since:
        back = parse_duration_ms(since)
        if back > now_ms:  # a negative time bound read the topic from its start without a word (a review)
            raise ConfigError(f"--since {since[:40]!r} reaches before 1970; no Kafka record is (give a shorter one)")
        lower = TimeBound(now_ms - back)
    elif start:
        lower = parse_bound(start, "--from")
    upper = parse_bound(end, "--to") if end else None
    if type(lower) is type(upper) and lower is not None and upper is not None and _key(upper) < _key(lower):
        raise ConfigError(f"the range ends before it starts ({Bounds(lower, upper).describe()})")
    return Bounds(lower, upper)


def _key(bound: Bound) -> int:
    return bound.ms if isinstance(bound, TimeBound) else bound.offset
