"""Which waiter an answer goes to, and a request whose reply partition moved while it was sent
(services/client/client.py), without a broker: a client's tables, driven directly."""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from services.client.client import Answer, AnswerTimeout, Client, ReplyPartitionLost
from services.core.codec import codec
from services.core.rate_limit import OncePerPeriod
from services.core.settings import Topics


def bare_client(owned: tuple[int, ...]) -> Client:
    client = Client.__new__(Client)  # the tables only: no Kafka client is made
    client._lock = threading.Lock()
    client._stop = threading.Event()
    client._pending = {}
    client._answers, client._requests = codec("answer"), codec("request")
    client._owned = owned
    client.topics = Topics.from_prefix("rdv.")
    client.stopped = None
    client.budget_ms = 200
    client.undecodable_answers = 0
    client._unreadable_said = OncePerPeriod[str](60.0)
    client.foreign_answers, client._foreign_said = 0, OncePerPeriod[str](60.0)
    client.answer_wait_s = 10.0
    client._expiries, client._expiry_order, client._expire_waiters = [], itertools.count(), True
    client._given_up = OrderedDict()
    client._closed_from_reader, client._reader_done = False, True  # no reader thread
    client._read_again, client._read_again_bytes, client._held_why = deque(), 0, {}
    return client


def answer(rid: str) -> bytes:
    return codec("answer").encode({
        "request_id": rid, "status": "OK", "model": "champion", "version": "v1", "score": 0.5, "label": "x",
        "reason": "preferred model answered", "created_at": 1, "deadline": 2, "answered_at": 1, "schedule": "s",
        "schedule_version": 1})


def test_an_answer_goes_to_the_waiter_whose_return_address_it_came_to() -> None:
    """The same id in flight twice, answered on partitions 0 and 1: the answer read from 1 went to
    the waiter on 0, whose partition then moved, failing the caller whose answer had come."""
    client = bare_client((0, 1))
    on_0, on_1 = Future[Answer](), Future[Answer]()
    client._pending["r"] = [(on_0, 0, 1), (on_1, 1, 2)]
    client._resolve(answer("r"), 10, partition=1)
    assert on_1.done() and not on_0.done()
    assert client._pending["r"] == [(on_0, 0, 1)]


def test_a_request_whose_reply_partition_moved_after_it_was_picked_is_not_sent() -> None:
    """Picked, then revoked before its waiter was registered: the revoke could not fail it, and
    it waited out its deadline."""
    client = bare_client((1,))  # partition 0 was picked, then moved
    client._pick_partition = lambda: 0  # type: ignore[method-assign]
    with pytest.raises(ReplyPartitionLost, match="moved to another reader just now"):
        client.submit({"f": 1.0})
    assert client._pending == {}


class _CancelledRightAfterTheCheck(Future[Answer]):
    """A waiter whose caller stops waiting between the reader's `done()` check and its result."""

    def done(self) -> bool:
        was = super().done()
        self.cancel()
        return was


def test_a_waiter_cancelled_while_its_answer_is_handed_over_does_not_end_the_reader() -> None:
    """set_result on a future cancelled just after the check raised InvalidStateError out of the
    thread that reads every caller's answers: it died, submit() went on, nothing was answered."""
    client = bare_client((0,))
    cancelled, waiting = _CancelledRightAfterTheCheck(), Future[Answer]()
    client._pending = {"r": [(cancelled, 0, 1)], "s": [(waiting, 0, 2)]}
    client._resolve(answer("r"), 10, partition=0)
    client._resolve(answer("s"), 10, partition=0)
    assert cancelled.cancelled() and waiting.result(0).request_id == "s"


def test_closing_from_an_answers_callback_fails_the_other_waiters_instead_of_raising() -> None:
    """close() joined the reading thread from that thread (RuntimeError): the other futures stayed
    pending for good, and a second close() did nothing."""
    from services.client.client import ClosedClient

    client = bare_client((0,))
    client._reader = threading.current_thread()  # as in a done-callback run by the reading thread
    client._closed_from_reader = False
    first, second = Future[Answer](), Future[Answer]()
    client._pending = {"first": [(first, 0, 1)], "second": [(second, 0, 2)]}
    first.add_done_callback(lambda _done: client.close())
    client._resolve(answer("first"), 10, partition=0)
    assert first.result(0).request_id == "first"
    with pytest.raises(ClosedClient):
        second.result(0)
    assert client._closed_from_reader and client.stopped == "is closed"  # its loop closes the Kafka clients


def test_a_request_submitted_as_the_reader_dies_is_refused_not_left_waiting() -> None:
    """`submit` checked `stopped` before the lock, the reader failed every waiter after that check
    and before the new waiter was registered: that one was never settled (a review's repro)."""
    from services.core.errors import BrokerError

    client = bare_client((0,))

    def pick_as_the_reader_dies() -> int:
        client._reader_ended("stopped reading answers: boom", BrokerError("the client stopped reading answers"))
        return 0

    client._pick_partition = pick_as_the_reader_dies  # type: ignore[method-assign]
    with pytest.raises(BrokerError, match="stopped reading answers: boom"):
        client.submit({"f": 1.0})
    assert client._pending == {}


def sending_client(answer_wait_s: float) -> Client:
    """A bare client with a real producer whose broker is not there: requests queue, none is delivered."""
    from services.core.kafka import Producer
    from services.localkafka.config import free_port

    client = bare_client((0,))
    client._producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0})
    client._wait_when_full = True
    client._turn = itertools.count()
    client.answer_wait_s = answer_wait_s
    return client


def test_score_with_the_broker_away_fails_within_its_answer_wait_and_leaves_no_waiter() -> None:
    """It waited out the producer's 30 s flush (answer_wait_s 2), then raised with its waiter left
    behind for librdkafka's 5-minute message timeout."""
    from services.core.errors import DeliveryFailed

    client = sending_client(0.3)
    try:
        with pytest.raises(DeliveryFailed, match=r"not acknowledged within 0\.3s"):
            client.score({"f": 1.0})
        assert client._pending == {}
        assert "within 0.3s" in str(client._no_answer())  # it said "within 0s"
    finally:
        client._producer.native.purge()
        client._producer.close(timeout=0)


def test_an_ascore_cancelled_by_its_caller_leaves_no_waiter() -> None:
    import asyncio

    client = sending_client(30)

    async def cancel_one() -> None:
        task = asyncio.create_task(client.ascore({"f": 1.0}))
        while not client._pending and not task.done():
            await asyncio.sleep(0)
        assert client._pending  # waiting for its answer
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(cancel_one())
        assert client._pending == {}
    finally:
        client._producer.native.purge()
        client._producer.close(timeout=0)


def test_an_answer_carries_when_its_reply_was_written() -> None:
    """The reply record's timestamp (the rendezvous' producer stamps it): bench/e2e_latency.py
    splits the time after the decision into the rendezvous' and the way back with it."""
    client = bare_client((0,))
    waiting = Future[Answer]()
    client._pending["r"] = [(waiting, 0, 1)]
    client._resolve(answer("r"), 25, partition=0, replied_at=20)
    got = waiting.result(0)
    assert (got.replied_at, got.received_at) == (20, 25)
    assert Answer.from_record(codec("answer").decode(answer("s")), 9).replied_at is None


def test_send_prints_every_answer_and_its_summary_when_one_request_is_refused(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One request over the topic's limit stopped the output of every answer after it, and the
    summary line never came (a review). The client's tables are real; its producer a stand-in
    that the broker's verdicts come through."""
    from confluent_kafka import KafkaError, Message

    from services.cli import send as send_module
    from services.core.errors import RecordTooLarge

    client = bare_client((0,))

    class Producer:
        sent: list[str] = []

        values: list[bytes] = []

        def produce(self, _topic: str, value: bytes, key: bytes, **_kwargs: Any) -> None:
            self.sent.append(key.decode())
            self.values.append(value)

        def poll(self, _timeout: float = 0) -> None:
            return None

        def close(self, _timeout: float = 0) -> None:
            return None

        native: list[bytes] = []  # nothing left queued

        def pending(self) -> int:
            return 0

        def flush(self, _timeout: float = 30.0) -> None:  # the broker refuses the second, answers the others
            refused = Message(topic="rdv.requests", key=self.sent[1].encode(), value=self.values[1])
            client._undelivered(refused, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
            for rid in (self.sent[0], *self.sent[2:]):
                client._resolve(answer(rid), 100, partition=0)

    client._producer = Producer()  # type: ignore[assignment]
    rows = _send_through(client, 1.0, 4, tmp_path, monkeypatch)

    with pytest.raises(RecordTooLarge, match=r"^1 of 4 requests failed: the request is too large for rdv\.requests"):
        send_module.send(send_module.SendSettings(bootstrap="localhost:9092", file=str(rows)))
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3 and "3 answers: 3 OK" in err


def test_a_send_refused_by_the_broker_fails_its_own_waiter_not_every_waiter_of_its_request_id() -> None:
    """A delivery failure failed every waiter of the id: a second request under it, refused for
    its size, failed the first, delivered, whose answer was on its way (a review)."""
    from confluent_kafka import KafkaError, Message

    from services.core.errors import RecordTooLarge

    client = bare_client((0,))
    sent: list[bytes] = []

    class Producer:
        def produce(self, _topic: str, value: bytes, **_kwargs: Any) -> None:
            sent.append(value)

        def poll(self, _timeout: float = 0) -> None:
            return None

    client._producer, client._turn = Producer(), itertools.count()  # type: ignore[assignment]
    client._wait_when_full = True
    first = client.submit({"f": 1.0}, request_id="r")
    too_large = client.submit({"f": 1.0}, request_id="r", metadata={"note": "x" * 100_000})  # a retry, larger
    refused = Message(topic="rdv.requests", key=b"r", value=sent[1])  # as a delivery report hands it over
    client._undelivered(refused, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    with pytest.raises(RecordTooLarge):
        too_large.result(0)
    assert not first.done()
    client._resolve(answer("r"), 10, partition=0)
    assert first.result(0).status == "OK" and client._pending == {}


class _Recording:
    """A producer that keeps what it is given, refusing the second record as too large."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def produce(self, _topic: str, value: bytes, **_kwargs: Any) -> None:
        from services.core.errors import RecordTooLarge

        if len(self.sent) == 1:
            raise RecordTooLarge("a record of 1808998 bytes is over the producer's message.max.bytes")
        self.sent.append(value)

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        return 0


def test_score_many_sends_nothing_of_a_batch_with_a_bad_row_and_leaves_no_waiter_whatever_fails() -> None:
    """A bad third row was refused after rows 1 and 2 had gone, their waiters kept for good; and a
    row refused by the producer left the waiters of the rows before it (a review)."""
    from services.client.client import InvalidRequest
    from services.core.errors import RecordTooLarge

    client = bare_client((0,))
    client._producer = _Recording()  # type: ignore[assignment]
    client._turn = itertools.count()
    client._wait_when_full, client.answer_wait_s = False, 1.0
    with pytest.raises(InvalidRequest, match="must be a non-empty string of text"):
        client.score_many([{"f": 1.0}, {"f": 2.0}, {"\ud800": 3.0}])
    assert client._producer.sent == [] and client._pending == {}  # type: ignore[attr-defined]
    # Refused for what the features alone do not say: a row of none (row 1 had gone; a review).
    with pytest.raises(InvalidRequest, match=r"^request carries neither features nor a payload$"):
        client.score_many([{"f": 1.0}, {}])
    with pytest.raises(InvalidRequest, match="metadata must map strings of text to strings of text"):
        client.score_many([{"f": 1.0}], metadata={"k": "\ud800"})
    assert client._producer.sent == [] and client._pending == {}  # type: ignore[attr-defined]
    with pytest.raises(RecordTooLarge):
        client.score_many([{"f": 1.0}, {"f": 2.0}, {"f": 3.0}])
    assert len(client._producer.sent) == 1 and client._pending == {}  # type: ignore[attr-defined]


class _Unsent:
    """A producer that takes every request and reports nothing."""

    def produce(self, _topic: str, _value: bytes, **_kwargs: Any) -> None:
        return None

    def poll(self, _timeout: float = 0) -> None:
        return None

    def pending(self) -> int:
        return 0


def read_once(client: Client, messages: list[Any]) -> None:
    """The client's real reading loop over one batch of reply records (a stand-in consumer)."""

    class OneBatch:
        def consume(self, _n: int, _timeout: float) -> list[Any]:
            client._stop.set()  # the loop ends after this batch
            return messages

    client._consumer = OneBatch()  # type: ignore[assignment]
    client._read_until_stopped()


def test_an_undecodable_answer_fails_the_request_its_key_names_at_once_and_is_counted() -> None:
    """A record on the return address that is no readable Answer (someone else's write, a schema
    the client does not know) was logged and dropped: its request waited out its whole timeout
    for an answer that had come (a review's repro: the waiter of 'r' still pending after it)."""
    from confluent_kafka import Message

    from services.core.errors import RendezvousError

    client = bare_client((0,))
    client._producer, client._turn, client._wait_when_full = _Unsent(), itertools.count(), True  # type: ignore[assignment]
    broken, fine = client.submit({"f": 1.0}, request_id="r"), client.submit({"f": 1.0}, request_id="s")
    read_once(client, [
        Message(topic="rdv.replies", partition=0, key=b"r", value=b"not an answer", timestamp=(1, 5)),
        Message(topic="rdv.replies", partition=0, key=None, value=b"\xc3\x01" + bytes(8), timestamp=(1, 5)),
        Message(topic="rdv.replies", partition=0, key=b"s", value=answer("s"), timestamp=(1, 6)),
    ])
    with pytest.raises(RendezvousError, match=r"answer to request 'r' on rdv\.replies\[0\] could not be read: "
                       "not an Avro Answer") as failed:
        broken.result(0)
    assert type(failed.value).__name__ == "UnreadableAnswer"
    assert fine.result(0).status == "OK" and client._pending == {}
    assert client.undecodable_answers == 2 and client.stopped is None


def test_send_with_the_broker_gone_closes_within_its_wait_and_says_what_was_not_delivered(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's close flushed its producer for its own 10 s whatever --wait-s said (a broker
    gone: send --wait-s 0.5 took 10.5 s), then blamed the rendezvous for requests never delivered.
    The producer is a stand-in that never delivers and records each wait it is given."""
    from services.cli import send as send_module

    client = bare_client((0,))
    waits: list[float] = []

    class NeverDelivers:
        native: list[bytes] = []  # what librdkafka still holds: len() is its queue

        def pending(self) -> int:
            return len(self.native)

        def produce(self, _topic: str, value: bytes, **_kwargs: Any) -> None:
            self.native.append(value)

        def poll(self, _timeout: float = 0) -> None:
            return None

        def flush(self, timeout: float = 30.0) -> None:
            from services.core.errors import DeliveryFailed

            waits.append(timeout)
            raise DeliveryFailed(f"{len(self.native)} records not acknowledged within {timeout:.2g}s")

        def close(self, timeout: float = 10.0) -> int:
            waits.append(timeout)
            return len(self.native)  # what it still held, dropped

    client._producer = NeverDelivers()  # type: ignore[assignment]
    rows = _send_through(client, 0.5, 2, tmp_path, monkeypatch)

    with pytest.raises(AnswerTimeout, match=r"2 of 2 requests got no answer within 0\.5s, 2 of them not even "
                       r"delivered to rdv\.requests: is the broker reachable"):
        send_module.send(send_module.SendSettings(bootstrap="localhost:9092", file=str(rows), wait_s=0.5))
    assert len(waits) == 2 and all(0 <= wait <= 0.5 for wait in waits)  # the flush's, then the close's


def _send_through(client: Client, wait_s: float, count: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make `rendezvous send` use `client` (its producer stood in already, no reader thread nor
    consumer of its own), with answer wait `wait_s`; a file of `count` rows to send."""
    from services.cli import send as send_module

    client._turn, client.answer_wait_s = itertools.count(), wait_s
    client._wait_when_full = True
    client._reader = threading.Thread(target=lambda: None)
    client._reader.start()
    client._consumer = type("Closed", (), {"close": lambda _self: None})()
    monkeypatch.setattr(send_module, "Client", lambda *_args, **_kwargs: client)
    monkeypatch.setattr(send_module, "warn_unknown_features", lambda *_args: None)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(f'{{"mean_radius": {i + 1}}}\n' for i in range(count)))
    return rows


def late_answer(rid: str, created_at: int, score: float) -> bytes:
    return codec("answer").encode({
        "request_id": rid, "status": "OK", "model": "champion", "version": "v1", "score": score, "label": "x",
        "reason": "preferred model answered", "created_at": created_at, "deadline": created_at + 200,
        "answered_at": created_at + 100, "schedule": "s", "schedule_version": 1})


def test_an_id_whose_answer_may_still_come_is_not_reused_with_other_inputs() -> None:
    """A request given up on (timed out), then a new one under its id with other features: the
    late answer of the first was delivered to the second, a confident score of features it did
    not send (a review's repro: f=999 got the score of f=1, created_at and all). An answer cannot
    tell them apart (a retry is answered with the first answer, its created_at included), so the
    second is refused, as the rendezvous refuses it; a retry (same inputs) is not."""
    from services.client.client import InvalidRequest

    client = bare_client((0,))
    client._producer, client._turn, client._wait_when_full = _Unsent(), itertools.count(), True  # type: ignore[assignment]
    given_up = client.submit({"f": 1.0}, request_id="r", created_at=1_700_000_000_000)
    client.abandon("r", given_up)  # as a wait that timed out does
    with pytest.raises(InvalidRequest, match=r"^request_id 'r' is in use by a request with other features or "
                       r"payload that was given up on before its answer came \(it may still come\)"):
        client.submit({"f": 999.0}, request_id="r")
    retry = client.submit({"f": 1.0}, request_id="r", created_at=1_700_000_005_000)
    with pytest.raises(InvalidRequest, match="that is waiting for its answer"):
        client.submit({"f": 2.0}, request_id="r")
    client._resolve(late_answer("r", 1_700_000_000_000, 0.9), 10, partition=0)
    assert retry.result(0).score == 0.9  # the first's answer is the retry's answer too
    assert client._pending == {} and list(client._given_up) == ["r"]
    client._resolve(late_answer("r", 1_700_000_000_000, 0.9), 11, partition=0)  # the retry's own, read by no one
    assert client._given_up == {}  # every answer came: the id may carry other inputs now
    assert not client.submit({"f": 3.0}, request_id="r").done()


def test_score_many_refuses_one_request_id_for_several_rows_before_sending_any() -> None:
    """Every row got the request_id given: the second, with other features, was refused as a reuse
    after the first had gone (a review of 5815629: 'checks every row before it sends any')."""
    from services.client.client import InvalidRequest

    client = bare_client((0,))
    client._producer = _Recording()  # type: ignore[assignment]
    client._turn = itertools.count()
    client._wait_when_full, client.answer_wait_s = False, 1.0
    with pytest.raises(InvalidRequest, match="request_id names one request, not a batch of 2 rows"):
        client.score_many([{"f": 1.0}, {"f": 2.0}], request_id="same")
    assert client._producer.sent == [] and client._pending == {}  # type: ignore[attr-defined]
    assert not client._given_up


def test_an_id_given_up_on_twice_is_kept_until_both_answers_came() -> None:
    """One entry per id: the first of two late answers freed it, and a request with other inputs
    sent under it then took the second answer, a score of the features it did not send (a review)."""
    from services.client.client import InvalidRequest

    client = bare_client((0,))
    client._producer, client._turn, client._wait_when_full = _Unsent(), itertools.count(), True  # type: ignore[assignment]
    for at in (1_700_000_000_000, 1_700_000_001_000):
        client.abandon("r", client.submit({"f": 1.0}, request_id="r", created_at=at))
    client._resolve(late_answer("r", 1_700_000_000_000, 0.9), 10, partition=0)
    with pytest.raises(InvalidRequest, match="was given up on before its answer came"):
        client.submit({"f": 999.0}, request_id="r")
    client._resolve(late_answer("r", 1_700_000_000_000, 0.9), 11, partition=0)
    assert client._given_up == {}
    assert not client.submit({"f": 999.0}, request_id="r").done()


def inputs_of(features: dict[str, float]) -> bytes:
    """The digest the rendezvous writes in a reply's header for a request of `features`."""
    from services.core.request_inputs import digest_of

    return digest_of({"features": features, "payload": None})


def test_an_answer_that_names_other_inputs_than_the_waiter_s_is_not_taken_for_its_answer() -> None:
    """Two clients read one reply partition and each send a request under one id: each took the
    answer that came first, one of them a confident score of features it did not send (a review).
    The reply names the inputs it answers (its header): another's is left, counted, for its client."""
    client = bare_client((0,))
    client._producer, client._turn, client._wait_when_full = _Unsent(), itertools.count(), True  # type: ignore[assignment]
    mine = client.submit({"f": 1.0}, request_id="r")
    client._resolve(late_answer("r", 1_700_000_000_000, 0.1), 10, partition=0, inputs=inputs_of({"f": 999.0}))
    assert not mine.done() and client.foreign_answers == 1 and len(client._pending["r"]) == 1
    client._resolve(late_answer("r", 1_700_000_000_000, 0.9), 11, partition=0, inputs=inputs_of({"f": 1.0}))
    assert mine.result(0).score == 0.9 and client._pending == {} and client.foreign_answers == 1
    unsaid = client.submit({"f": 2.0}, request_id="s")  # an answer from a rendezvous without the header
    client._resolve(late_answer("s", 1_700_000_000_000, 0.4), 12, partition=0)
    assert unsaid.result(0).score == 0.4


def test_another_client_s_answer_does_not_free_an_id_given_up_on() -> None:
    """A request given up on keeps its id from other inputs until its answer came: another
    client's answer under the id is not that answer."""
    from services.client.client import InvalidRequest

    client = bare_client((0,))
    client._producer, client._turn, client._wait_when_full = _Unsent(), itertools.count(), True  # type: ignore[assignment]
    client.abandon("r", client.submit({"f": 1.0}, request_id="r"))
    client._resolve(late_answer("r", 1_700_000_000_000, 0.1), 10, partition=0, inputs=inputs_of({"f": 999.0}))
    with pytest.raises(InvalidRequest, match="was given up on before its answer came"):
        client.submit({"f": 999.0}, request_id="r")
    client._resolve(late_answer("r", 1_700_000_000_000, 0.9), 11, partition=0, inputs=inputs_of({"f": 1.0}))
    assert client._given_up == {}


def test_an_unreadable_record_naming_other_inputs_does_not_fail_the_waiter() -> None:
    """A record under the id that is no answer fails its waiter at once; not when it names other
    inputs than the waiter's (another client's request)."""
    client = bare_client((0,))
    client._producer, client._turn, client._wait_when_full = _Unsent(), itertools.count(), True  # type: ignore[assignment]
    mine = client.submit({"f": 1.0}, request_id="r")
    client._resolve(b"junk", 10, partition=0, key=b"r", inputs=inputs_of({"f": 999.0}))
    assert not mine.done() and client.undecodable_answers == 1
    client._resolve(b"junk", 11, partition=0, key=b"r", inputs=inputs_of({"f": 1.0}))
    assert mine.done() and mine.exception() is not None


class _FlushFails(_Unsent):
    """A producer whose flush reports another thread's record unacknowledged, as librdkafka's
    flush (it waits for the whole queue) does when one partition has no leader."""

    def flush(self, _timeout: float) -> int:
        from services.core.errors import DeliveryFailed

        raise DeliveryFailed("1 records not acknowledged", retriable=True)


def test_score_returns_its_answer_whatever_other_threads_records_wait_for() -> None:
    """score() flushed the shared producer: with another thread's record unacknowledged it waited
    out its whole answer wait and raised DeliveryFailed, though its own answer had come (a review)."""
    client = bare_client((0,))
    client._producer, client._turn, client._wait_when_full = _FlushFails(), itertools.count(), True  # type: ignore[assignment]
    client.answer_wait_s = 30.0
    client._pick_partition = lambda: 0  # type: ignore[method-assign]
    sent = threading.Event()
    original = client._submit

    def submit(*args: Any, **kwargs: Any) -> Future[Answer]:
        future = original(*args, **kwargs)
        sent.set()
        return future

    client._submit = submit  # type: ignore[method-assign]

    def answer_it() -> None:
        sent.wait(30)
        client._resolve(answer(next(iter(client._pending))), 10, partition=0)

    threading.Thread(target=answer_it, daemon=True).start()
    assert client.score({"f": 1.0}).score == 0.5


def test_a_future_cancelled_by_its_caller_leaves_no_waiter() -> None:
    """Cancelled without `abandon`, its waiter stayed until an answer came, which may be never."""
    client = bare_client((0,))
    client._producer, client._turn, client._wait_when_full = _Unsent(), itertools.count(), True  # type: ignore[assignment]
    future = client.submit({"f": 1.0}, request_id="r")
    assert future.cancel()
    assert client._pending == {} and list(client._given_up) == ["r"]


class _BusyConsumer:
    """A consumer whose consume() is held (an answer's callback of the caller's, a rebalance)
    until `release` is set; it records whether it was closed and whether that was under a consume."""

    def __init__(self) -> None:
        self.inside, self.release = threading.Event(), threading.Event()
        self.consuming = False
        self.closed_while_consuming: bool | None = None

    def consume(self, _n: int, _timeout: float) -> list[Any]:
        self.consuming = True
        self.inside.set()
        self.release.wait(30)
        self.consuming = False
        return []

    def close(self) -> None:
        self.closed_while_consuming = self.consuming


class _Closable(_Unsent):
    def close(self, _timeout: float) -> int:
        return 0

    def flush_quietly(self, _timeout: float) -> int:
        return 0


def test_close_leaves_the_consumer_to_a_reader_still_inside_consume(monkeypatch: pytest.MonkeyPatch) -> None:
    """close() waited 5 s for the reader, then closed the consumer under the consume() it was still
    in (a crash in confluent-kafka's binding); the reader now closes it as its loop ends."""
    import services.client.client as module

    monkeypatch.setattr(module, "READER_JOIN_S", 0.1)
    client = bare_client((0,))
    consumer = _BusyConsumer()
    client._producer, client._consumer = _Closable(), consumer  # type: ignore[assignment]
    client._closed_from_reader, client._reader_done = False, False
    client._reader = threading.Thread(target=client._read_answers, daemon=True)
    client._reader.start()
    assert consumer.inside.wait(30)
    assert client.close() == 0
    assert consumer.closed_while_consuming is None  # not closed by close()
    consumer.release.set()
    client._reader.join(30)
    assert consumer.closed_while_consuming is False  # closed by the reader, after its consume


def test_send_prints_the_answers_that_came_when_the_client_stops_midway(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reader stopping during a send: submit raised, and the answers already in were never
    printed, nor the summary; every failure was said to be 'not sent' (a review)."""
    from services.cli import send as send_module
    from services.core.errors import BrokerError

    client = bare_client((0,))

    class AnswersAtOnce(_Closable):
        def produce(self, _topic: str, _value: bytes, key: bytes, **_kwargs: Any) -> None:
            client._resolve(answer(key.decode()), 100, partition=0)  # a fast rendezvous

        def flush(self, _timeout: float = 30.0) -> None:
            return None

    picks = itertools.count()

    def pick() -> int:
        if next(picks) == 2:  # the third request: the reader has just stopped
            client._reader_ended("stopped reading answers: boom", BrokerError("the client stopped reading answers"))
        return 0

    client._producer = AnswersAtOnce()  # type: ignore[assignment]
    client._pick_partition = pick  # type: ignore[method-assign]
    rows = _send_through(client, 1.0, 4, tmp_path, monkeypatch)
    with pytest.raises(BrokerError, match=r"^1 of 4 requests failed: this client stopped reading answers: boom; "
                       r"1 of 4 requests were not sent: the client could send no more$"):
        send_module.send(send_module.SendSettings(bootstrap="localhost:9092", file=str(rows)))
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and "2 answers: 2 OK" in err


def test_a_client_that_fails_to_start_closes_the_kafka_clients_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """The end of the reply partition not read (a broker gone at start): the producer and the
    consumer made before it were left open, their threads and sockets for the process's life."""
    import services.client.client as module
    from services.core.errors import BrokerError

    closed: list[str] = []

    class Made:
        def __init__(self, *_args: Any, **_kwargs: Any) -> None:
            self.kind = type(self).__name__

        def close(self, *_args: Any) -> None:
            closed.append(self.kind)

    class Producer(Made): ...

    class Consumer(Made): ...

    def no_end(_self: Client, _partition: int) -> None:
        raise BrokerError("cannot read the end of rdv.replies[0]")

    monkeypatch.setattr(module, "partition_counts", lambda *_args: {"rdv.requests": 1, "rdv.replies": 1})
    monkeypatch.setattr(module, "Producer", Producer)
    monkeypatch.setattr(module, "Consumer", Consumer)
    monkeypatch.setattr(Client, "_start_reading", no_end)
    with pytest.raises(BrokerError, match="cannot read the end"):
        Client({"bootstrap.servers": "localhost:9092"}, Topics.from_prefix("rdv."))
    assert sorted(closed) == ["Consumer", "Producer"]


def queue_full_client(answer_wait_s: float) -> Client:
    """A sending client whose broker is not there and whose local queue holds one request, taken."""
    from services.core.kafka import Producer
    from services.localkafka.config import free_port

    client = sending_client(answer_wait_s)
    client._producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0,
                                 "queue.buffering.max.messages": 1})
    client.submit({"f": 0.0})  # the one place in the queue
    return client


def test_a_call_meeting_the_local_queue_full_gives_up_when_its_wait_is_out_and_leaves_no_waiter() -> None:
    """With the broker away, a submit waited for room in librdkafka's queue without end: a call
    with a 1 s wait took 57 s (a review)."""
    from services.core.errors import KafkaOperationError

    client = queue_full_client(0.2)
    try:
        with pytest.raises(KafkaOperationError, match="local queue is full"):
            client.score({"f": 1.0})
        assert len(client._pending) == 1  # the queued one's only
    finally:
        client._producer.native.purge()
        client._producer.close(timeout=0)


def test_ascore_meeting_the_local_queue_full_fails_at_once_instead_of_stopping_the_event_loop() -> None:
    """ascore waited for room on the event loop: 10 ticks of a loop in 9.4 s, not 94 (a review)."""
    import asyncio

    from services.core.errors import KafkaOperationError

    client = queue_full_client(30)  # a long wait: only a refusal at once ends the call before it

    async def call() -> None:
        with pytest.raises(KafkaOperationError, match="local queue is full"):
            await client.ascore({"f": 1.0})

    try:
        asyncio.run(call())
        assert len(client._pending) == 1
    finally:
        client._producer.native.purge()
        client._producer.close(timeout=0)


def test_a_junk_record_keyed_by_an_id_given_up_on_does_not_free_that_id() -> None:
    """Counted as its answer, one junk record freed the id: a request with other inputs was then
    sent under it, and the real late answer of the first went to it (a review)."""
    from confluent_kafka import Message

    from services.client.client import InvalidRequest

    client = bare_client((0,))
    client._producer, client._turn, client._wait_when_full = _Unsent(), itertools.count(), True  # type: ignore[assignment]
    client.abandon("x", client.submit({"f": 1.0}, request_id="x"))
    read_once(client, [Message(topic="rdv.replies", partition=0, key=b"x", value=b"junk", timestamp=(1, 5))])
    client._stop.clear()  # read_once ends the reading loop so
    with pytest.raises(InvalidRequest, match="was given up on before its answer came"):
        client.submit({"f": 2.0}, request_id="x")


def test_unreadable_records_on_the_reply_partition_are_logged_once_a_period_with_the_count(
    caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone may write the replies topic: 10,000 junk records made 10,000 warning lines (a review)."""
    from confluent_kafka import Message

    client = bare_client((0,))
    client._producer = _Unsent()  # type: ignore[assignment]
    now = [0.0]
    client._unreadable_said = OncePerPeriod[str](60.0, clock=lambda: now[0])
    junk = [Message(topic="rdv.replies", partition=0, key=None, value=b"junk", timestamp=(1, 5))] * 500
    with caplog.at_level("WARNING", logger="services.client.client"):
        read_once(client, junk)
        now[0] = 61.0
        client._stop.clear()
        read_once(client, junk[:1])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[1].endswith("(repeated 499 times in the last 61 s)")
    assert client.undecodable_answers == 501


def test_a_submitted_request_with_no_answer_fails_once_its_budget_and_answer_wait_are_out() -> None:
    """A future of submit waited on with result(timeout=...) (or not at all) was kept, and waited,
    for good: 2,000 such calls left 2,000 entries (a review)."""
    import time

    client = bare_client((0,))
    client._producer, client._turn, client._wait_when_full = _Unsent(), itertools.count(), True  # type: ignore[assignment]
    client.answer_wait_s = 1.0
    waiting = client.submit({"f": 1.0}, request_id="x", budget_ms=200)
    answered = client.submit({"f": 1.0}, request_id="y", budget_ms=200)
    client._resolve(answer("y"), 10, partition=0)
    client._expire(time.monotonic() + 1.1)  # within 0.2 s + 1 s
    assert not waiting.done() and "x" in client._pending
    client._expire(time.monotonic() + 1.3)
    with pytest.raises(AnswerTimeout, match="no answer within 1s"):
        waiting.result(0)
    assert client._pending == {} and client._expiries == [] and list(client._given_up) == ["x"]
    assert answered.result(0).status == "OK"


def test_a_submit_that_a_close_overtakes_is_refused_as_closed() -> None:
    """close() ran between the submit's check under the lock and its produce: the caller was handed
    a future close had already failed, its request sent by a producer being closed (now let go:
    the produce is refused, and said as the close it is)."""
    from services.client.client import ClosedClient

    client = sending_client(30)
    client._consumer = _BusyConsumer()  # type: ignore[assignment]
    client._reader = threading.Thread(target=lambda: None)
    client._reader.start()
    produce = client._producer.produce

    def closed_first(*args: Any, **kwargs: Any) -> None:
        client.close(timeout_s=0)
        produce(*args, **kwargs)

    client._producer.produce = closed_first  # type: ignore[method-assign]
    with pytest.raises(ClosedClient, match="is closed"):
        client.submit({"f": 1.0})
    assert client._pending == {}


class RegistryAwayFor:
    """The answers codec while the registry cannot be asked about the answer's schema `times` times."""

    def __init__(self, times: int) -> None:
        self.times = times

    def decode(self, value: bytes | None) -> dict[str, Any]:
        from services.core.errors import DecodeFailed

        if self.times:
            self.times -= 1
            raise DecodeFailed("schema registry http://registry: HTTP 503", retriable=True)
        return codec("answer").decode(value)


def test_an_answer_the_registry_cannot_be_asked_about_for_now_is_read_again_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One 503 from the registry failed a request whose answer had come, as unreadable (a review)."""
    from services.client import client as client_module
    from services.client.client import UnreadableAnswer

    clock = [100.0]
    monkeypatch.setattr(client_module.time, "monotonic", lambda: clock[0])
    client = bare_client((0,))
    client._answers = RegistryAwayFor(times=2)  # type: ignore[assignment]
    waiter = Future[Answer]()
    client._pending["r"] = [(waiter, 0, 1)]
    client._resolve(answer("r"), 10, partition=0)
    for _ in range(2):
        assert not waiter.done()
        clock[0] += client_module.READ_AGAIN_EVERY_S
        client._read_due_again(clock[0])
    assert waiter.result(0).status == "OK" and client.undecodable_answers == 0
    # Away for longer than READ_AGAIN_FOR_S: then it is unreadable, as before.
    client._answers = RegistryAwayFor(times=10**6)  # type: ignore[assignment]
    given_up = Future[Answer]()
    client._pending["s"] = [(given_up, 0, 1)]
    client._resolve(answer("s"), 10, partition=0, key=b"s")
    while not given_up.done():
        clock[0] += client_module.READ_AGAIN_EVERY_S
        client._read_due_again(clock[0])
    assert isinstance(given_up.exception(0), UnreadableAnswer) and client.undecodable_answers == 1


def test_a_wait_that_ends_while_its_answer_is_held_says_so_and_junk_past_the_lookups_is_not_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held past the caller's wait, it said 'is the rendezvous running?'; and registry-framed junk
    past the lookups of the second was held too, 10,000 records of any size (a review)."""
    from services.client import client as client_module
    from services.client.client import UnreadableAnswer, Waiting
    from services.core.errors import LookupsSpent

    clock = [100.0]
    monkeypatch.setattr(client_module.time, "monotonic", lambda: clock[0])
    client = bare_client((0,))
    client._answers = RegistryAwayFor(times=10**6)  # type: ignore[assignment]
    waiter = Waiting("r", b"")
    client._pending["r"] = [(waiter, 0, 1)]
    client._resolve(answer("r"), 10, partition=0, key=b"r")
    said = client._no_answer(waiter)
    assert isinstance(said, UnreadableAnswer) and "came, but could not be read" in str(said) and "503" in str(said)

    class Spent:
        def decode(self, value: bytes | None) -> dict[str, Any]:
            raise LookupsSpent("more than 20 unseen schema ids in one second; not looked up")

    client._answers = Spent()  # type: ignore[assignment]
    client._resolve(b"\x00\x00\x00\x00\x09" + b"x" * 1000, 10, partition=0, key=b"junk")
    assert len(client._read_again) == 1 and client.undecodable_answers == 1  # the junk: unreadable at once


def test_two_answers_held_under_one_id_each_keep_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first of two answers held under one id, read again, cleared the reason of both: the
    second caller's wait then asked 'is the rendezvous running?' though its answer was held."""
    from services.client import client as client_module
    from services.client.client import UnreadableAnswer, Waiting

    clock = [100.0]
    monkeypatch.setattr(client_module.time, "monotonic", lambda: clock[0])
    client = bare_client((0,))
    client._producer = type("Acked", (), {"pending": staticmethod(lambda: 0)})()  # type: ignore[assignment]
    client._answers = RegistryAwayFor(times=1)  # type: ignore[assignment]
    first, second = Waiting("r", b""), Waiting("r", b"")
    client._pending["r"] = [(first, 0, 1), (second, 0, 1)]
    client._resolve(answer("r"), 10, partition=0, key=b"r")  # held, read again in a second
    clock[0] += client_module.READ_AGAIN_EVERY_S / 2
    client._answers = RegistryAwayFor(times=10**6)  # type: ignore[assignment]
    client._resolve(answer("r"), 10, partition=0, key=b"r")  # the second, held half a second later
    client._answers = RegistryAwayFor(times=0)  # type: ignore[assignment]
    clock[0] += client_module.READ_AGAIN_EVERY_S / 2
    client._read_due_again(clock[0])  # the first only is due: read, given to a caller
    assert first.done() and not second.done() and len(client._read_again) == 1
    assert isinstance(client._no_answer(second), UnreadableAnswer)
