"""Process plumbing every service shares: a stop flag, signal handling, the poll loop.

Signals only flip a flag (no work inside a handler); the loop polls with a short timeout,
sees the flag, and returns, and the caller closes everything through an ExitStack.
A second SIGINT/SIGTERM exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Protocol

from confluent_kafka import Message

from services.core.kafka import Consumer

log = logging.getLogger(__name__)


def now_ms() -> int:
    """Wall clock in epoch milliseconds: the time base of every record (DESIGN.md section 2)."""
    return time.time_ns() // 1_000_000


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGINT/SIGTERM set `stop`; a second one ends the process immediately."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


class BatchHandler(Protocol):
    def on_batch(self, messages: list[Message]) -> None:
        """Handle what one consume returned (possibly nothing)."""

    def next_wakeup(self) -> float:
        """Seconds until the handler has timed work to do (the poll timeout)."""

    def on_tick(self) -> None:
        """Timed work: deadlines, periodic commits. Called after every poll."""


def run_poll_loop(
    consumer: Consumer,
    handler: BatchHandler,
    stop: threading.Event,
    *,
    max_batch: int = 500,
    max_wait: float = 0.1,
    on_idle: Callable[[], None] | None = None,
) -> None:
    """The one consume loop of every service: poll, handle, tick, until `stop` is set."""
    while not stop.is_set():
        timeout = max(0.0, min(max_wait, handler.next_wakeup()))
        messages = consumer.consume(max_batch, timeout)
        handler.on_batch(messages)
        handler.on_tick()
        if not messages and on_idle is not None:
            on_idle()


def stop_processes(processes: Iterable[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM every live child (they drain and commit), then SIGKILL whichever outlives `timeout`."""
    live = [p for p in processes if p.poll() is None]
    for proc in live:
        proc.terminate()
    for proc in live:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
