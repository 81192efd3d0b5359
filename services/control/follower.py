"""The versions of one schedule, read from the control topic and kept up to date on a thread.

What a reader other than the rendezvous knows of the schedule in force: the gateway answers by it,
the comparison service takes its champion from it. Versions are accepted by the rendezvous' own
rule (`ScheduleBook.refusal`), so every reader agrees on what is in force.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from services.control.schedule import Schedule
from services.control.topic import (
    READER_POLL_S,
    ControlFeed,
    ControlRecord,
    ScheduleBook,
    check_keeps_history,
)
from services.core.runtime import now_ms

log = logging.getLogger(__name__)


class ScheduleFollower:
    """The accepted versions of one schedule, read from the control topic and kept up to date."""

    def __init__(self, config: Mapping[str, Any], topic: str, name: str, poll_s: float = READER_POLL_S):
        self.book = ScheduleBook(name)
        self.stopped: str | None = None  # why following stopped for good, if it did
        # Refused as the rendezvous refuses it: a gateway started after the broker deleted old
        # versions reads none (every call a 404) or an older one than the rendezvous answers by.
        check_keeps_history(config, topic)
        self._feed = ControlFeed(config, topic)  # which checks its one partition
        self._apply(self._feed.read_history())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, args=(poll_s,), name="rdv-control-follower",
                                        daemon=True)
        self._thread.start()

    def _apply(self, records: Iterable[ControlRecord]) -> None:
        for schedule in self.book.take(records):
            log.info("schedule %s v%d: %s", schedule.name, schedule.version, list(schedule.models))

    def _follow(self, poll_s: float) -> None:
        try:
            while not self._stop.wait(poll_s):
                self._apply(self._feed.poll())
        except Exception as err:  # noqa: BLE001 - said (readiness, liveness), never a silent stop
            log.error("stopped following schedule %s on the control topic: %s", self.book.name, err)
            self.stopped = f"stopped following schedule {self.book.name!r}: {err}"

    def in_force(self) -> Schedule | None:
        return self.book.in_force(now_ms()) if self.book.latest else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._feed.close()
