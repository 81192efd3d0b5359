"""Outputs the producer gave up on for a passing reason (here: no broker answers within the
record's message.timeout.ms, as in a long outage) void the work since the last commit: at least
once, the commit says so (TransactionAborted: re-read) instead of committing offsets past them
or stopping the service. No broker is needed: the producer points at a closed port."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from services.core.commits import AtLeastOnce, TransactionAborted
from services.core.errors import (
    DeliveryFailed,
    KafkaOperationError,
    OutputsLost,
    RecordTooLarge,
    RefusedForGood,
    TopicGone,
)
from services.core.health import BrokerHealth
from services.core.kafka import OUTPUTS_CHECKED_PROPAGATION_MS, Producer, outputs_checked_at_start
from services.localkafka.config import free_port


def test_outputs_timed_out_in_an_outage_make_at_least_once_re_read() -> None:
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "message.timeout.ms": 300,
                         "log_level": 0})
    producer.produce("t", b"lost", partition=0)
    producer.produce("t", b"lost too", partition=0)
    committer = AtLeastOnce(producer, None, lambda _what: None, BrokerHealth(), retry_s=10)  # type: ignore[arg-type]
    with pytest.raises(TransactionAborted, match="re-reading from the committed offsets") as aborted:
        committer.commit([], lambda: False)
    assert "Local: Message timed out" in str(aborted.value) and "(and 1 more)" in str(aborted.value)
    producer.produce("t", b"after", partition=0)  # the failures were taken: nothing raised here


def test_a_transient_failure_is_outputs_lost_and_a_lasting_one_is_not() -> None:
    from confluent_kafka import KafkaError

    from services.core.kafka.error_kinds import delivery_failure

    assert isinstance(delivery_failure(KafkaError(KafkaError._MSG_TIMED_OUT), "t"), OutputsLost)
    assert isinstance(delivery_failure(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), "t"), RefusedForGood)
    assert isinstance(delivery_failure(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), "t"), RefusedForGood)
    # Taken back unsent from a client replaced for being stuck (Producer._replace_stuck): redo the work.
    assert isinstance(delivery_failure(KafkaError(KafkaError._PURGE_QUEUE), "t"), OutputsLost)
    other = delivery_failure(KafkaError(KafkaError._INVALID_ARG), "t")  # neither: raised as it is
    assert not isinstance(other, (OutputsLost, RefusedForGood))


def test_records_to_a_topic_deleted_while_serving_are_refused_for_good_in_one_line() -> None:
    """librdkafka's verdict once the topic left the metadata: the worker's last line was its
    'Local: Unknown partition' (and a retriable code would have re-read the work, in vain)."""
    from confluent_kafka import KafkaError

    from services.core.kafka.error_kinds import delivery_failure

    gone = delivery_failure(KafkaError(KafkaError._UNKNOWN_PARTITION), "rdv.scores", 3)
    assert isinstance(gone, TopicGone) and not gone.retriable
    assert str(gone).startswith("rdv.scores has no partition 3 (deleted, or made again with fewer partitions, "
                                "while serving?)")
    gone = delivery_failure(KafkaError(KafkaError._UNKNOWN_TOPIC), "rdv.scores", 3)
    assert str(gone).startswith("rdv.scores does not exist (deleted while serving?): if it is one of the "
                                "deployment's, `rendezvous topics create` makes it again")


def test_outputs_checked_at_start_are_failed_a_second_after_they_go_unless_configured() -> None:
    assert outputs_checked_at_start({}) == {"topic.metadata.propagation.max.ms": OUTPUTS_CHECKED_PROPAGATION_MS}
    assert outputs_checked_at_start({"topic.metadata.propagation.max.ms": "30000"}) == {}


@pytest.mark.parametrize("size", [900, 936, 960, 980, 1000])
def test_check_size_refuses_whatever_the_client_would(size: int) -> None:
    """The early check (before a record is held in a commit or queued as a reply) refuses at least
    every record librdkafka refuses, its framing included: a record it let through and the client
    then refused used to void a transaction on the commit thread."""
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "message.max.bytes": 1000, "log_level": 0})
    value, key = b"x" * size, b"k" * 10
    try:
        producer.produce("t", value, key=key, partition=0)
        client_refused = False
    except RecordTooLarge:
        client_refused = True
    try:
        producer.check_size(value, key)
        checked_refused = False
    except RecordTooLarge:
        checked_refused = True
    assert checked_refused or not client_refused
    assert size > 900 or not checked_refused  # the margin stays small


def test_a_record_over_its_topics_own_limit_is_refused_before_it_is_queued() -> None:
    """The broker refuses, for good, a batch over the topic's max.message.bytes, while librdkafka
    checks only its own limit: told the topic's, the producer refuses such a record at once (the
    caller can still write a smaller one) and keeps its batches under it."""
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0},
                        topic_limits={"small": 2_000, "large": 5_000_000})
    with pytest.raises(RecordTooLarge, match="over what small takes"):
        producer.produce("small", b"x" * 2_000, partition=0)
    with pytest.raises(RecordTooLarge, match="over what small takes"):
        producer.check_size(b"x" * 2_000, topic="small")
    producer.check_size(b"x" * 2_000)  # within the producer's own limit: only the topic refuses it
    producer.produce("small", b"x" * 1_800, partition=0)
    producer.produce("other", b"x" * 2_000, partition=0)
    with pytest.raises(RecordTooLarge, match=r"producer.s message\.max\.bytes"):  # the lower of the two
        producer.check_size(b"x" * 1_000_000, topic="large")
    assert int(producer._config["batch.size"]) <= 2_000


def test_a_full_local_queue_is_refused_at_once_when_the_caller_must_not_wait() -> None:
    """The gateway submits on its event loop: waiting there for room (the broker taking no
    records) froze every other call, health checks and the drain included."""
    from services.core.errors import KafkaOperationError

    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0,
                         "queue.buffering.max.messages": 1})
    producer.produce("t", b"first", partition=0)  # queued: no broker will take it
    with pytest.raises(KafkaOperationError, match="local queue is full"):
        producer.produce("t", b"second", partition=0, wait_when_full=False)


def test_a_request_too_large_for_kafka_is_a_413_not_a_retry() -> None:
    from services.gateway.errors import status_of

    status = status_of(RecordTooLarge("a record of 1200119 bytes for rdv.requests is over ..."))
    assert (status.http, status.reason, status.retry) == (413, "too_large", False)


@pytest.mark.parametrize(("timeout", "said"), [(0.2984363649993611, "0.3s"), (10.5, "10.5s"), (120.0, "120s")])
def test_a_flush_that_runs_out_says_its_timeout_as_written(timeout: float, said: str) -> None:
    """`{timeout:.2g}` (two significant digits) said 120 s as "1.2e+02s" and 10.5 s as "10s"
    (a review of 5815629)."""
    from services.core.errors import DeliveryFailed

    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0})

    class Stuck:
        def flush(self, _timeout: float) -> int:
            return 3  # records still queued

    producer._producer = Stuck()  # type: ignore[assignment]
    with pytest.raises(DeliveryFailed, match=rf"3 records not acknowledged within {re.escape(said)}$"):
        producer.flush(timeout)


def test_only_a_timeout_of_the_current_clients_record_marks_the_producer_stuck() -> None:
    """Records of a replaced client that time out later (in flight when it was replaced) must
    not replace the new client too: one replacement per client, not one per record (a missing
    topic's records, timing out one by one, replaced the client 50 times in 5 s when an
    undelivered record's timestamp, which it does not have, was asked which client it was of)."""
    from confluent_kafka import KafkaError, Message

    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0})
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT)
    of_the_first_client = producer._report
    producer.renew()
    of_the_first_client(timed_out, Message(topic="t", value=b"old"))
    assert not producer.timed_out
    producer._report(timed_out, Message(topic="t", value=b"new"))
    assert producer.timed_out


def test_a_record_taken_back_from_a_replaced_client_is_sent_again_once_then_fails() -> None:
    """Each send starts a new message.timeout.ms: with the broker away for long, client after
    client would be replaced and a record sent again for ever, never failing (a gateway's caller
    waits for that failure). Sent again once; taken back a second time, it fails, reported once."""
    from services.core.errors import DeliveryFailed

    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "message.timeout.ms": 600_000,
                         "log_level": 0}, delivered=True)
    done: list[str] = []
    producer.produce("t", b"r", partition=0, on_done=lambda: done.append("r"))
    for _replacement in range(2):
        producer._stuck = True  # as a timeout of the current client's record would have set
        producer.poll(0)  # replaced: the old client's queue is taken back
        producer.poll(0)  # and served: the record is sent again on the new client, or (2nd time) fails
    assert done == ["r"] and producer.pending() == 0
    with pytest.raises(DeliveryFailed, match="Purged in queue"):
        producer.flush(1)


def test_close_lets_the_client_go_and_says_what_it_dropped() -> None:
    """close() only flushed: the client's threads and sockets stayed until the garbage collector
    found the producer (a Client and its producer refer to each other), for as long as it was kept."""
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0})
    producer.produce("t", b"never delivered", partition=0)
    assert producer.close(timeout=0.1) == 1
    with pytest.raises(RuntimeError, match="closed"):  # kept referenced here: destroyed by the close
        producer.native.poll(0)
    producer.poll(0)  # nothing to serve: no error
    with pytest.raises(KafkaOperationError, match="the producer is closed"):
        producer.produce("t", b"after", partition=0)


def test_what_close_drops_is_not_reported_and_a_closed_producer_stays_closed() -> None:
    """A purged record's report ran its receipt: a rendezvous' reply dropped at close was marked
    sent, and its request committed at the revoke without it. After close, a stuck producer's
    produce made a new client nothing closed, and flush and a second close raised (a review)."""
    receipts: list[str] = []
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0}, delivered=True)
    producer.produce("t", b"a reply", partition=0, on_done=lambda: receipts.append("done"))
    assert producer.close(timeout=0.1) == 1
    assert receipts == []
    producer._stuck = True  # a record of it timed out before the close: a produce replaced the client
    with pytest.raises(KafkaOperationError, match="the producer is closed"):
        producer.produce("t", b"after", partition=0)
    with pytest.raises(RuntimeError, match="closed"):
        producer.native.poll(0)  # still the client the close destroyed: no new one was made
    with pytest.raises(DeliveryFailed, match="1 records were dropped undelivered when the producer was closed"):
        producer.flush(1.0)  # nothing pending, but it did not deliver everything
    assert producer.flush_quietly(1.0) == 0 and producer.close() == 0



class _Watched:
    """A producer's client as it uses it, saying when `method` is first called."""

    def __init__(self, inner: Any, method: str) -> None:
        self.inner, self.method = inner, method
        self.called = threading.Event()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if name != self.method:
            return value

        def watched(*args: Any, **kwargs: Any) -> Any:
            self.called.set()
            return value(*args, **kwargs)

        return watched

    def __len__(self) -> int:
        return len(self.inner)


def _closed_while(call: Callable[[Producer], None], method: str, producer: Producer) -> BaseException | None:
    """What `call(producer)` on another thread ends with when the producer is closed once that call
    reached the client's `method`."""
    watched = producer._producer = _Watched(producer._producer, method)  # type: ignore[assignment]
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call(producer)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - what it raised is the finding
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert watched.called.wait(30)
    producer.close(timeout=0.1)
    thread.join(60)
    assert len(outcome) == 1
    return outcome[0]


def test_a_produce_waiting_for_room_when_the_producer_closes_is_refused() -> None:
    """Its wait served the closed client (a RuntimeError out of the handler) or, in one run of five,
    queued the record in a client nothing closed (a review of the mend)."""
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0,
                         "queue.buffering.max.messages": 1})
    producer.produce("t", b"fills the queue", partition=0)
    ended = _closed_while(lambda p: p.produce("t", b"waits for room", partition=0, give_up_at=time.monotonic() + 60),
                          "poll", producer)
    assert isinstance(ended, KafkaOperationError), ended


def test_a_flush_running_when_another_thread_closes_says_what_was_dropped() -> None:
    """Past its check before the close, it saw nothing left once the close purged, no failure (the
    purged reports are not reported), and returned as if all were delivered (a review of the mend)."""
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0})
    producer.produce("t", b"never delivered", partition=0)
    ended = _closed_while(lambda p: p.flush(30.0), "flush", producer)
    assert isinstance(ended, DeliveryFailed), ended
    assert "1 records were dropped undelivered when the producer was closed" in str(ended)


class _LaggingClient:
    """A client whose partition counts lag the cluster's until it asks for the cluster's metadata
    (or fails to, with `failure`)."""

    def __init__(self, cluster: dict[str, int], failure: Exception | None = None) -> None:
        self.cluster, self.known, self.failure = cluster, dict(cluster), failure
        self.asked, self.written = 0, []  # type: ignore[var-annotated]

    def produce(self, topic: str, _value: Any, _key: Any = None, partition: int = -1, **_kwargs: Any) -> None:
        from confluent_kafka import KafkaError, KafkaException

        if not self.known.get(topic):
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC))
        if partition >= self.known[topic]:
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))
        self.written.append((topic, partition))

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        from types import SimpleNamespace

        self.asked += 1
        if self.failure is not None:
            raise self.failure
        told = self.cluster if topic is None else {topic: self.cluster.get(topic, 0)}  # the client keeps it
        told = {name: count for name, count in told.items() if count}
        self.known.update(told)
        return SimpleNamespace(topics={name: SimpleNamespace(error=None, partitions=dict.fromkeys(range(count)))
                                       for name, count in told.items()})


def _lagging(cluster: dict[str, int], failure: Exception | None = None) -> tuple[Producer, _LaggingClient]:
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0})
    client = producer._producer = _LaggingClient(cluster, failure)  # type: ignore[assignment]
    return producer, client


@pytest.mark.parametrize("failure", [None, RuntimeError("Handle has been closed")])
def test_a_partition_the_cluster_does_not_have_is_asked_about_once_a_second_and_then_gone(
    failure: Exception | None,
) -> None:
    """Each produce to it asked the broker for 5 s, the commit lane's lock held meanwhile; and a
    client closed on another thread meanwhile let a RuntimeError out of produce (a review)."""
    producer, client = _lagging({"t": 2}, failure)
    for _ in range(3):
        with pytest.raises(TopicGone, match=r"^t has no partition 2 "):
            producer.produce("t", b"v", partition=2)
    assert client.asked == 1


def test_topics_grown_together_are_all_written_after_one_question() -> None:
    """Asked about one topic at a time, once a second, the second topic grown within that second was
    taken for gone, and the service stopped (a review)."""
    producer, client = _lagging({"answers": 4, "log": 4})
    client.cluster = {"answers": 6, "log": 6}
    producer.produce("answers", b"v", partition=4)
    producer.produce("log", b"v", partition=5)
    assert client.written == [("answers", 4), ("log", 5)] and client.asked == 1


def test_a_topic_deleted_and_made_again_is_written_after_one_question() -> None:
    """Taken for gone until librdkafka's next metadata refresh, 18 replies to a return address made
    again were refused after it was back (a review)."""
    producer, client = _lagging({"replies": 2})
    client.known = {}  # the client saw it deleted
    producer.produce("replies", b"v")
    producer.produce("replies", b"v", partition=1)
    assert client.written == [("replies", -1), ("replies", 1)] and client.asked == 1
    with pytest.raises(TopicGone, match=r"^gone does not exist "):
        producer.produce("gone", b"v")


@pytest.mark.parametrize("code", ["_STATE", "_FATAL", "_FENCED"])
def test_a_produce_refused_for_the_producers_state_says_so(code: str) -> None:
    """Not the record's fault: a caller must not dead-letter it (services/core/commits.py). As a
    real producer raises them: a fenced one's produce() says _FATAL, its fatal() flag unset (a review)."""
    from confluent_kafka import KafkaError, KafkaException

    from services.core.errors import ProducerInErrorState

    class Refusing:
        def produce(self, *_args: Any, **_kwargs: Any) -> None:
            raise KafkaException(KafkaError(getattr(KafkaError, code)))

    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0})
    producer._producer = Refusing()  # type: ignore[assignment]
    with pytest.raises(ProducerInErrorState, match=r"^produce to t failed: "):
        producer.produce("t", b"v", partition=0)
