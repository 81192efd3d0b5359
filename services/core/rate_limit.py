"""Once per period per key, with the count held back: for log lines any caller can make come at will.

A key's first line passes; the next ones within `period_s` of the last that passed are held back
and counted; the first after the period passes with that count ("... repeated 312 times in the
last 30 s"). Used by librdkafka's log lines and error events (kafka_logs.ClientLog) and by
uvicorn's lines for the requests it refuses (gateway/http_guard.py).

Not thread-safe: a limiter several threads share is used under its owner's lock (ClientLog's);
the gateway's is used by uvicorn's one event-loop thread only.

`PerSecond` bounds work rather than lines: at most N uses a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

K = TypeVar("K", bound=Hashable)


class Held(NamedTuple):
    """What was held back of a key: how many lines, since its last line passed `seconds` ago."""

    lines: int
    seconds: float

    def repeated(self) -> str:
        """What to add to the line that passes: how often it was held back since the last."""
        return f" (repeated {self.lines} times in the last {self.seconds:.0f} s)" if self.lines else ""


@dataclass
class _Key:
    passed_at: float
    # Held back since `passed_at`, by source: when each event is reported by several sources
    # (librdkafka's log line and error event of one failure), the count is the largest, not the sum.
    held: dict[str, int] = field(default_factory=dict)

    def since(self, now: float) -> Held:
        return Held(max(self.held.values(), default=0), now - self.passed_at)

    def restart(self, now: float) -> Held:
        held = self.since(now)
        self.passed_at, self.held = now, {}
        return held


class OncePerPeriod(Generic[K]):
    """Which lines pass, per key, with `clock` (time.monotonic; tests give their own)."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self.clock = clock
        self._keys: dict[K, _Key] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def passes(self, key: K, now: float | None = None, *, always: bool = False, source: str = "") -> Held | None:
        """Whether a line of `key` passes now: what was held back of the key since its last line
        passed (nothing for its first), or None: held back, and counted under `source`. A line
        `always` passes, and its key's period starts over from it."""
        now = self.clock() if now is None else now
        state = self._keys.get(key)
        if state is None:
            self._keys[key] = _Key(now)
            return Held(0, 0.0)
        if always or now - state.passed_at >= self.period_s:
            return state.restart(now)
        state.held[source] = state.held.get(source, 0) + 1
        return None

    def due(self, now: float | None = None, skip: K | None = None) -> list[tuple[K, Held]]:
        """The keys (but `skip`) with lines held back a whole period and none passing since: what
        they held back, to be said now; their periods start over."""
        now = self.clock() if now is None else now
        return [(key, state.restart(now)) for key, state in self._keys.items()
                if key != skip and state.held and now - state.passed_at >= self.period_s]

    def oldest(self) -> K:
        """The key whose last line passed longest ago (KeyError: none)."""
        if not self._keys:
            raise KeyError("no keys")
        return min(self._keys, key=lambda k: self._keys[k].passed_at)

    def forget(self, key: K, now: float | None = None) -> Held:
        """What was held back of `key`; its next line passes as a first one."""
        return self._keys.pop(key).since(self.clock() if now is None else now)

    def drain(self, now: float | None = None) -> list[tuple[K, Held]]:
        """What every key held back (those that did), and every key forgotten."""
        now = self.clock() if now is None else now
        held = [(key, state.since(now)) for key, state in self._keys.items() if state.held]
        self._keys.clear()
        return held


class PerSecond:
    """At most `most` uses in each second of `clock` (time.monotonic): for work any caller can
    ask for at will (a schema id looked up, a close spelling looked for)."""

    def __init__(self, most: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.most = most
        self.clock = clock
        self._window = (0, 0)  # (second, uses in it)

    def spend(self) -> bool:
        """Whether one more use fits in this second (it is counted either way)."""
        second = int(self.clock())
        start, used = self._window
        used = used + 1 if start == second else 1
        self._window = (second, used)
        return used <= self.most
