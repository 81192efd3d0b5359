"""A model that never returns: its batch gets error Scores, is committed past, and the worker exits.

A model's `predict` runs on the worker's poll loop. One that never returns (an input that sends
a library into an endless loop, a deadlock in native code) stops that loop for good: no more
scores, and a restart re-reads the same batch and hangs again, as does every other replica once
the group hands the partitions on. Python cannot interrupt a call, so this thread does what the
stuck loop cannot, once a model has spent `timeout_s` on one batch:

  1. an error Score for every request of the batch from each model that has not written its
     Scores yet ("did not answer within ..."): the rendezvous falls back to the other models,
  2. a flush: those Scores, and every earlier one, acknowledged by the broker (and none lost to
     the service's own commit thread, whose flush may have taken a failure the stuck loop never
     settled: then nothing is committed),
  3. a synchronous commit of the batch's offsets, so the next process reads on after it. No other
     commit can land after it and move the position back: the worker commits its offsets from
     the poll loop (asynchronously, queued before this one), and the loop is stuck,
  4. the process exits with EXIT_MODEL_HUNG, for its supervisor (Kubernetes, systemd, the demo's
     operator) to start a fresh one: the stuck thread cannot be stopped any other way.

The Scores and the commit are at-least-once like the worker's own: should the model return
while this runs, each model's Scores are written once (by whichever side claims it first).

A model stuck in C code that never releases the interpreter lock stops this thread too. For that,
the batch is also written to shared memory (`Board`) for the rescue process (rescue.py), which
does the same from outside the process a little later and kills it; whichever of the two takes
the batch first flags it there, and the other stands down.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from confluent_kafka import Message, TopicPartition

from services.core.errors import RendezvousError
from services.core.kafka import Consumer, Producer
from services.model_worker.rescue_board import Board
from services.model_worker.score_writer import hung_reasons

log = logging.getLogger(__name__)

EXIT_MODEL_HUNG = 70  # EX_SOFTWARE: this process cannot go on; a fresh one reads on after the batch
FLUSH_TIMEOUT_S = 30.0
# consumer_group_metadata() is a round trip to librdkafka's own thread (≈ 40 µs, more than the
# rest of the batch's bookkeeping): taken again after a rebalance and at most once a second.
METADATA_REFRESH_S = 1.0

M = TypeVar("M")  # a hosted model
WriteErrors = Callable[[M, str], None]  # the model, the reason: an error Score for each request of the batch
OnTurn = Callable[[float, int], None]  # a model's turn began (its index among the models), 0.0: none runs


RESCUE_POLL_S = 0.05  # how often a worker waiting on the rescue process looks at its flag


def _no_board(_started: float, _model: int) -> None:
    return None


def _no_rescue() -> bool:
    return False


class Watched(Generic[M]):
    """One batch being scored: the models that have not claimed it for their Scores yet."""

    def __init__(
        self, models: Sequence[M], sources: Sequence[Message], write_errors: WriteErrors[M],
        on_turn: OnTurn = _no_board, rescue_took: Callable[[], bool] = _no_rescue,
    ):
        self.models = len(models)
        self.pending = list(models)
        self.sources = sources
        self.write_errors = write_errors
        # When the model whose turn it is began it; None while a model's Scores are written (a
        # produce may wait for the broker: that is no model's time).
        self.turn_started: float | None = time.monotonic()
        self.abandoned = False
        self._on_turn = on_turn
        self._rescue_took = rescue_took
        self._lock = threading.Lock()

    def claim(self, model: M) -> bool:
        """Whether `model` may write its Scores for this batch (False once the watchdog wrote
        them, or while the rescue process holds the batch); its turn ends. The next model's
        starts with `next_turn`, once they are written."""
        with self._lock:
            if self.abandoned:
                return False
            self.turn_started = None
            # The turn's end is published before the rescue's flag is read, and the rescue sets
            # its flag before it reads the turn again (rescue.py): at least one of the two sees
            # the other, so a model's Scores for a request are never written by both.
            self._on_turn(0.0, 0)
            if self._rescue_took():
                return False
            self.pending.remove(model)
            return True

    def next_turn(self) -> None:
        started = self.turn_started = time.monotonic()
        self._on_turn(started, self.models - len(self.pending))

    def abandon(self, started: float | None = None) -> list[M] | None:
        """The models whose Scores the watchdog writes instead (the stuck one first). None if the
        turn it found overdue (begun at `started`) has ended since: its model answered just in
        time, and the next model's turn has barely begun (it would be blamed and the worker exit)."""
        with self._lock:
            if started is not None and self.turn_started != started:
                return None
            self.abandoned = True
            pending, self.pending = self.pending, []
            return pending

    def end_offsets(self) -> list[TopicPartition]:
        """One past the batch's last record, per partition."""
        ends: dict[tuple[str, int], int] = {}
        for msg in self.sources:
            key = (msg.topic() or "", msg.partition() or 0)
            ends[key] = max(ends.get(key, 0), (msg.offset() or 0) + 1)
        return [TopicPartition(topic, partition, offset) for (topic, partition), offset in ends.items()]


def _exit_process() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_MODEL_HUNG)


class ScoringWatchdog(Generic[M]):
    """Watches the batch being scored from a thread of its own (`start`, `stop`)."""

    def __init__(
        self, timeout_s: float, name: Callable[[M], str], producer: Producer, consumer: Consumer,
        exit_process: Callable[[], None] = _exit_process, board: Board | None = None,
        rescue_alive: Callable[[], bool] = lambda: True,
        outputs_lost: Callable[[float], bool] = lambda _timeout: False,
    ):
        self.timeout_s = timeout_s
        # Whether the service's own commits found outputs lost (`CommitLane.failed_unsettled`).
        self._outputs_lost = outputs_lost
        self._name = name
        self._producer, self._consumer, self._exit = producer, consumer, exit_process
        self._board, self._rescue_alive = board, rescue_alive
        self._metadata, self._metadata_at = b"", -math.inf
        self._batch: Watched[M] | None = None
        self._stopped = threading.Event()
        self._gave_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rdv-watchdog", daemon=True)

    def start(self) -> None:
        if self.timeout_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def watch(self, models: Sequence[M], sources: Sequence[Message], write_errors: WriteErrors[M]) -> Watched[M]:
        """The batch now being scored (on the poll loop, before the first model's turn)."""
        board = self._board
        if board is None:
            batch = self._batch = Watched(models, sources, write_errors)
            return batch
        batch = Watched(models, sources, write_errors, board.turn, board.rescuing)
        assert batch.turn_started is not None
        board.batch(sources, self._group_metadata(batch.turn_started), batch.turn_started)
        self._batch = batch
        return batch

    def rebalanced(self) -> None:
        """The group's generation (and maybe this member's id) changed: for the rescue process."""
        self._metadata_at = -math.inf

    def _group_metadata(self, now: float) -> bytes:
        if now - self._metadata_at >= METADATA_REFRESH_S:
            metadata: bytes = self._consumer.native.consumer_group_metadata()
            self._metadata, self._metadata_at = metadata, now
        return self._metadata

    def done(self) -> None:
        self._batch = None
        if self._board is not None:
            self._board.turn(0.0)

    def hold(self, batch: Watched[M]) -> bool:
        """For the poll loop when a model may not write its Scores (`claim` said no): True once it
        may claim them again (the rescue process took the batch, then stood down, as the model
        had returned); else it waits for the process to end. Going on, it would commit later
        offsets that the watchdog's or the rescue's commit, landing after them, would move back,
        and write Scores the rescue writes too."""
        if not batch.abandoned and self._board is not None and self._rescue_stood_down(self._board):
            return True
        self._gave_up.wait()
        self._stopped.wait()
        return False

    def _rescue_stood_down(self, board: Board) -> bool:
        """Wait while the rescue process holds the batch: it kills this process, or it releases the
        batch (True). Should it end holding it, whether it committed is unknown: the process exits
        for a fresh one to read on from the group's offsets."""
        while board.rescuing() and not self._gave_up.is_set():
            if not self._rescue_alive():
                log.error("the rescue process ended while it held the batch: the worker exits (%d) for a fresh "
                          "one to read on", EXIT_MODEL_HUNG)
                self._gave_up.set()
                self._exit()
                return False
            time.sleep(RESCUE_POLL_S)
        return not self._gave_up.is_set()

    def _run(self) -> None:
        every = min(1.0, self.timeout_s / 4)
        passed: Watched[M] | None = None  # a batch the watchdog stood down on: it watches the next one
        while not self._stopped.wait(every):
            batch = self._batch
            started = None if batch is None or batch is passed else self._overdue(batch)
            if batch is not None and started is not None:
                gave_up = self._give_up(batch, started)
                if gave_up is None:
                    continue  # the turn ended just in time: the batch is watched on
                if gave_up:
                    return
                passed = batch

    def _overdue(self, batch: Watched[M]) -> float | None:
        """When the overdue turn began (its identity for `abandon`), or None."""
        started = batch.turn_started
        overdue = started is not None and bool(batch.pending) and time.monotonic() - started >= self.timeout_s
        return started if overdue else None

    def _give_up(self, batch: Watched[M], started: float | None = None) -> bool | None:
        """Write the batch's error Scores, commit it and exit; False if someone else did or will
        (every model wrote its Scores just now, or the rescue process took the batch: if the model
        returns, the rescue stands down and the worker goes on, so the next batch is watched);
        None if the overdue turn ended before it acted."""
        if self._board is not None and self._board.rescuing():
            log.error("the rescue process took the batch (the model held the interpreter lock): it kills the worker")
            return False
        pending = batch.abandon(started)
        if pending is None:
            return None
        if not pending:
            return False
        if self._board is not None:
            self._board.watchdog_took()
        self._gave_up.set()
        stuck = self._name(pending[0])
        log.error(
            "model %s has not scored a batch of %d requests in %.0f s (stuck in predict): each gets an error "
            "Score, the batch's offsets are committed and the worker exits (%d) for a fresh one to read on",
            stuck, len(batch.sources), self.timeout_s, EXIT_MODEL_HUNG,
        )
        try:  # the poll loop waits for this exit (`hold`): whatever fails below, the process exits
            for model, reason in zip(pending, hung_reasons(stuck, self.timeout_s, len(pending)), strict=True):
                batch.write_errors(model, reason)
            self._producer.flush(FLUSH_TIMEOUT_S)
            # The service's commit thread may have flushed too, and taken a failure of an earlier
            # batch's Scores with it (the loop, stuck here, never settled it): the batch's end
            # offsets would commit past those requests, their Scores lost for good.
            if self._outputs_lost(FLUSH_TIMEOUT_S):
                log.error("Scores of earlier batches were not delivered (or their commit still runs): nothing is "
                          "committed, the next process reads from the group's committed offsets again")
            else:
                self._consumer.commit(batch.end_offsets())
        except RendezvousError as err:  # the next process scores the batch again, and hangs again
            log.error("the batch's error Scores or offsets could not be written (%s): the next process reads it "
                      "again", err)
        except Exception:
            log.exception("writing the batch's error Scores failed: the next process reads it again")
        finally:
            self._exit()
        return True

