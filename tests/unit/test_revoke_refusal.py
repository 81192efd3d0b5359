"""Outputs refused at a rebalance's revoke (the revoke's flush, or its transaction, meets a
`DeliveryFailed`) stop the service, as the same refusal does at any other commit (settled on the
loop, or met by the drain): its warning was all, the service read on, and every later revoke and
its drain committed nothing ("a restart re-reads that work"), a restart nobody was told it needed.
Driven through the real StreamService.run with the stand-ins of test_stream_commit_acks.py."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import Message, TopicPartition

from services.core import service as service_module
from services.core.errors import DeliveryFailed, RefusedForGood
from services.core.service import StreamService, StreamSpec
from tests.unit.test_stream_commit_acks import Broker, Reader, StandInConsumer

REVOKE_AT = 4  # the consume call inside which the group rebalances
PASSES = 12


class Producer:
    """Takes every output until `refusal` is set: the revoke's flush then raises it (its delivery
    reports). Only the revoke's, on the consumer's thread: a commit of the lane's own running then
    would meet it first, a refusal the loop already stops on."""

    def __init__(self) -> None:
        self.refusal: DeliveryFailed | None = None

    def flush(self, _timeout: float) -> None:
        if self.refusal is not None and threading.current_thread() is threading.main_thread():
            refusal, self.refusal = self.refusal, None
            raise refusal

    def poll(self, _timeout: float = 0.0) -> None:
        return None

    def close(self, _timeout: float = 10.0) -> None:
        return None


class RebalancingConsumer(StandInConsumer):
    """Assigns in[0] on the first consume; on the REVOKE_AT-th, revokes it (the refusal comes with
    the revoke's flush) and assigns it again, as librdkafka's callbacks run inside consume; its
    close revokes what it owns, as the real one does."""

    def __init__(self, config: dict[str, Any], broker: Broker, producer: Producer,
                 refusal: DeliveryFailed) -> None:
        super().__init__(config, broker)
        self.producer, self.refusal = producer, refusal
        self.calls = 0
        self._on_revoke: Any = None
        self.next_offset = 0

    def subscribe(self, _topics: list[str], on_assign: Any = None, on_revoke: Any = None, **_callbacks: Any) -> None:
        self._on_assign, self._on_revoke = on_assign, on_revoke

    def consume(self, *args: Any) -> list[Message]:
        self.calls += 1
        if self.calls == REVOKE_AT:
            self.producer.refusal = self.refusal
            self._on_revoke(self, list(self.assigned))
            self.assigned = []
            self._on_assign(self, [TopicPartition("in", 0)])
        super().consume(*args)  # serves commit answers; assigns in[0] on the first call
        records = [Message(topic="in", partition=0, offset=o, value=b"r") for o in range(self.next_offset,
                                                                                          self.next_offset + 5)]
        self.next_offset += 5
        return records

    def close(self) -> None:
        if self.assigned:
            self._on_revoke(self, list(self.assigned))


@pytest.mark.parametrize("refusal", [
    RefusedForGood("not authorized to write topic out"),
    DeliveryFailed("delivery to out failed: Broker: Unknown producer id", retriable=False),
], ids=["refused-for-good", "not-delivered"])
def test_outputs_refused_at_a_revoke_stop_the_service_with_the_reason(
    refusal: DeliveryFailed, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broker, producer = Broker(failures=0), Producer()
    consumers: list[RebalancingConsumer] = []

    def consumer(config: dict[str, Any]) -> RebalancingConsumer:
        consumers.append(RebalancingConsumer(config, broker, producer, refusal))
        return consumers[-1]

    monkeypatch.setattr(service_module, "Consumer", consumer)
    monkeypatch.setattr(service_module, "Producer", lambda *_args, **_kwargs: producer)
    monkeypatch.setattr(service_module, "topic_limits", lambda *_args: {})
    monkeypatch.setattr(service_module, "wait_for_broker", lambda *_args: None)
    monkeypatch.setattr(service_module, "tune_gc", lambda: None)
    stop = threading.Event()
    spec = StreamSpec(name="svc", config={}, subscription=["in"], group_id="g", processing="at-least-once",
                      commit_interval_ms=0, max_wait_s=0.0)
    service = StreamService(spec, Reader(PASSES, stop))

    with caplog.at_level("WARNING", logger=service_module.log.name), pytest.raises(type(refusal)) as stopped:
        service.run(stop)

    assert str(stopped.value) == (f"{refusal.message} (outputs refused at a rebalance's revoke of in[0]: nothing "
                                  "is committed after them; a restart re-reads that work)")
    assert consumers[0].calls == REVOKE_AT, "the loop stopped right after the rebalance's consume"
    # Nothing of the refused work is committed after it: not by the loop, nor by the close's revoke.
    assert all(offsets[0] <= 5 * (REVOKE_AT - 1) for offsets in broker.async_commits)
    assert broker.committed.get(("in", 0), 0) <= 5 * (REVOKE_AT - 1)
    assert any("nothing committed: outputs since the last commit were refused" in r.getMessage()
               for r in caplog.records)
