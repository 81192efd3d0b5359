"""The rescue process: the watchdog's work, from outside a worker whose model holds the GIL.

A model stuck in C code that never releases the interpreter lock (catastrophic backtracking in
`re`, a `ctypes.PyDLL` call) stops every Python thread of its worker, the watchdog's too
(watchdog.py): the process hangs for good, and a restart re-reads the batch and hangs again.

With --predict-timeout-s > 0 the worker starts this process (`Rescue.start`). It reads the batch
being scored from shared memory (rescue_board.py) every CHECK_EVERY_S and acts once a model's
turn has run past the timeout and a grace with the same batch, while the in-process watchdog has
not taken it (it would have by then, were the interpreter lock free):

  1. reads the batch's records from the requests topic (a groupless consumer of its own), from
     the offsets the worker's group committed last (`unsettled_ranges`: the Scores of records
     after those may still be in the stuck worker's queue, which the kill drops),
  2. in one transaction (transactional id: the worker's group + ".rescue." + the stuck instance): an error Score for
     each of those requests from each model, and the batch's end offsets, committed for the
     worker's group as the stuck member (its group metadata: KIP-447 checks the member id and
     generation; the stuck worker is still a member, as librdkafka's own threads go on heartbeating).
     A Score of the worker's that did reach the log stands: the rendezvous keeps a model's first
     Score for a request, and takes an error Score after it for the late repeat it is,
  3. kills the worker (SIGKILL), whether that worked or not: a process that cannot run Python
     is no use, and its supervisor starts a fresh one, which reads on after the batch.

It exits by itself when the worker is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import IO, Any

from confluent_kafka import KafkaException, Message, TopicPartition
from confluent_kafka import Producer as NativeProducer

from services.core.codec import codec
from services.core.compiled_requests import decode_request, warm_up_features
from services.core.errors import BadInput, RendezvousError
from services.core.kafka import LIBRDKAFKA_TRANSACTION_TIMEOUT_MS, committed_offsets, new_client, within_transaction
from services.core.requests import check_request
from services.core.runtime import now_ms
from services.core.topic_range import PartitionSpan, read_spans
from services.model_worker.rescue_board import Board, Range, Reader, Snapshot, unlink
from services.model_worker.score_writer import ScoreWriter, hung_reasons, unscored

log = logging.getLogger("services.model_worker.rescue")

CHECK_EVERY_S = 0.5
KAFKA_TIMEOUT_S = 30.0  # each step of the rescue (read, init, offsets, commit)
GIVE_UP_AFTER_S = 150.0  # the whole rescue: librdkafka may never return (e.g. librdkafka #5456)


GRACE_MAX_S = 10.0
# Offsets before the stuck batch, past the group's commit, the rescue writes error Scores for at
# most: further behind (its commits failing for a while), it commits nothing and the next worker
# reads them again from the commit, which it commits as it goes. Unbounded, 60,000 offsets of two
# models filled librdkafka's queue: BufferError out of the rescue, and the stuck worker not killed
# (a review).
MAX_UNSETTLED = 20_000


def grace_s(timeout_s: float) -> float:
    """How much longer than the in-process watchdog the rescue waits before it takes a batch: the
    watchdog, when it can run, marks the batch taken at once. At most GRACE_MAX_S: half the timeout
    acted at 90 s for the default 60, after the chart's liveness probe (which a worker whose model
    holds the interpreter lock cannot answer) had restarted the pod, and the batch hung again; past
    a 200 s timeout, after max.poll.interval.ms, when its commit is refused (a review)."""
    return min(max(2.0, timeout_s / 2), GRACE_MAX_S)


def should_rescue(before: Snapshot, after: Snapshot, now: float, timeout_s: float) -> bool:
    """Whether the rescue takes the batch of `after` (read CHECK_EVERY_S after `before`): a model's
    turn has run past timeout + grace on the same batch, and the in-process watchdog did not take it."""
    if after.turn_started <= 0 or after.watchdog_took or after.seq == 0:
        return False
    if (before.seq, before.turn_started) != (after.seq, after.turn_started):
        return False  # the loop moved on between the two reads
    return now - after.turn_started > timeout_s + grace_s(timeout_s)


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    instance: str


@dataclass(frozen=True)
class RescueConfig:
    """What the worker hands the rescue process (on its stdin: the Kafka config may hold secrets)."""

    kafka: dict[str, Any]
    requests_topic: str
    scores_topic: str
    group_id: str
    models: list[Model]
    timeout_s: float
    max_batch: int
    board: str
    parent: int
    # The worker's wire format: where registry-framed requests' schemas are looked up, and the id
    # its Scores are framed with (None: single-object), so the rescue reads and writes as it does.
    schema_registry: str = ""
    score_registry_id: int | None = None
    log_level: str = "INFO"  # the worker's (`rendezvous --log-level`): the rescue logs as it does

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RescueConfig:
        fields = json.loads(text)
        return cls(**{**fields, "models": [Model(**m) for m in fields["models"]]})


class Rescue:
    """The worker's handle on its rescue process and their shared memory."""

    def __init__(self, board: Board, process: subprocess.Popen[bytes]):
        self.board, self.process = board, process

    @classmethod
    def start(cls, kafka: Mapping[str, Any], requests_topic: str, scores_topic: str, group_id: str,
              models: Sequence[Model], timeout_s: float, max_batch: int, schema_registry: str = "") -> Rescue:
        board = Board()
        config = RescueConfig(dict(kafka), requests_topic, scores_topic, group_id, list(models), timeout_s,
                              max_batch, board.path, os.getpid(), schema_registry, codec("score").registry_id,
                              worker_log_level())
        try:
            # -P: the worker's directory is no import path of its (spawn.py).
            process = subprocess.Popen([sys.executable, "-P", "-m", "services.model_worker.rescue"],
                                       stdin=subprocess.PIPE)
        except OSError:
            board.close()  # its file in /dev/shm with it
            raise
        stdin: IO[bytes] | None = process.stdin
        assert stdin is not None
        try:
            stdin.write(config.to_json().encode())
            stdin.close()
        except BaseException:  # it died before reading its config (a broken pipe): nothing is left behind
            rescue = cls(board, process)
            rescue.stop()
            raise
        return cls(board, process)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.board.close()


# The rescue process.


def watch(config: RescueConfig, board: Reader, parent_alive: Callable[[], bool]) -> Snapshot | None:
    """Wait until a batch needs the rescue (its snapshot) or the worker is gone (None)."""
    before = board.read()
    while parent_alive():
        time.sleep(CHECK_EVERY_S)
        after = board.read()
        if should_rescue(before, after, time.monotonic(), config.timeout_s):
            return after
        before = after
    return None


def unsettled_ranges(config: RescueConfig, ranges: Sequence[Range]) -> list[Range]:
    """The batch's ranges, each reaching back to the offset the worker's group committed last.
    The worker commits at least once, after a flush (commits.py): every Score before that offset
    was acknowledged, but those after it may still wait in the stuck worker's queue, and the kill
    drops them. That is the batch's Scores of the models whose turn came before the stuck one's,
    and those of the batches before it not yet flushed (one commit every 100 ms; a partition
    leader away holds them for up to the delivery timeout): the offsets the rescue commits pass
    them all, so each gets an error Score, or they had no Score of those models for good (a review)."""
    asked = [TopicPartition(config.requests_topic, p) for p, _, _ in ranges]
    found = committed_offsets(config.kafka, config.group_id, asked, stable=False, timeout_s=KAFKA_TIMEOUT_S)
    committed = {tp.partition: tp.offset for tp in found if tp.error is None and tp.offset >= 0}
    unsettled = [(p, min(first, committed.get(p, first)), end) for p, first, end in ranges]
    if (behind := _behind(unsettled, ranges)) > MAX_UNSETTLED:
        raise RuntimeError(f"{behind:,} offsets before the batch are past the group's last commit (more than "
                           f"{MAX_UNSETTLED:,}): left to the next worker, which reads them again from the commit")
    return unsettled


def _behind(unsettled: Sequence[Range], batch: Sequence[Range]) -> int:
    """The offsets before the batch that `unsettled_ranges` reached back to."""
    return sum(first - start for (_, start, _), (_, first, _) in zip(unsettled, batch, strict=True))


def read_batch(config: RescueConfig, ranges: Sequence[Range]) -> list[Message]:
    """The records of `ranges`, each partition's from its first offset to one before its end."""
    spans = [PartitionSpan(p, first, end) for p, first, end in ranges]
    return list(read_spans(config.kafka, config.requests_topic, spans, timeout_s=KAFKA_TIMEOUT_S))


def requests_of(records: Sequence[Message]) -> list[tuple[Message, dict[str, Any]]]:
    """The records the worker scored: those it could decode as requests."""
    requests = codec("request")
    found = []
    for msg in records:
        try:
            request = decode_request(requests, msg.value())  # as the worker read it
            check_request(request)
        except BadInput:
            continue
        found.append((msg, request))
    return found


def error_scores(config: RescueConfig, snap: Snapshot, requests: Sequence[tuple[Message, dict[str, Any]]],
                 now: int) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of the error Scores of `requests`: on the batch's, one for each model
    whose turn had not ended, the stuck one first, as the watchdog writes them; on every request
    read, one for each model whose Scores the worker wrote but may not have delivered
    (`unsettled_ranges`): before the stuck one on the batch's, every model on those before it."""
    stuck = config.models[snap.model].name
    elapsed = max(0.0, (time.monotonic() - snap.turn_started) * 1000.0)
    firsts = {p: first for p, first, _ in snap.ranges}

    def before_batch(msg: Message) -> bool:
        return (msg.offset() or 0) < firsts.get(msg.partition() or 0, 0)

    earlier = [(msg, request) for msg, request in requests if before_batch(msg)]
    batch = [(msg, request) for msg, request in requests if not before_batch(msg)]
    pending, written = config.models[snap.model:], config.models[: snap.model]
    undelivered = unscored(f"not known delivered: the worker was killed while model {stuck} hung", 0.0)
    turns = [(model, [unscored(reason, elapsed)] * len(batch), batch)
             for model, reason in zip(pending, hung_reasons(stuck, config.timeout_s, len(pending), holding_gil=True),
                                      strict=True)]
    turns += [(model, [undelivered] * len(batch), batch) for model in written]
    turns += [(model, [undelivered] * len(earlier), earlier) for model in config.models]
    out = []
    for model, results, rows in turns:
        if not rows:
            continue
        writer = ScoreWriter(model.name, model.version, model.instance)
        values, _ = writer.encode_batch([request for _, request in rows], results, now, now)
        out += [(msg.partition() or 0, request["request_id"].encode(), value)
                for (msg, request), value in zip(rows, values, strict=True)]
    return out


def commit(config: RescueConfig, snap: Snapshot, scores: Sequence[tuple[int, bytes, bytes]]) -> None:
    """The Scores and the batch's end offsets, for the worker's group as its stuck member, in one
    transaction."""
    if not snap.meta:
        raise RuntimeError("the worker's group metadata was not in the shared memory")
    producer: NativeProducer = new_client(NativeProducer, {
        **within_transaction(config.kafka, LIBRDKAFKA_TRANSACTION_TIMEOUT_MS),
        # The stuck instance's own: replicas of one model rescued at once fenced each other's
        # transaction under one id, and the fenced one's batch hung again (a review).
        "transactional.id": f"{config.group_id}.rescue.{config.models[snap.model].instance}",
        "enable.idempotence": True, "acks": "all",
    })
    failed: list[str] = []

    def delivered(err: Any, _msg: Message) -> None:
        if err is not None:
            failed.append(str(err))

    producer.init_transactions(KAFKA_TIMEOUT_S)
    producer.begin_transaction()
    give_up_at = time.monotonic() + KAFKA_TIMEOUT_S
    for partition, key, value in scores:
        while True:
            try:
                producer.produce(config.scores_topic, value, key=key, partition=partition, on_delivery=delivered)
                break
            except BufferError:  # librdkafka's queue full: room comes as the broker acknowledges
                if time.monotonic() > give_up_at:
                    raise RuntimeError("the Scores did not fit librdkafka's queue in time") from None
                producer.poll(0.1)
    if producer.flush(KAFKA_TIMEOUT_S) or failed:
        producer.abort_transaction(KAFKA_TIMEOUT_S)
        raise RuntimeError(f"the Scores were not written: {failed[:1] or 'flush timed out'}")
    offsets = [TopicPartition(config.requests_topic, p, end) for p, _, end in snap.ranges]
    producer.send_offsets_to_transaction(offsets, snap.meta, KAFKA_TIMEOUT_S)
    producer.commit_transaction(KAFKA_TIMEOUT_S)


def rescue(config: RescueConfig, snap: Snapshot, board: Reader) -> bool | None:
    """Write the batch's error Scores and commit past it; whether that worked (None: the worker
    went on, or its watchdog took the batch after all, so the rescue stands down)."""
    stuck = config.models[snap.model].name
    span = ", ".join(f"{p}:{first}-{end - 1}" for p, first, end in snap.ranges)
    try:
        ranges = unsettled_ranges(config, snap.ranges)
        requests = requests_of(read_batch(config, ranges))
        scores = error_scores(config, snap, requests, now_ms())
        if moved_on(snap, board.read()):
            log.warning("model %s returned (or the watchdog acted) while the rescue read the batch: it stands down",
                        stuck)
            return None
        commit(config, snap, scores)
    except (KafkaException, RendezvousError, RuntimeError, ValueError) as exc:
        if moved_on(snap, board.read()):  # nothing committed, and the worker went on: it is not killed
            log.warning("the rescue of model %s failed (%s), but the model returned meanwhile: it stands down",
                        stuck, exc)
            return None
        log.error("rescue of the worker stuck in model %s failed, the batch (%s %s) is read again by the next "
                  "worker: %s; killing the worker (pid %d)", stuck, config.requests_topic, span, exc, config.parent)
        return False
    left = " (more partitions than the shared memory holds: the others are read again)" if snap.overflow else ""
    before = _behind(ranges, snap.ranges)
    log.error("model %s held the interpreter lock for over %.0f s (the worker's own watchdog could not run): "
              "%d requests (the batch, %s %s, and %d offsets before it not committed yet) got error Scores from "
              "%d model(s), their offsets are committed%s; killing the worker (pid %d) for a fresh one to read on",
              stuck, config.timeout_s + grace_s(config.timeout_s), len(requests), config.requests_topic, span, before,
              len(config.models), left, config.parent)
    return True


def moved_on(snap: Snapshot, again: Snapshot) -> bool:
    """Whether the worker went on since `snap` (read before the rescue took the batch): a model's
    turn ended (its Scores written, or being written), another began, a new batch, or the
    watchdog took it. The flag was set before `again` was read, and the worker ends a turn before
    it reads the flag (watchdog.py): a turn that ends after this read is refused its Scores."""
    turn = (snap.seq, snap.turn_started, snap.model)
    return (again.seq, again.turn_started, again.model) != turn or again.watchdog_took


class Parent:
    """The worker, as the rescue may kill it: through a pidfd opened while the worker was surely
    its parent, so the signal never reaches a process that got the pid after the worker died (its
    supervisor may kill it while a rescue waits on Kafka); without pidfds, only while the worker
    is still its parent."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = None
        if os.getppid() == pid:
            with contextlib.suppress(AttributeError, OSError):  # not Linux 5.3+: the check in `kill`
                self._fd = os.pidfd_open(pid)

    def alive(self) -> bool:
        return os.getppid() == self.pid

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self._fd is not None:
                signal.pidfd_send_signal(self._fd, signal.SIGKILL)
            elif self.alive():
                os.kill(self.pid, signal.SIGKILL)


def kill(parent: Parent) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    parent.kill()


def _give_up(config: RescueConfig, parent: Parent) -> None:
    """Whatever librdkafka does (a call that never returns), the worker is killed in the end."""
    log.error("rescue still running after %.0f s: killing the worker (pid %d)", GIVE_UP_AFTER_S, config.parent)
    kill(parent)
    unlink(config.board)
    os._exit(1)


def configure_wire(config: RescueConfig) -> None:
    """Read and write as the worker does: without it, registry-framed requests were skipped (no
    error Score, while their offsets were committed) and Scores went out single-object."""
    if config.schema_registry:
        from services.core.registry import SchemaRegistry
        from services.core.wire import read_ids

        read_ids(SchemaRegistry(config.schema_registry), [codec("request")])
    if config.score_registry_id is not None:
        codec("score").write_registry_id(config.score_registry_id)


def run(config: RescueConfig) -> int:
    configure_wire(config)
    warm_up_features()  # the request walk `requests_of` checks with: loaded now, not when a batch is stuck
    parent = Parent(config.parent)
    board = Reader(config.board)
    try:
        while True:
            snap = watch(config, board, parent.alive)
            if snap is None:
                return 0
            board.take()
            if moved_on(snap, board.read()):
                # The worker went on between the look and the take: its next batch must not wait
                # for this one to be read from Kafka.
                board.release()
                continue
            deadline = threading.Timer(GIVE_UP_AFTER_S, _give_up, (config, parent))
            deadline.daemon = True
            deadline.start()
            try:
                ok = rescue(config, snap, board)
            except Exception:  # whatever failed, a worker that cannot run Python is killed (if still stuck)
                went_on = moved_on(snap, board.read())
                log.exception("the rescue of model %s failed unexpectedly; %s", config.models[snap.model].name,
                              "the model returned meanwhile: it stands down" if went_on else
                              f"killing the worker (pid {config.parent})")
                ok = None if went_on else False
            deadline.cancel()  # it bounds the rescue's Kafka calls, which are over
            if ok is not None:
                break
            # Stood down: the worker goes on, and so does the watch (with the flag left set, the
            # in-process watchdog would stand down for good, and with no rescue left either).
            board.release()
        kill(parent)
        unlink(config.board)  # the worker cannot any more
        return 0 if ok else 1
    finally:
        board.close()
        if os.getppid() != config.parent:
            unlink(config.board)


def worker_log_level() -> str:
    """The level the worker logs at (its root logger's), for its rescue process to log at too."""
    return logging.getLevelName(logging.getLogger().getEffectiveLevel())


def main() -> None:
    from services.cli.common import setup_logging
    from services.core.kafka_config import remember_secrets

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # A Ctrl-C at the worker's terminal reaches its whole group: the worker stops its rescue
    # itself (a KeyboardInterrupt here left a traceback and the board in /dev/shm; a review).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = RescueConfig.from_json(sys.stdin.read())
    # Handed parsed on stdin, its Kafka settings were never registered as secrets here: a line of
    # this process could show a password every other process masks (a review).
    remember_secrets(config.kafka)
    setup_logging(config.log_level)
    sys.exit(run(config))


if __name__ == "__main__":
    main()
