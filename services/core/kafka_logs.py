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
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError

from services.core.rate_limit import Held, OncePerPeriod

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


Line = tuple[logging.Logger, int, str, tuple[Any, ...]]  # logger, level, format, args


@dataclass
class _Kind:
    """What a client remembers of one kind of message besides its count (kept by the limiter)."""

    held_line: Line | None = None  # the last one held back, for a summary said when none follows
    said: tuple[str, float] | None = None  # (source, time) of the line said last: its twin may follow

    def twin_of(self, source: str, now: float) -> bool:
        """True when a line of this kind from `source` now is the other half of the one said last."""
        return self.said is not None and self.said[0] != source and now - self.said[1] <= PAIR_S


_clients: weakref.WeakSet[ClientLog] = weakref.WeakSet()
_clients_lock = threading.Lock()


class ClientLog:
    """One client's librdkafka log lines (`log`, its `logger`) and error events (`error_cb`)."""

    def __init__(self, error_cb: Callable[[KafkaError], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, period_s: float = PERIOD_S):
        self._extra = error_cb
        self._clock = clock
        # Per kind of message; its lines held back are counted by source ("log", "error"): the two
        # report the same failures, not always interleaved (a client polled now and then serves a
        # batch of each).
        self._limit: OncePerPeriod[str] = OncePerPeriod(period_s, clock)
        self._kinds: dict[str, _Kind] = {}  # the limiter's keys, each with what else it needs
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
        with self._lock:
            # Summaries of kinds held back for a whole period that did not come again since.
            said = [self._summary(due, held) for due, held in self._limit.due(now, skip=key)]
            kind = self._kinds.get(key)
            if kind is not None and kind.twin_of(source, now):
                kind.said = None  # the twin of the line just said (a log line and an error event)
            else:
                if kind is None:
                    self._make_room(said, now)
                    kind = self._kinds[key] = _Kind()
                held = self._limit.passes(key, now, always=always, source=source)
                if held is None:
                    kind.held_line = (logger, level, msg, args)
                else:
                    said.append((logger, level, msg + "%s", (*args, held.repeated())))
                    kind.said = (source, now)
        for target, lvl, fmt, fmt_args in said:
            target.log(lvl, fmt, *fmt_args)

    def _summary(self, key: str, held: Held) -> Line:
        line = self._kinds[key].held_line
        assert line is not None  # the limiter held a line of this kind back
        logger, level, msg, args = line
        return logger, level, msg + "%s", (*args, held.repeated())

    def _make_room(self, said: list[Line], now: float) -> None:
        while len(self._limit) >= MAX_KINDS:
            key = self._limit.oldest()
            held = self._limit.forget(key, now)
            if held.lines:
                said.append(self._summary(key, held))
            del self._kinds[key]

    def flush(self) -> None:
        """Say what was held back, and forget every kind: the next one is logged as it comes."""
        now = self._clock()
        with self._lock:
            said = [self._summary(key, held) for key, held in self._limit.drain(now)]
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
