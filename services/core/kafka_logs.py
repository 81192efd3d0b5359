"""librdkafka's log lines and client errors: one line per kind of event per client per period.

While the broker is away librdkafka retries its connections every 50 to 100 ms (a consumer
re-bootstraps, starting a new connection's backoff each time), and reports each failure twice:
a log line (`FAIL ... Connection refused`) and an error event (error_cb). Both go through the
client's `ClientLog`, which logs a message the first time, then counts it for `PERIOD_S` and says
how often it came when it next passes ("... (repeated 312 times in the last 30 s)"); a message
is the same when it differs only in timings and counts ("after 0ms", "3 identical error(s)
suppressed"). The log line and the error event of one failure count once, as one line.

Logged every time, at once: fatal errors, refused logins and permissions, and librdkafka's
critical lines. `flush()` (the broker answering again) says what was held back and starts over,
so the first line of the next outage is logged as it comes.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError

LIBRDKAFKA_LOG = logging.getLogger("librdkafka")
CLIENT_LOG = logging.getLogger("services.core.kafka")  # error events: "kafka client: ..."

PERIOD_S = 30.0
# The log line and the error event of one failure arrive within this of each other.
PAIR_S = 1.0
MAX_KINDS = 256  # per client: kinds beyond are forgotten oldest first (their counts said first)

_THREAD = re.compile(r"^\[thrd:[^\]]*\]:\s*")
_VARYING = (
    (re.compile(r",?\s*\d+ identical error\(s\) suppressed"), ""),
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?Z?"), "<time>"),
    (re.compile(r"\b\d+(?:\.\d+)?\s?(ms|us|s)\b"), r"N\1"),
    (re.compile(r"\b\d+ (connection attempt|attempt|retr|time)"), r"N \1"),
)
# Said every time: what retrying will not mend, or what the operator must act on at once.
_ALWAYS_CODES = frozenset({
    KafkaError._AUTHENTICATION, KafkaError._FATAL, KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
})
_ALWAYS_TEXT = re.compile(r"authenticat|authoriz|fatal", re.IGNORECASE)


def text_of(message: str) -> str:
    """A librdkafka log line's message without its thread prefix ("[thrd:main]: ")."""
    return _THREAD.sub("", message)


def normalise(message: str) -> str:
    """The kind of a message: its text less what varies from one retry to the next."""
    kind = text_of(message)
    for pattern, replacement in _VARYING:
        kind = pattern.sub(replacement, kind)
    return kind


@dataclass
class _Kind:
    logged_at: float
    # The last one held back, for a summary said when none follows: logger, level, format, args.
    line: tuple[logging.Logger, int, str, tuple[Any, ...]]
    # Held back since `logged_at`, by source ("log", "error"): the two report the same failures,
    # not always interleaved (a client polled now and then serves a batch of each).
    held: dict[str, int] = field(default_factory=dict)
    said: tuple[str, float] | None = None  # (source, time) of the line said last: its twin may follow

    @property
    def repeats(self) -> int:
        return max(self.held.values(), default=0)


_clients: weakref.WeakSet[ClientLog] = weakref.WeakSet()
_clients_lock = threading.Lock()


class ClientLog:
    """One client's librdkafka log lines (`log`, its `logger`) and error events (`error_cb`)."""

    def __init__(self, error_cb: Callable[[KafkaError], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, period_s: float = PERIOD_S):
        self._extra = error_cb
        self._clock = clock
        self._period = period_s
        self._kinds: dict[str, _Kind] = {}
        self._lock = threading.Lock()
        with _clients_lock:
            _clients.add(self)

    # librdkafka's log callback: confluent-kafka calls logger.log(level, "%s [%s] %s", fac, name, buf).
    def log(self, level: int, msg: str, *args: Any, **_kwargs: Any) -> None:
        if len(args) == 3 and isinstance(args[2], str):
            text = args[2]
        else:
            try:
                text = msg % args if args else msg
            except (TypeError, ValueError):
                text = f"{msg} {args}"
        always = level >= logging.CRITICAL or bool(_ALWAYS_TEXT.search(text_of(text)))
        self._event("log", level, LIBRDKAFKA_LOG, msg, args, text_of(text), always)

    def error_cb(self, err: KafkaError) -> None:
        text = err.str()
        always = err.fatal() or err.code() in _ALWAYS_CODES
        level = logging.ERROR if err.fatal() else logging.WARNING
        self._event("error", level, CLIENT_LOG, "kafka client: %s", (text,), text, always)
        if self._extra is not None:
            self._extra(err)

    def _event(self, source: str, level: int, logger: logging.Logger, msg: str, args: tuple[Any, ...],
               text: str, always: bool) -> None:
        now = self._clock()
        key = normalise(text)
        said: list[tuple[logging.Logger, int, str, tuple[Any, ...]]] = []
        with self._lock:
            self._due(now, said, skip=key)
            kind = self._kinds.get(key)
            if kind is not None and kind.said is not None and kind.said[0] != source \
                    and now - kind.said[1] <= PAIR_S:
                kind.said = None  # the twin of the line just said (a log line and an error event)
            elif kind is None or always or now - kind.logged_at >= self._period:
                if kind is None:
                    self._make_room(said)
                    kind = self._kinds[key] = _Kind(now, (logger, level, msg, args))
                said.append((logger, level, msg + "%s", (*args, self._repeated(kind, now))))
                kind.logged_at, kind.held, kind.said = now, {}, (source, now)
            else:
                kind.held[source] = kind.held.get(source, 0) + 1
                kind.line = (logger, level, msg, args)
        for target, lvl, fmt, fmt_args in said:
            target.log(lvl, fmt, *fmt_args)

    @staticmethod
    def _repeated(kind: _Kind, now: float) -> str:
        if kind.repeats == 0:
            return ""
        return f" (repeated {kind.repeats} times in the last {now - kind.logged_at:.0f} s)"

    def _summary(self, kind: _Kind, now: float) -> tuple[logging.Logger, int, str, tuple[Any, ...]]:
        logger, level, msg, args = kind.line
        return logger, level, msg + "%s", (*args, self._repeated(kind, now))

    def _due(self, now: float, said: list[tuple[logging.Logger, int, str, tuple[Any, ...]]], skip: str) -> None:
        """Summaries of kinds held back for a whole period that did not come again since."""
        for key, kind in self._kinds.items():
            if key != skip and kind.repeats and now - kind.logged_at >= self._period:
                said.append(self._summary(kind, now))
                kind.logged_at, kind.held = now, {}

    def _make_room(self, said: list[tuple[logging.Logger, int, str, tuple[Any, ...]]]) -> None:
        while len(self._kinds) >= MAX_KINDS:
            key = min(self._kinds, key=lambda k: self._kinds[k].logged_at)
            kind = self._kinds.pop(key)
            if kind.repeats:
                said.append(self._summary(kind, self._clock()))

    def flush(self) -> None:
        """Say what was held back, and forget every kind: the next one is logged as it comes."""
        now = self._clock()
        with self._lock:
            said = [self._summary(kind, now) for kind in self._kinds.values() if kind.repeats]
            self._kinds.clear()
        for target, lvl, fmt, fmt_args in said:
            target.log(lvl, fmt, *fmt_args)


def flush() -> None:
    """Every client's held-back counts said, and their kinds forgotten (the broker is back: the
    first line of a later outage is logged at once)."""
    with _clients_lock:
        clients = list(_clients)
    for client in clients:
        client.flush()


def wired(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with its client's log lines and error events going through a new `ClientLog`
    (a caller's `error_cb`, e.g. a health tracker's, still hears of every error)."""
    extra = config.get("error_cb")
    owner = getattr(extra, "__self__", None)
    if isinstance(owner, ClientLog):  # a config another client was given: its caller's callback
        extra = owner._extra
    client_log = ClientLog(extra if callable(extra) else None)
    return {**config, "error_cb": client_log.error_cb, "logger": client_log}
