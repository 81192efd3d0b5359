"""Where a taken-over partition is read from once recovery is done, and how recovery waits for a
transaction still open on its outputs (services/rendezvous/takeover.py, recovery.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar, cast

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, TopicPartition

from services.core.topic_range import PartitionSpan
from services.rendezvous import takeover as takeover_module
from services.rendezvous.join import Join
from services.rendezvous.offsets import OffsetBook
from services.rendezvous.recovery import OpenTransaction, _refuse_open_transactions
from services.rendezvous.settings import RendezvousSettings
from services.rendezvous.takeover import Takeover, _Job, _Learned

T = TypeVar("T")


def at_once(work: Callable[[], T]) -> Future[T]:
    """A try's reading run on the caller's thread: its outcome is there when run_due looks."""
    future: Future[T] = Future()
    try:
        future.set_result(work())
    except Exception as exc:  # noqa: BLE001 - the outcome, whatever it is, as the thread hands it over
        future.set_exception(exc)
    return future


def takeover(start_from: str, processing: str = "exactly-once") -> Takeover:
    # Choosing the starts reads only the settings; the join is what recovery fills.
    return Takeover(RendezvousSettings(start_from=start_from, processing=processing), cast(Join, None),
                    background=at_once)


def starts(start_from: str, committed: list[TopicPartition]) -> list[tuple[str, int, int, int | None]]:
    return [(tp.topic, tp.partition, tp.offset, tp.leader_epoch) for tp in takeover(start_from)._starts(committed)]


def test_a_committed_partition_starts_at_its_committed_offset_with_its_leader_epoch() -> None:
    with_epoch = TopicPartition("rdv.requests", 0, 1200, leader_epoch=3)
    without = TopicPartition("rdv.scores", 0, 3400)
    assert starts("earliest", [with_epoch, without]) == [("rdv.requests", 0, 1200, 3), ("rdv.scores", 0, 3400, None)]
    assert starts("latest", [with_epoch, without]) == [("rdv.requests", 0, 1200, 3), ("rdv.scores", 0, 3400, None)]


def test_an_uncommitted_partition_starts_at_the_beginning_for_earliest_and_at_its_end_when_assigned_for_latest(
) -> None:
    never = TopicPartition("rdv.requests", 1, OFFSET_INVALID)
    assert starts("earliest", [never]) == [("rdv.requests", 1, OFFSET_BEGINNING, None)]
    # Its end is unknown (not read at the assignment): left to the consumer.
    assert starts("latest", [never]) == []
    # "latest" is the end when the partition was assigned (the end now would skip what arrived
    # during recovery), and it is a position to commit before anything is read from it: never
    # committed, a partition that had no record yet made the next owner skip what came meanwhile.
    book = OffsetBook()
    assigned = Takeover(RendezvousSettings(start_from="latest"), cast(Join, None), book.start_at)
    assigned._ends_when_assigned[("rdv.requests", 1)] = 42
    assert [(tp.topic, tp.partition, tp.offset) for tp in assigned._starts([never])] == [("rdv.requests", 1, 42)]
    assert [(tp.topic, tp.partition, tp.offset) for tp in book.to_commit()] == [("rdv.requests", 1, 42)]
    book.track("rdv.requests", 1, 42, None)  # read from there on: the position moves as before
    assert [tp.offset for tp in book.to_commit()] == [43]


def test_the_ends_read_at_assignment_are_the_latest_starts_until_their_partition_is_given_up() -> None:
    """Under `latest`, Takeover.add reads each new partition's end (the start of one never
    committed; reading them against a broker: tests/integration/test_takeover_latest.py); a
    partition released before its recovery forgets it, and a start is taken once."""
    never = [TopicPartition(t, p, OFFSET_INVALID) for t in ("rdv.requests", "rdv.scores") for p in (0, 1)]
    book = OffsetBook()
    latest = Takeover(RendezvousSettings(start_from="latest"), cast(Join, None), book.start_at)
    latest._ends_when_assigned.update({(tp.topic, tp.partition): 100 + tp.partition for tp in never})
    del latest._ends_when_assigned[("rdv.scores", 1)]  # the broker did not tell it: left to the consumer
    latest.release([TopicPartition("rdv.requests", 1)])
    assert [(tp.topic, tp.partition, tp.offset) for tp in latest._starts(never)] == [
        ("rdv.requests", 0, 100), ("rdv.scores", 0, 100)]
    assert sorted((tp.topic, tp.partition, tp.offset) for tp in book.to_commit()) == [
        ("rdv.requests", 0, 100), ("rdv.scores", 0, 100)]
    # Taken: a second recovery of the same partitions (another rebalance) reads their ends again.
    assert latest._starts(never) == []


def test_recovery_refuses_to_scan_a_partition_whose_stable_end_is_short_of_what_was_written() -> None:
    spans = {"rdv.answers": [PartitionSpan(0, 10, 20), PartitionSpan(1, 5, 5)], "rdv.log": [PartitionSpan(0, 3, 9)]}
    # Everything written is stable (or a partition was not asked: nothing is re-read there).
    _refuse_open_transactions({("rdv.answers", 0): 20, ("rdv.answers", 1): 5, ("rdv.log", 0): 9}, spans)
    _refuse_open_transactions({}, spans)
    with pytest.raises(OpenTransaction, match=r"rdv\.log\[0\] \(stable up to offset 9, written up to 12\)") as refused:
        _refuse_open_transactions({("rdv.answers", 0): 20, ("rdv.log", 0): 12}, spans)
    assert refused.value.partitions == [("rdv.log", 0)]
    with pytest.raises(OpenTransaction) as refused:
        _refuse_open_transactions({("rdv.answers", 0): 21, ("rdv.log", 0): 12}, spans)
    assert refused.value.partitions == [("rdv.answers", 0), ("rdv.log", 0)]


def test_waiting_for_an_open_transaction_retries_soon_then_every_second_and_warns_every_few_seconds(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(takeover_module.time, "monotonic", lambda: clock[0])
    waiting = takeover("earliest")
    delays, warnings = [], []
    while clock[0] < 1020.0:  # each try when the previous one said
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="services.rendezvous.takeover"):
            waiting._wait_for_transaction(OpenTransaction("a transaction is still open", [("rdv.answers", 0)]))
        warnings += [round(clock[0] - 1000.0, 1) for r in caplog.records if r.levelno == logging.WARNING]
        delays.append(round(waiting._next_try - clock[0], 1))
        clock[0] = waiting._next_try
    soon = int(takeover_module.OPEN_TXN_SOON_S / takeover_module.OPEN_TXN_RETRY_S)
    assert delays[:soon] == [takeover_module.OPEN_TXN_RETRY_S] * soon
    assert set(delays[soon:]) == {takeover_module.RETRY_S}
    assert warnings == [5.0, 10.0, 15.0]


def seals(processing: str, open_on: list[list[tuple[str, int]]], until_s: float,
          monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, list[tuple[str, int]]]]:
    """Each time the wait asked for seal records, and where: trying whenever the previous try
    said, the open partitions of the n-th try being open_on[min(n, last)]."""
    clock = [1000.0]
    monkeypatch.setattr(takeover_module.time, "monotonic", lambda: clock[0])
    waiting, asked, tries = takeover("earliest", processing), [], 0
    while clock[0] < 1000.0 + until_s:
        due = waiting._wait_for_transaction(OpenTransaction("open", open_on[min(tries, len(open_on) - 1)]))
        if due:
            asked.append((round(clock[0] - 1000.0, 1), due))
        tries += 1
        clock[0] = waiting._next_try
    return asked


def test_a_transaction_open_far_beyond_the_transaction_timeout_gets_one_seal_per_partition(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    hanging_after = RendezvousSettings().transaction_timeout_ms / 1000 + takeover_module.HANGING_MARGIN_S
    both = [("rdv.answers", 0), ("rdv.log", 0)]
    asked = seals("exactly-once", [both], hanging_after + 30, monkeypatch)
    assert len(asked) == 1 and asked[0][1] == both
    assert hanging_after <= asked[0][0] < hanging_after + takeover_module.RETRY_S
    # One found open after the first seal gets its own on the next try (the wait counts from the
    # takeover's first refusal); no partition twice.
    first, later = [("rdv.answers", 0)], [("rdv.answers", 0), ("rdv.log", 2)]
    asked = seals("exactly-once", [first] * 50 + [later], hanging_after + 60, monkeypatch)
    assert [where for _at, where in asked] == [first, [("rdv.log", 2)]]
    assert asked[1][0] > asked[0][0]


def test_at_least_once_never_seals_it_holds_no_transaction_that_could_end_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert seals("at-least-once", [[("rdv.answers", 0)]], 120, monkeypatch) == []


def test_offsets_handed_to_the_next_commit_are_taken_once_and_never_for_a_partition_given_up() -> None:
    waiting = takeover("earliest")
    last_completed = [TopicPartition("rdv.requests", p, 100 + p, metadata="a=1;l=2;t=x") for p in range(3)]
    never = TopicPartition("rdv.requests", 3, OFFSET_INVALID)
    waiting._recommit([*last_completed, never])
    waiting.release([TopicPartition("rdv.requests", 1)])
    # A partition whose position moved since is committed at its new position instead.
    taken = waiting.take_offsets_to_recommit({("rdv.requests", 2)})
    assert [(tp.partition, tp.offset, tp.metadata) for tp in taken] == [(0, 100, "a=1;l=2;t=x")]
    assert waiting.take_offsets_to_recommit(set()) == []
    waiting._recommit(last_completed)
    waiting.clear()  # a rewind: the partitions are assigned again and recovered anew
    assert waiting.take_offsets_to_recommit(set()) == []
    at_least_once = takeover("earliest", "at-least-once")
    at_least_once._recommit(last_completed)
    assert at_least_once.take_offsets_to_recommit(set()) == []


class _Consumer:
    """What the rendezvous' intake hold calls of its consumer: pause, noted."""

    def __init__(self) -> None:
        self.paused: set[tuple[str, int]] = set()

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}


@pytest.mark.parametrize(("draining", "throttled", "held"), [(True, False, True), (False, True, True),
                                                             (False, False, False)])
def test_recovered_requests_partitions_stay_paused_while_the_drain_runs(
    draining: bool, throttled: bool, held: bool
) -> None:
    """After a rebalance during a drain the takeover resumed its partitions, requests included: new
    mailboxes kept the drain running to its timeout (a review). Held as by --max-mailboxes."""
    from types import SimpleNamespace

    from services.rendezvous.service import Rendezvous

    service = Rendezvous(RendezvousSettings(models=("champion",)))
    consumer = _Consumer()
    service._ctx = SimpleNamespace(consumer=consumer, draining=draining)  # type: ignore[assignment]
    service._paused = throttled
    topics = service.topics
    service._hold_intake([TopicPartition(topics.requests, 0), TopicPartition(topics.scores, 0)])
    assert consumer.paused == ({(topics.requests, 0)} if held else set())


def test_an_answer_record_says_which_inputs_it_answers() -> None:
    """The digest a new owner's scan reads back (recovery._note_inputs): without it, a re-read
    request under the id with other inputs was given this answer (a review)."""
    from types import SimpleNamespace
    from typing import Any

    from services.core.request_inputs import INPUTS_HEADER
    from services.rendezvous.mailbox import Mailbox
    from services.rendezvous.service import Rendezvous

    written: list[tuple[str, Any]] = []
    service = Rendezvous(RendezvousSettings(models=("champion",)))
    service._ctx = SimpleNamespace(  # type: ignore[assignment]
        producer=SimpleNamespace(check_size=lambda *_a: None),
        outputs=SimpleNamespace(produce=lambda topic, value, key, partition, headers: written.append((topic, headers))))
    mailbox = Mailbox("x", 0, 1)
    mailbox.inputs = b"digest"
    record = {"request_id": "x", "status": "OK", "model": "champion", "version": "1", "score": 0.9, "label": None,
              "reason": "", "created_at": 1, "deadline": 2, "answered_at": 1, "schedule": "default",
              "schedule_version": 1}
    service._write_answer(mailbox, record)
    assert written == [(service.topics.answers, [(INPUTS_HEADER, b"digest")])]


def test_every_reply_names_the_inputs_of_the_request_at_its_address() -> None:
    """A client reading a reply partition takes a reply for its request only when it names that
    request's inputs (two clients under one id took each other's answers; a review): the replies
    of a decided answer, and an answer sent again to another request's address, carry its digest
    through the reply router to the producer."""
    from types import SimpleNamespace
    from typing import Any

    from services.core.request_inputs import INPUTS_HEADER
    from services.rendezvous.mailbox import Mailbox, Receipt
    from services.rendezvous.replies import ReplyRouter, ReplyRules
    from services.rendezvous.service import Rendezvous

    produced: list[tuple[str, int | None, Any]] = []
    service = Rendezvous(RendezvousSettings(models=("champion",)))
    service._ctx = SimpleNamespace(  # type: ignore[assignment]
        producer=SimpleNamespace(check_size=lambda *_a: None),
        outputs=SimpleNamespace(produce=lambda *_a, **_kw: None))
    service._fast = SimpleNamespace(  # type: ignore[assignment]
        produce=lambda topic, _value, key, partition, headers, on_done: produced.append((topic, partition, headers)))
    service._replies = ReplyRouter(service._queue_reply, {}, ReplyRules(service.topics),
                                   partition_counts=lambda topics: dict.fromkeys(topics, 4))
    service._replies._remember(service.topics.replies, 4)  # known to exist: sent at once
    mailbox = Mailbox("x", 0, 1)
    mailbox.inputs, mailbox.replies = b"first", [(service.topics.replies, 1), (service.topics.replies, 2)]
    record = {"request_id": "x", "status": "OK", "model": "champion", "version": "1", "score": 0.9, "label": None,
              "reason": "", "created_at": 1, "deadline": 2, "answered_at": 1, "schedule": "default",
              "schedule_version": 1}
    service._write_answer(mailbox, record)
    service.repeat((service.topics.replies, 3), record, Receipt(), b"retry")
    service._send_replies()
    assert produced == [(service.topics.replies, 1, [(INPUTS_HEADER, b"first")]),
                        (service.topics.replies, 2, [(INPUTS_HEADER, b"first")]),
                        (service.topics.replies, 3, [(INPUTS_HEADER, b"retry")])]


def test_recovery_meeting_a_deleted_output_topic_stops_the_service_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """It said 'answers and log must have as many partitions as requests: grow them together' for a
    log topic deleted under a running rendezvous (a review); then it named it, and waited for good,
    /readyz 503 (another). A topic merely short of partitions is still waited for."""
    from types import SimpleNamespace

    from services.core.errors import TopicGone, TopicMissing, TopicRefused

    def counts(_config: object, topics: list[str], timeout: float | None = None) -> dict[str, int]:
        raise TopicMissing(f"missing topic(s) {topics[1]} at b:9; create them with `rendezvous topics create`")

    monkeypatch.setattr(takeover_module, "partition_counts", counts)
    recovery, ctx = takeover("latest"), SimpleNamespace(config={})
    # Not at the first answer without it: a broker's metadata can lag a topic made (a review).
    said = recovery._missing_outputs(ctx)  # type: ignore[arg-type]
    assert said.startswith("missing topic(s) rdv.log at b:9; create them with") and "still missing 10 s on" in said
    assert recovery._missing_since is not None
    recovery._missing_since -= takeover_module.GONE_AFTER_S
    with pytest.raises(TopicGone, match=r"^missing topic\(s\) rdv\.log at b:9; create them with .*\(deleted while"):
        recovery._missing_outputs(ctx)  # type: ignore[arg-type]

    def refused(_config: object, topics: list[str], timeout: float | None = None) -> dict[str, int]:
        raise TopicRefused(f"not authorized to describe topic(s) {topics[1]}")

    monkeypatch.setattr(takeover_module, "partition_counts", refused)
    with pytest.raises(TopicRefused, match="not authorized"):
        takeover("latest")._missing_outputs(SimpleNamespace(config={}))  # type: ignore[arg-type]
    monkeypatch.setattr(takeover_module, "partition_counts", lambda *_a, **_k: {})
    recovery._missing_outputs(ctx)  # type: ignore[arg-type]
    assert recovery._missing_since is None  # there again: a later absence waits its own time
    assert "grow them together" in takeover("latest")._missing_outputs(SimpleNamespace(config={}))  # type: ignore[arg-type]


class _Outputs:
    """What recovery meets, driven by a test: a stand-in clock, the broker's answers about the
    output topics (`partition_counts`), and the outcome of each try (`_learn`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, recovery: Takeover) -> None:
        from contextlib import nullcontext
        from types import SimpleNamespace

        from services.core.errors import TopicMissing

        self.now, self.asked, self.log_missing = 0.0, 0, True
        self.recovery = recovery
        self.ctx = SimpleNamespace(config={}, consumer=SimpleNamespace(pause=lambda *_: None),
                                   health=SimpleNamespace(mark_down=lambda: None, blocking=nullcontext))

        def counts(_config: object, topics: list[str], timeout: float | None = None) -> dict[str, int]:
            self.asked += 1
            if self.log_missing:
                raise TopicMissing(f"missing topic(s) {topics[1]} at b:9; create them with `rendezvous topics create`")
            return dict.fromkeys(topics, 4)

        monkeypatch.setattr(takeover_module, "partition_counts", counts)
        monkeypatch.setattr(takeover_module.time, "monotonic", lambda: self.now)

    def try_at(self, now: float, outcome: Exception | Callable[[list[TopicPartition]], Exception]) -> str:
        """One try of recovery at `now` meeting `outcome` (or what it gives for the partitions
        tried): 'waits', or the TopicGone's line."""
        from services.core.errors import TopicGone

        def meet(_ctx: object, job: _Job) -> _Learned:
            raise outcome(job.partitions) if callable(outcome) else outcome

        self.now = now
        self.recovery._learn = meet  # type: ignore[method-assign,assignment]
        self.recovery._next_try = 0.0
        try:
            self.recovery.run_due(self.ctx)  # type: ignore[arg-type]
        except TopicGone as gone:
            return str(gone)
        return "waits"


def _unknown_partition() -> Exception:
    from confluent_kafka import KafkaError, KafkaException

    return KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))


def test_an_output_topic_is_taken_for_gone_only_when_missing_from_every_answer_of_one_takeover(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """An absence an hour before, in a takeover given up since, stopped a new one at its first
    lagging answer; so did one before a broker outage (a review)."""
    from services.core.errors import RendezvousError

    recovery = takeover("earliest")
    world = _Outputs(monkeypatch, recovery)
    requests = [TopicPartition("rdv.requests", 0)]
    recovery.add(world.ctx, requests)  # type: ignore[arg-type]
    caplog.set_level(logging.CRITICAL, logger=takeover_module.__name__)
    assert world.try_at(0.0, _unknown_partition()) == "waits"
    recovery.release(requests)
    recovery.add(world.ctx, requests)  # type: ignore[arg-type]  # assigned again an hour later
    assert world.try_at(3_600.0, _unknown_partition()) == "waits"
    assert world.try_at(3_601.0, RendezvousError("broker away")) == "waits"
    assert world.try_at(3_606.0, _unknown_partition()) == "waits"  # counts from here
    assert world.try_at(3_611.0, _unknown_partition()) == "waits"
    assert world.try_at(3_616.0, _unknown_partition()).startswith("missing topic(s) rdv.log at b:9")


def test_whether_an_output_topic_is_gone_is_asked_whatever_else_recovery_waits_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Asked only with a warning, on the timer other waits share: another partition's unreadable
    scan took every turn, and a log topic deleted meanwhile was waited for for good (a review)."""
    from services.rendezvous.recovery import ScanUnreadable

    recovery = takeover("earliest")
    world = _Outputs(monkeypatch, recovery)
    recovery.add(world.ctx, [TopicPartition("rdv.requests", 0), TopicPartition("rdv.requests", 1)])  # type: ignore[arg-type]
    caplog.set_level(logging.CRITICAL, logger=takeover_module.__name__)
    said = []
    for second in range(30):
        world.now = float(second)
        recovery._waiting_warned = world.now  # every warning's turn taken by the other wait
        said.append(world.try_at(float(second), lambda tried: ScanUnreadable("the schema registry is away", 0)
                                 if len(tried) == 2 else _unknown_partition()))
    assert world.asked >= 2 and any(line.startswith("missing topic(s) rdv.log") for line in said)


class _Resumes:
    """The consumer and health a finished try touches: the partitions resumed, noted."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.resumed: list[tuple[str, int]] = []
        self.ctx = SimpleNamespace(config={}, consumer=SimpleNamespace(pause=lambda *_: None, resume_at=self.resume_at),
                                   health=SimpleNamespace(mark_up=lambda: None, mark_down=lambda: None))

    def resume_at(self, partitions: list[TopicPartition], _starts: list[TopicPartition]) -> list[object]:
        self.resumed += [(tp.topic, tp.partition) for tp in partitions]
        return []


def test_recovery_reads_the_broker_off_the_poll_loop_which_turns_on_meanwhile() -> None:
    """On the loop, a scan longer than max.poll.interval.ms left the group mid-recovery, came back
    lost and scanned again, for good (a review: a 6 s limit, an 8 s scan). run_due returns at once
    while the try reads; the partitions are resumed on the loop's first turn after it is done."""
    recovery = Takeover(RendezvousSettings(start_from="earliest"), cast(Join, None))  # a thread of its own
    world, reading, go_on = _Resumes(), threading.Event(), threading.Event()
    requests = [TopicPartition("rdv.requests", 0), TopicPartition("rdv.scores", 0)]

    def learn(_ctx: object, job: _Job) -> _Learned:
        reading.set()
        assert go_on.wait(30), "the test never let the read finish"
        return _Learned([TopicPartition(tp.topic, tp.partition, 7) for tp in job.partitions], [], None)

    recovery._learn = learn  # type: ignore[method-assign,assignment]
    recovery.add(world.ctx, requests)  # type: ignore[arg-type]
    assert recovery.run_due(world.ctx) == []  # type: ignore[arg-type]  # returned while the read goes on
    assert reading.wait(30) and recovery.pending == 2 and world.resumed == []
    assert recovery.run_due(world.ctx) == []  # type: ignore[arg-type]  # another turn: still out, not started again
    go_on.set()
    assert recovery._job is not None
    recovery._job.future.result(timeout=30)
    assert recovery.run_due(world.ctx) == requests  # type: ignore[arg-type]
    assert world.resumed == [("rdv.requests", 0), ("rdv.scores", 0)] and recovery.pending == 0


def test_a_try_whose_partitions_are_taken_away_meanwhile_is_given_up_and_its_outcome_dropped() -> None:
    """Its outcome would restore answers of partitions another member now reads, and resume
    partitions no longer ours; its scan is told to stop (`cancelled`). Assigned again, the
    partitions get a try of their own."""
    recovery = Takeover(RendezvousSettings(start_from="earliest"), cast(Join, None))
    world, gates = _Resumes(), [threading.Event(), threading.Event()]
    tries: list[Callable[[], bool]] = []

    def learn(_ctx: object, job: _Job) -> _Learned:
        tries.append(job.cancelled.is_set)
        assert gates[len(tries) - 1].wait(30), "the test never let the read finish"
        return _Learned([TopicPartition(tp.topic, tp.partition, 7) for tp in job.partitions], [], None)

    recovery._learn = learn  # type: ignore[method-assign,assignment]
    requests = [TopicPartition("rdv.requests", 0)]
    recovery.add(world.ctx, requests)  # type: ignore[arg-type]
    recovery.run_due(world.ctx)  # type: ignore[arg-type]
    first = recovery._job
    assert first is not None
    recovery.release([TopicPartition("rdv.requests", 0)])
    assert recovery._job is None and tries[0]() and recovery.pending == 0
    gates[0].set()
    first.future.result(timeout=30)
    assert recovery.run_due(world.ctx) == [] and world.resumed == []  # type: ignore[arg-type]
    recovery.add(world.ctx, requests)  # type: ignore[arg-type]  # assigned again
    assert recovery.run_due(world.ctx) == []  # type: ignore[arg-type]
    second = recovery._job
    assert second is not None and second is not first
    gates[1].set()
    second.future.result(timeout=30)
    assert recovery.run_due(world.ctx) == requests and not tries[1]()  # type: ignore[arg-type]
    assert world.resumed == [("rdv.requests", 0)]


def test_a_given_up_try_still_running_does_not_count_toward_the_next_takeover(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its thread counted its timed-out offset fetch into the takeover's own count after a new
    takeover had reset it (a review): enough of them made a new takeover fall back to the last
    completed commit early. What a try tells is counted on the loop, for the current try only."""
    from contextlib import nullcontext

    from confluent_kafka import KafkaError, KafkaException

    recovery = Takeover(RendezvousSettings(start_from="earliest", processing="at-least-once"), cast(Join, None))
    world, gates, asked = _Resumes(), [threading.Event(), threading.Event()], []
    world.ctx.health.blocking = nullcontext

    def committed(*_a: object, **_k: object) -> list[TopicPartition]:
        asked.append(True)
        assert gates[len(asked) - 1].wait(30), "the test never let the fetch end"
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    monkeypatch.setattr(takeover_module, "committed_offsets", committed)
    requests = [TopicPartition("rdv.requests", 0)]
    recovery.add(world.ctx, requests)  # type: ignore[arg-type]
    recovery.run_due(world.ctx)  # type: ignore[arg-type]
    first = recovery._job
    assert first is not None
    recovery.release(requests)  # a rebalance: taken away and given back
    recovery.add(world.ctx, requests)  # type: ignore[arg-type]
    gates[0].set()
    with pytest.raises(KafkaException):
        first.future.result(timeout=30)
    assert recovery.run_due(world.ctx) == []  # type: ignore[arg-type]  # the new takeover's own try
    second = recovery._job
    assert second is not None and second is not first
    gates[1].set()
    with pytest.raises(KafkaException):
        second.future.result(timeout=30)
    assert recovery.run_due(world.ctx) == [] and recovery._unstable == 1  # type: ignore[arg-type]


def test_a_stopping_service_gives_up_the_try_out_and_lets_its_thread_end_first() -> None:
    """Its clients are closed before the process exits: close() drops the try (its next step stops
    it) and waits for its thread, briefly, before the consumer closes (service.py `start`)."""
    from services.rendezvous.recovery import ScanCancelled, stop_if_given_up

    recovery = Takeover(RendezvousSettings(start_from="earliest"), cast(Join, None))
    world, reading = _Resumes(), threading.Event()

    def learn(_ctx: object, job: _Job) -> _Learned:
        reading.set()
        assert job.cancelled.wait(30), "never given up"
        stop_if_given_up(job.cancelled.is_set, [0])
        raise AssertionError("not stopped")

    recovery._learn = learn  # type: ignore[method-assign,assignment]
    recovery.add(world.ctx, [TopicPartition("rdv.requests", 0)])  # type: ignore[arg-type]
    recovery.run_due(world.ctx)  # type: ignore[arg-type]
    job = recovery._job
    assert job is not None and reading.wait(30) and not job.future.done()
    recovery.close()
    assert job.future.done() and isinstance(job.future.exception(), ScanCancelled)
    assert recovery._job is None and world.resumed == []


def test_the_next_try_waits_a_second_after_a_failed_one_ends_not_after_it_started(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Off the loop, a failing try longer than RETRY_S was followed at once by the next, full scans
    back to back (a review); on the loop it had at least kept the loop from starting another."""
    from services.rendezvous.recovery import ScanUnreadable

    recovery = takeover("earliest")
    world = _Outputs(monkeypatch, recovery)
    caplog.set_level(logging.CRITICAL, logger=takeover_module.__name__)
    recovery.add(world.ctx, [TopicPartition("rdv.requests", 0)])  # type: ignore[arg-type]

    def slow_failure(_ctx: object, _job: _Job) -> _Learned:
        world.now += 5.0  # the try reads for 5 s, then meets an output it cannot read yet
        raise ScanUnreadable("the schema registry is away", 0)

    recovery._learn = slow_failure  # type: ignore[method-assign,assignment]
    world.now = 100.0
    assert recovery.run_due(world.ctx) == []  # type: ignore[arg-type]
    assert recovery._next_try == 105.0 + takeover_module.RETRY_S


def test_a_recovery_stuck_reading_the_broker_fails_the_rendezvous_liveness() -> None:
    """Off the loop, a recovery whose client call never returns held its partitions paused for
    good while the loop turned on (a review): past JOB_STUCK_S, /healthz fails for a restart."""
    from services.rendezvous.service import Rendezvous

    service = Rendezvous(RendezvousSettings(models=("champion",)))
    assert service.liveness() == (True, "ok")
    job = _Job([TopicPartition("rdv.requests", 0)], first=True)
    service.takeover._job = job
    job.started -= takeover_module.JOB_STUCK_S - 60  # reading for 9 minutes: a long scan, not stuck
    assert service.liveness() == (True, "ok")
    job.started -= 61
    alive, reason = service.liveness()
    assert not alive and reason.startswith("recovery has been reading the broker for 60")
    assert reason.endswith("its partitions paused (past 600s: a call that never returns)")
