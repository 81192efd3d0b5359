"""The rescue process's shared memory and when it acts (the rescue itself: tests/faults/test_hung_model.py)."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message

from services.core.codec import codec
from services.model_worker.rescue import (
    Model,
    Parent,
    RescueConfig,
    error_scores,
    grace_s,
    moved_on,
    should_rescue,
    worker_log_level,
)
from services.model_worker.rescue_board import MAX_META, MAX_RANGES, Board, Reader, Snapshot, batch_ranges, read
from services.model_worker.score_writer import hung_reasons
from services.model_worker.watchdog import ScoringWatchdog

ROOT = Path(__file__).resolve().parents[2]
META = b"CGMDv2:\x00\x00\x00\x07rdv.model.a+b\x00\x00\x01"


@pytest.fixture
def board() -> Iterator[Board]:
    b = Board()
    yield b
    b.close()


def messages(spans: list[tuple[int, range]]) -> list[Message]:
    return [Message(topic="rq", partition=p, offset=o, value=b"") for p, offsets in spans for o in offsets]


@pytest.mark.parametrize("size", [3, 100])  # the loop and the numpy path
def test_a_batchs_ranges_per_partition(size: int) -> None:
    msgs = messages([(2, range(10, 10 + size)), (0, range(5, 5 + size)), (2, range(500, 502))])
    assert sorted(batch_ranges(msgs)) == [(0, 5, 5 + size), (2, 10, 502)]


def test_the_layout_round_trip(board: Board) -> None:
    board.batch(messages([(1, range(40, 43)), (3, range(7, 8))]), META, 123.5)
    snap = Reader(board.path).read()
    assert snap == Snapshot(seq=1, turn_started=123.5, model=0, watchdog_took=False, overflow=False,
                            ranges=((1, 40, 43), (3, 7, 8)), meta=META, rescuing=False)
    board.turn(0.0)
    board.turn(130.25, 1)
    board.watchdog_took()
    snap = read(board._buf)
    assert (snap.turn_started, snap.model, snap.watchdog_took) == (130.25, 1, True)
    board.batch(messages([(0, range(1))]), META, 140.0)  # a new batch clears the flags
    snap = read(board._buf)
    assert (snap.seq, snap.watchdog_took, snap.ranges) == (2, False, ((0, 0, 1),))


def test_the_rescue_flag_is_seen_by_the_worker(board: Board) -> None:
    reader = Reader(board.path)
    assert not board.rescuing()
    reader.take()
    assert board.rescuing()
    reader.close()


def test_more_partitions_than_fit_are_marked(board: Board) -> None:
    board.batch(messages([(p, range(p, p + 1)) for p in range(MAX_RANGES + 3)]), META, 1.0)
    snap = read(board._buf)
    assert snap.overflow and len(snap.ranges) == MAX_RANGES and snap.ranges[0] == (0, 0, 1)


def test_group_metadata_too_large_is_left_out_not_cut(board: Board) -> None:
    board.batch(messages([(0, range(1))]), META, 1.0)
    board.batch(messages([(0, range(1))]), b"x" * (MAX_META + 1), 1.0)
    assert read(board._buf).meta == b""


def snapshot(seq: int = 4, started: float = 100.0, took: bool = False) -> Snapshot:
    return Snapshot(seq, started, 0, took, False, ((0, 1, 2),), META, False)


TIMEOUT = 2.0
PAST = 100.0 + TIMEOUT + grace_s(TIMEOUT) + 0.1


def test_the_rescue_acts_only_past_the_timeout_and_its_grace() -> None:
    # At most 10 s: half a 60 s timeout acted after the chart's liveness probe had restarted the pod.
    assert grace_s(2.0) == 2.0 and grace_s(16.0) == 8.0 and grace_s(60.0) == 10.0 and grace_s(240.0) == 10.0
    snap = snapshot()
    assert should_rescue(snap, snap, PAST, TIMEOUT)
    assert not should_rescue(snap, snap, PAST - 0.2, TIMEOUT)  # the in-process watchdog's time, and its grace


def test_the_rescue_stands_down_when_the_watchdog_took_the_batch() -> None:
    assert not should_rescue(snapshot(), snapshot(took=True), PAST, TIMEOUT)


def test_the_rescue_does_nothing_when_no_turn_runs() -> None:
    assert not should_rescue(snapshot(started=0.0), snapshot(started=0.0), PAST, TIMEOUT)


def test_the_rescue_does_nothing_when_the_loop_moved_on() -> None:
    assert not should_rescue(snapshot(seq=4), snapshot(seq=5), PAST, TIMEOUT)
    assert not should_rescue(snapshot(started=99.0), snapshot(started=100.0), PAST, TIMEOUT)  # the next turn


class FakeConsumer:
    def __init__(self) -> None:
        self.native = self
        self.asked = 0

    def consumer_group_metadata(self) -> bytes:
        self.asked += 1
        return META


def test_the_watchdog_writes_each_turn_as_watched_sees_it(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from services.model_worker import watchdog as watchdog_module

    # The watchdog's clock, which the test moves: on the real one, a test thread held up for the
    # metadata's second (METADATA_REFRESH_S) between the first and second batch saw it asked again.
    clock = [1_000.0]
    monkeypatch.setattr(watchdog_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    consumer = FakeConsumer()
    watchdog: ScoringWatchdog[str] = ScoringWatchdog(2.0, str, None, consumer, board=board)  # type: ignore[arg-type]
    watched = watchdog.watch(["a", "b"], messages([(0, range(3))]), lambda _m, _r: None)
    snap = read(board._buf)
    assert (snap.seq, snap.turn_started, snap.model, snap.meta) == (1, watched.turn_started, 0, META)
    assert watched.claim("a") and read(board._buf).turn_started == 0.0  # a's Scores written: nobody's turn
    watched.next_turn()
    snap = read(board._buf)
    assert (snap.turn_started, snap.model) == (watched.turn_started, 1)
    watchdog.done()
    assert read(board._buf).turn_started == 0.0
    clock[0] += 0.5
    watchdog.watch(["a", "b"], messages([(0, range(3, 4))]), lambda _m, _r: None)
    assert consumer.asked == 1  # not again within the second, unless the group rebalanced
    watchdog.rebalanced()
    watchdog.watch(["a", "b"], messages([(0, range(4, 5))]), lambda _m, _r: None)
    assert consumer.asked == 2


def test_the_watchdog_stands_down_when_the_rescue_took_the_batch(board: Board) -> None:
    exits: list[bool] = []
    watchdog: ScoringWatchdog[str] = ScoringWatchdog(2.0, str, None, FakeConsumer(), lambda: exits.append(True),  # type: ignore[arg-type]
                                                     board=board)
    watched = watchdog.watch(["a"], messages([(0, range(3))]), lambda _m, _r: None)
    Reader(board.path).take()
    watchdog._give_up(watched)
    assert watched.pending == ["a"] and not exits and not read(board._buf).watchdog_took


def test_the_error_scores_mirror_the_watchdogs() -> None:
    config = RescueConfig({}, "rq", "sc", "rdv.model.a+b", [Model("a", "1", "h-1"), Model("b", "2", "h-1")],
                          2.0, 256, "/dev/shm/x", 1)
    assert RescueConfig.from_json(config.to_json()) == config
    request: dict[str, Any] = {"request_id": "r-1", "deadline": 99}
    msg = Message(topic="rq", partition=3, offset=5, value=b"")
    stuck_b = dataclasses.replace(snapshot(started=time.monotonic() - 5), model=1)
    scores = error_scores(config, stuck_b, [(msg, request)], now=1000)
    assert [(p, key) for p, key, _ in scores] == [(3, b"r-1")] * 2  # b's, then a's (written, not known delivered)
    decoded = codec("score").decode(scores[0][2])
    assert decoded["model"] == "b" and decoded["instance"] == "h-1" and decoded["deadline"] == 99
    assert decoded["error"] == "model b did not answer within 2 s (stuck holding the interpreter lock)"
    assert decoded["compute_ms"] >= 5000
    assert [decoded[f] for f in ("score", "label", "received_at", "scored_at")] == [None, None, 1000, 1000]
    both = [codec("score").decode(v)["error"] for _, _, v in error_scores(config, snapshot(), [(msg, request)], 1)]
    assert both[1] == "not scored: co-hosted model a hung on this batch"
    undelivered = "not known delivered: the worker was killed while model b hung"
    assert codec("score").decode(scores[1][2])["error"] == undelivered


def test_the_rescue_gives_error_scores_for_what_the_stuck_worker_may_not_have_delivered() -> None:
    """The worker commits after a flush: a Score of a model whose turn came before the stuck
    one's, or of a batch before it not yet committed, may still have been in its queue when it
    was killed, and the rescue committed past it, that request without the model's Score for good
    (a review: only the stuck model and those after it got error Scores, of the batch alone)."""
    config = RescueConfig({}, "rq", "sc", "g", [Model("a", "1", "h-1"), Model("b", "2", "h-1")], 2.0, 256, "", 1)
    stuck_b = dataclasses.replace(snapshot(), model=1, ranges=((3, 5, 6),))
    requests = [(Message(topic="rq", partition=3, offset=o, value=b""), {"request_id": f"r-{o}", "deadline": 9})
                for o in (2, 5)]  # r-2: a batch before, not committed yet; r-5: the stuck batch
    scores = error_scores(config, stuck_b, requests, 1)
    errors = [(key.decode(), codec("score").decode(value)) for _, key, value in scores]
    assert sorted((rid, s["model"]) for rid, s in errors) == [("r-2", "a"), ("r-2", "b"), ("r-5", "a"), ("r-5", "b")]
    reasons = {(rid, s["model"]): s["error"] for rid, s in errors}
    assert reasons[("r-5", "b")] == "model b did not answer within 2 s (stuck holding the interpreter lock)"
    undelivered = "not known delivered: the worker was killed while model b hung"
    assert reasons[("r-5", "a")] == reasons[("r-2", "a")] == reasons[("r-2", "b")] == undelivered


def test_the_rescue_reads_back_to_what_the_workers_group_committed(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from confluent_kafka import KafkaError, TopicPartition

    from services.model_worker import rescue as module

    asked: list[tuple[str, list[tuple[str, int]]]] = []

    def committed(_config: object, group: str, partitions: list[TopicPartition], **_kw: object) -> list[Any]:
        asked.append((group, [(tp.topic, tp.partition) for tp in partitions]))
        failed = SimpleNamespace(topic="rq", partition=2, offset=1, error=KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        return [TopicPartition("rq", 0, 10), TopicPartition("rq", 1, -1001), failed]

    monkeypatch.setattr(module, "committed_offsets", committed)
    config = RescueConfig({}, "rq", "sc", "g", [Model("a", "1", "h")], 2.0, 256, "", 1)
    ranges = [(0, 14, 20), (1, 7, 9), (2, 3, 4)]
    # p0 reaches back to its commit; p1 has none and p2's was not read: each from the batch
    assert module.unsettled_ranges(config, ranges) == [(0, 10, 20), (1, 7, 9), (2, 3, 4)]
    assert asked == [("g", [("rq", 0), ("rq", 1), ("rq", 2)])]


def test_the_watchdog_and_the_rescue_give_the_same_reasons_but_one_note() -> None:
    assert hung_reasons("b", 2.5, 3) == ["model b did not answer within 2.5 s",
                                         "not scored: co-hosted model b hung on this batch",
                                         "not scored: co-hosted model b hung on this batch"]
    rescued = hung_reasons("b", 2.5, 1, holding_gil=True)
    assert rescued == ["model b did not answer within 2.5 s (stuck holding the interpreter lock)"]


def test_a_rescue_that_stood_down_releases_the_batch_and_watches_on(
    board: Board, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It left its flag set and ended: the in-process watchdog stood down for good after it, and
    no rescue was left either."""
    from services.model_worker import rescue as module

    config = RescueConfig({}, "rq", "sc", "g", [Model("a", "1", "h")], 2.0, 256, board.path, 4242)
    outcomes, flags_seen, watching, killed = [None, True], [], [], []
    board.batch(messages([(0, range(1, 2))]), META, 100.0)  # a turn running: what the rescue takes

    def watch(_config: RescueConfig, _reader: Reader, _alive: object) -> Snapshot:
        watching.append(board.rescuing())
        return read(board._buf)

    monkeypatch.setattr(module, "watch", watch)
    monkeypatch.setattr(module, "kill", killed.append)

    def rescue(_config: RescueConfig, _snap: Snapshot, _board: Reader) -> bool | None:
        flags_seen.append(board.rescuing())
        return outcomes.pop(0)

    monkeypatch.setattr(module, "rescue", rescue)
    before = set(threading.enumerate())
    assert module.run(config) == 0
    # No give-up timer left running: armed for GIVE_UP_AFTER_S, it kills the parent and exits the
    # process it runs in (it ended a test run's worker 150 s after this test).
    timers = [t for t in threading.enumerate() if t not in before and isinstance(t, threading.Timer)]
    for timer in timers:
        timer.join(5)  # a cancelled one ends at once
    assert not [t for t in timers if t.is_alive()]
    assert watching == [False, False]  # released when it stood down
    # The second batch taken, then the worker killed:
    assert flags_seen == [True, True] and [p.pid for p in killed] == [4242]


def test_the_rescue_reads_registry_framed_requests_and_frames_its_scores_as_the_worker_does() -> None:
    """It never configured the wire format: a registry-framed request was skipped (no error Score,
    its offset committed all the same) and its Scores went out single-object. In a process of its
    own, as the rescue runs: the shared codecs of this one must keep their framing."""
    import json
    import subprocess
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    schema = json.dumps({"schema": json.dumps(codec("request").schema)}).encode()

    class Registry(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/schemas/ids/7"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(schema if found else b'{"error_code": 40403, "message": "Schema not found"}')

        def log_message(self, *_args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = f"""
import sys
from confluent_kafka import Message
from services.core.codec import codec
from services.model_worker.rescue import RescueConfig, configure_wire, requests_of
from tests.unit.test_codec import REQUEST
plain = codec("request").encode(REQUEST)[len(codec("request").header):]
config = RescueConfig({{}}, "rq", "sc", "g", [], 1.0, 10, "", 0, "http://127.0.0.1:{server.server_port}", 9)
configure_wire(config)
found = requests_of([Message(topic="rq", partition=0, offset=3, value=b"\\x00" + (7).to_bytes(4, "big") + plain)])
print(len(found), found[0][1]["request_id"] if found else None, codec("score").header.hex())
"""
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    from tests.unit.test_codec import REQUEST

    assert done.stdout.split() == ["1", REQUEST["request_id"], "0000000009"]


def test_a_model_that_returns_while_the_rescue_holds_the_batch_waits_for_it(board: Board) -> None:
    """The rescue only stood down when the batch's sequence number changed: a model returning
    while the rescue read the batch wrote its Scores, the rescue wrote error Scores for the same
    requests (two per request and model) and killed a worker that had recovered (a review)."""
    alive = [True]
    exits: list[bool] = []
    watchdog: ScoringWatchdog[str] = ScoringWatchdog(
        2.0, str, None, FakeConsumer(), lambda: exits.append(True), board=board,  # type: ignore[arg-type]
        rescue_alive=lambda: alive[0])
    watched = watchdog.watch(["a", "b"], messages([(0, range(3))]), lambda _m, _r: None)
    reader = Reader(board.path)
    taken = reader.read()
    reader.take()  # the rescue took the batch; the model returns
    assert not watched.claim("a") and watched.pending == ["a", "b"]
    # The turn's end is on the board before the worker waits: the rescue, reading it again, stands down.
    assert moved_on(taken, reader.read())
    released = threading.Timer(0.2, reader.release)
    released.start()
    assert watchdog.hold(watched)  # once released: a claims its Scores after all
    assert watched.claim("a") and not exits
    watched.next_turn()
    reader.take()
    assert not watched.claim("b")
    alive[0] = False  # the rescue ended holding the batch: whether it committed is unknown
    watchdog.stop()  # hold() waits for the process to end: its stand-in exit returns, so stopped
    assert not watchdog.hold(watched) and exits == [True]
    reader.close()


def test_the_rescue_sees_any_turn_that_ended_since_it_looked() -> None:
    taken = snapshot()
    assert not moved_on(taken, dataclasses.replace(taken, rescuing=True))
    assert moved_on(taken, dataclasses.replace(taken, turn_started=0.0))  # the model's Scores being written
    assert moved_on(taken, dataclasses.replace(taken, turn_started=101.0, model=1))  # the next co-hosted model
    assert moved_on(taken, dataclasses.replace(taken, seq=5))
    assert moved_on(taken, dataclasses.replace(taken, watchdog_took=True))


def test_the_rescue_never_signals_a_process_that_is_not_its_worker() -> None:
    """It killed the pid it was given when it gave up or finished, even after the worker had died
    and the pid gone to another process (a review)."""
    other = subprocess.Popen(["sleep", "30"])
    try:
        stranger = Parent(other.pid)  # not this process's parent, as a reused pid would not be
        assert not stranger.alive()
        stranger.kill()
        with pytest.raises(subprocess.TimeoutExpired):
            other.wait(0.2)
    finally:
        other.kill()
        other.wait()


def test_the_rescue_kills_its_worker_through_a_handle_on_that_process() -> None:
    code = ("import os, sys; from services.model_worker.rescue import Parent; p = Parent(os.getppid()); "
            "print(p.alive(), flush=True); sys.stdin.read(); p.kill()")
    worker = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', {code!r}], "
         "stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True); print(c.stdout.readline().strip(), flush=True); "
         "c.stdin.close(); c.wait(); import time; time.sleep(30)"],
        stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "True"
        assert worker.wait(30) == -signal.SIGKILL
    finally:
        worker.kill()
        worker.wait()


def test_a_rescue_that_dies_before_reading_its_config_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The write to its stdin failed (a broken pipe: a config larger than the pipe holds, e.g. an
    inline CA certificate): the board's file stayed in /dev/shm and the child unwaited (a review)."""
    from services.model_worker import rescue as module

    boards: list[Board] = []

    class Recorded(Board):
        def __init__(self) -> None:
            super().__init__()
            boards.append(self)

    monkeypatch.setattr(module, "Board", Recorded)
    monkeypatch.setattr(module.sys, "executable", shutil.which("true"))  # exits without reading stdin
    with pytest.raises(BrokenPipeError):
        module.Rescue.start({"ssl.ca.pem": "x" * 1_000_000}, "rq", "sc", "g", [Model("a", "1", "h")], 2.0, 256)
    assert len(boards) == 1 and not os.path.exists(boards[0].path)


def test_a_rescue_that_fails_after_the_model_returned_stands_down(
    board: Board, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its read of the batch failed (a Kafka timeout) while the model returned: nothing was
    committed and the worker had gone on, yet it was killed (a review of the handshake)."""
    from services.model_worker import rescue as module

    config = RescueConfig({}, "rq", "sc", "g", [Model("a", "1", "h")], 2.0, 256, board.path, 4242)
    board.batch(messages([(0, range(3))]), META, 100.0)
    reader = Reader(board.path)
    taken = reader.read()

    def read_batch(_config: RescueConfig, _ranges: object) -> list[Message]:
        board.turn(0.0)  # the model returned meanwhile
        raise RuntimeError("reading rq timed out")

    monkeypatch.setattr(module, "unsettled_ranges", lambda _config, ranges: list(ranges))  # no broker here
    monkeypatch.setattr(module, "read_batch", read_batch)
    assert module.rescue(config, taken, reader) is None

    def failing(_config: RescueConfig, _ranges: object) -> list[Message]:
        raise RuntimeError("reading rq timed out")

    monkeypatch.setattr(module, "read_batch", failing)
    board.turn(101.0)  # its next turn, stuck for good: a failure now leaves the worker to be killed
    assert module.rescue(config, reader.read(), reader) is False
    reader.close()


def test_a_take_after_the_worker_went_on_is_given_back_at_once(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taken after the worker began its next batch, the flag held that healthy batch's models
    until the stale one had been read from Kafka."""
    from services.model_worker import rescue as module

    config = RescueConfig({}, "rq", "sc", "g", [Model("a", "1", "h")], 2.0, 256, board.path, 4242)
    board.batch(messages([(0, range(3))]), META, 100.0)
    looks = [Reader(board.path).read()]
    flags_after: list[bool] = []

    def watch(_config: RescueConfig, reader: Reader, _alive: object) -> Snapshot | None:
        if not looks:
            flags_after.append(board.rescuing())
            return None
        snap = looks.pop()
        board.batch(messages([(0, range(3, 6))]), META, 105.0)  # the worker goes on before the take
        return snap

    monkeypatch.setattr(module, "watch", watch)
    monkeypatch.setattr(module, "rescue", lambda *_a: pytest.fail("the stale batch was rescued"))
    assert module.run(config) == 0
    assert flags_after == [False]


def test_the_rescue_logs_at_the_workers_level() -> None:
    """`rendezvous --log-level` reaches the rescue process through its config (it read an
    environment variable nothing set, and logged at INFO whatever the worker was told)."""
    root = logging.getLogger()
    before = root.level
    try:
        root.setLevel(logging.DEBUG)
        assert worker_log_level() == "DEBUG"
        root.setLevel(logging.WARNING)
        config = RescueConfig({}, "rq", "sc", "g", [], 1.0, 10, "", 0, log_level=worker_log_level())
        assert RescueConfig.from_json(config.to_json()).log_level == "WARNING"
    finally:
        root.setLevel(before)


def test_each_instance_rescues_under_a_transactional_id_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """One id for every replica of a model: two rescued at once fenced each other's transaction,
    and the fenced one's batch was read again and hung again (a review)."""
    from services.model_worker import rescue

    ids: list[str] = []

    def made(_kind: Any, config: dict[str, Any]) -> Any:
        ids.append(config["transactional.id"])
        raise RuntimeError("no broker here")

    monkeypatch.setattr(rescue, "new_client", made)
    for instance in ("host-a-1", "host-b-1"):
        config = RescueConfig(kafka={}, requests_topic="rdv.requests", scores_topic="rdv.scores",
                              group_id="rdv.model.a", models=[Model("a", "1", instance)], timeout_s=1.0,
                              max_batch=10, board="", parent=0)
        with pytest.raises(RuntimeError, match="no broker here"):
            rescue.commit(config, snapshot(), [])
    assert ids == ["rdv.model.a.rescue.host-a-1", "rdv.model.a.rescue.host-b-1"]


def test_a_rescue_far_behind_the_groups_commit_leaves_the_offsets_to_the_next_worker(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """60,000 offsets of two models filled librdkafka's queue: BufferError out of the rescue (a review)."""
    from confluent_kafka import TopicPartition

    from services.model_worker import rescue as module

    monkeypatch.setattr(module, "committed_offsets", lambda *_a, **_k: [TopicPartition("rq", 0, 10)])
    config = RescueConfig({}, "rq", "sc", "g", [Model("a", "1", "h")], 2.0, 256, "", 1)
    assert module.unsettled_ranges(config, [(0, 10 + module.MAX_UNSETTLED, 20 + module.MAX_UNSETTLED)])[0][1] == 10
    with pytest.raises(RuntimeError, match=r"20,001 offsets before the batch are past the group's last commit"):
        module.unsettled_ranges(config, [(0, 10 + module.MAX_UNSETTLED + 1, 30 + module.MAX_UNSETTLED)])


class QueueOf:
    """A transactional producer whose local queue holds `room` records until polled."""

    def __init__(self, room: int) -> None:
        self.room, self.queued, self.polls, self.produced = room, 0, 0, 0

    def init_transactions(self, *_a: object) -> None: ...
    def begin_transaction(self) -> None: ...
    def send_offsets_to_transaction(self, *_a: object) -> None: ...
    def commit_transaction(self, *_a: object) -> None: ...

    def produce(self, *_a: object, **_k: object) -> None:
        if self.queued >= self.room:
            raise BufferError("Local: Queue full")
        self.queued += 1
        self.produced += 1

    def poll(self, _timeout: float) -> int:
        self.polls += 1
        self.queued = 0  # acknowledged
        return 0

    def flush(self, _timeout: float) -> int:
        return 0


def test_the_rescues_scores_wait_for_room_in_librdkafkas_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.model_worker import rescue

    queue = QueueOf(room=3)
    monkeypatch.setattr(rescue, "new_client", lambda _kind, _config: queue)
    config = RescueConfig({}, "rq", "sc", "g", [Model("a", "1", "h")], 2.0, 256, "", 1)
    rescue.commit(config, snapshot(), [(0, b"k", b"v")] * 10)
    assert queue.produced == 10 and queue.polls >= 3


def test_a_rescue_that_fails_unexpectedly_still_kills_the_stuck_worker(
    board: Board, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the give-up timer was left, a daemon thread that died with the process: the worker,
    still holding the interpreter lock, was never killed (a review)."""
    from services.model_worker import rescue as module

    config = RescueConfig({}, "rq", "sc", "g", [Model("a", "1", "h")], 2.0, 256, board.path, 4242)
    board.batch(messages([(0, range(3))]), META, 100.0)
    snap = Reader(board.path).read()
    killed: list[bool] = []
    monkeypatch.setattr(module, "watch", lambda *_a: snap)
    monkeypatch.setattr(module, "rescue", lambda *_a: (_ for _ in ()).throw(BufferError("Local: Queue full")))
    monkeypatch.setattr(module, "kill", lambda _parent: killed.append(True))
    assert module.run(config) == 1
    assert killed == [True]


def test_a_rescue_that_fails_unexpectedly_after_the_model_returned_stands_down(
    board: Board, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a rescue whose Kafka calls failed does: the worker went on meanwhile, so it is not killed."""
    from services.model_worker import rescue as module

    config = RescueConfig({}, "rq", "sc", "g", [Model("a", "1", "h")], 2.0, 256, board.path, 4242)
    board.batch(messages([(0, range(3))]), META, 100.0)
    looks = [None, Reader(board.path).read()]
    killed: list[bool] = []

    def failing(*_a: object) -> bool:
        board.turn(0.0)  # the model returned meanwhile
        raise BufferError("Local: Queue full")

    monkeypatch.setattr(module, "watch", lambda *_a: looks.pop())
    monkeypatch.setattr(module, "rescue", failing)
    monkeypatch.setattr(module, "kill", lambda _parent: killed.append(True))
    assert module.run(config) == 0 and killed == []
