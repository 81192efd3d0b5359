"""Completing a future someone else may cancel at any moment.

A caller that stops waiting (asyncio's `wait_for` timing out, a gateway call given up) cancels
its future from its own thread; between a reader's `done()` check and its `set_result` that
cancel makes `set_result` raise InvalidStateError, which killed the thread that reads every
caller's answers. Nothing is lost by ignoring it: the caller no longer wants the result.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import TypeVar

T = TypeVar("T")


def settle(future: Future[T], result: T) -> None:
    """`future.set_result(result)`, unless it is done (or cancelled) already."""
    with contextlib.suppress(InvalidStateError):
        future.set_result(result)


def fail(future: Future[T], err: BaseException) -> None:
    """`future.set_exception(err)`, unless it is done (or cancelled) already."""
    with contextlib.suppress(InvalidStateError):
        future.set_exception(err)


def in_thread(work: Callable[[], T], name: str) -> Future[T]:
    """`work` on a daemon thread of its own (a process stopping does not wait for it: a call to
    an away service may not return); its outcome, a result or an exception, in the future."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits: a future left pending waits for good
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
