"""A service waiting for the transaction coordinator stops when asked to (core/commits.py).

Found in a fault test: a rendezvous replacing its producer while the broker was gone for good
ignored SIGTERM for 1 h 40 min, retrying `init_transactions` without end. The clients here are
real librdkafka clients aimed at a port nothing listens on: every try times out, as it does
while the broker is away."""

from __future__ import annotations

import pytest

from services.core.commits import ExactlyOnce
from services.core.errors import ConfigError, KafkaOperationError
from services.core.health import BrokerHealth
from services.core.kafka import Consumer, Producer
from services.localkafka.config import free_port


def test_init_waits_for_the_coordinator_until_the_service_is_stopping() -> None:
    nowhere = {"bootstrap.servers": f"127.0.0.1:{free_port()}", "socket.connection.setup.timeout.ms": 1000}
    producer = Producer({**nowhere, "transactional.id": "stopping-test"})
    consumer = Consumer({**nowhere, "group.id": "stopping-test"})
    waits: list[str] = []
    try:
        committer = ExactlyOnce(producer, consumer, waits.append, BrokerHealth(), retry_s=0.3,
                                stopping=lambda: len(waits) >= 2)
        with pytest.raises(KafkaOperationError, match="stopped while waiting for the transaction coordinator") as err:
            committer.init()
    finally:
        consumer.close()
        producer.close()
    assert err.value.retriable and not isinstance(err.value, ConfigError)
    assert len(waits) == 2 and all("waiting for the transaction coordinator" in w for w in waits)


class _AwayNative:
    """A transactional client whose every abort times out, as while the broker is away."""

    def __init__(self) -> None:
        self.aborts = 0

    def abort_transaction(self, _timeout: float) -> None:
        from confluent_kafka import KafkaError, KafkaException

        self.aborts += 1
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "Timed out waiting for operation", retriable=True))


def test_an_abort_while_stopping_is_tried_once_and_no_producer_is_made_for_it() -> None:
    """A SIGTERM in a broker outage: the drain's abort tried 3 times 5 s, then a new producer
    waited 5 s for its init, twice: the rendezvous ended 44 s after the signal (a review)."""
    from types import SimpleNamespace

    from services.core.commits import AbortFailed

    native = _AwayNative()
    renewed: list[bool] = []
    txn = SimpleNamespace(native=native, renew=lambda: renewed.append(True))
    waits: list[str] = []
    committer = ExactlyOnce(txn, None, waits.append, BrokerHealth(), retry_s=0.01,  # type: ignore[arg-type]
                            stopping=lambda: True)
    with pytest.raises(AbortFailed, match="stopped while aborting the transaction"):
        committer.abort()
    assert native.aborts == 1 and renewed == [] and waits == []
    with pytest.raises(AbortFailed, match="stopped with the transaction open"):
        committer._replace_producer("send_offsets_to_transaction is wedged")
    assert renewed == []


def test_the_producers_close_after_a_drain_delivers_for_what_the_drain_has_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10 s after a drain that used its time waiting for a broker away kept a SIGTERM past a
    chart's 30 s grace (a review)."""
    from services.core import service as service_module
    from services.core.service import CLOSE_S, StreamService

    clock = [100.0]
    monkeypatch.setattr(service_module.time, "monotonic", lambda: clock[0])
    service = StreamService.__new__(StreamService)
    service._draining_until = None
    assert service._close_within_s() == CLOSE_S  # stopped by an error: no drain ran
    service._draining_until = 103.0
    assert service._close_within_s() == 3.0
    clock[0] = 200.0
    assert service._close_within_s() == 1.0


def test_a_timed_out_output_while_stopping_is_aborted_not_left_open_for_a_new_producer() -> None:
    """Stopping, an output timed out: the producer's replacement (refused while stopping) came
    before the abort, so no abort was tried though the broker answered (a review)."""
    from types import SimpleNamespace

    from confluent_kafka import KafkaError

    from services.core.commits import TransactionAborted

    calls: list[str] = []
    native = SimpleNamespace(abort_transaction=lambda _t: calls.append("abort"),
                             begin_transaction=lambda: calls.append("begin"))
    txn = SimpleNamespace(native=native, timed_out=True, poll=lambda _t: None, lasting_failure=lambda: None,
                          discard_failures=lambda: None, renew=lambda: calls.append("renew"))
    committer = ExactlyOnce(txn, None, lambda _w: None, BrokerHealth(), retry_s=0.01,  # type: ignore[arg-type]
                            stopping=lambda: True)
    failed = committer._aborted(KafkaError(KafkaError._TIMED_OUT, "commit timed out", txn_requires_abort=True))
    assert isinstance(failed, TransactionAborted) and calls == ["abort", "begin"]
