"""The rendezvous asks for a quiet partition's clock record by its broker's time (clock.py
`BrokerLead`), whichever way this host's clock is off from the broker's, and never later than
before for a record read behind a backlog."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Message

from services.core.control_records import CLOCK_HEADER
from services.rendezvous import service as service_module
from services.rendezvous.clock import BrokerLead
from services.rendezvous.service import Rendezvous
from services.rendezvous.settings import RendezvousSettings
from tests.unit.test_join import T0, Collected, request

BUDGET_MS = 200


def test_the_lead_is_what_the_record_proves_and_zero_where_it_allows() -> None:
    lead = BrokerLead("me")
    lead.note(0, log_time=2_502, read_ms=1_004, header=lead.header(1_000))  # this host 1.5 s behind
    assert lead.of(0) == 1_498
    lead.note(1, log_time=2_001, read_ms=3_003, header=lead.header(3_000))  # 1 s ahead
    assert lead.of(1) == -999
    lead.note(2, log_time=5_001, read_ms=25_000, header=lead.header(5_000))  # in step, read 20 s late (a backlog)
    assert lead.of(2) == 0
    for header in (b"", BrokerLead("other").header(0), b"x me", None):  # an older instance's, another's, junk
        lead.note(3, log_time=9_000, read_ms=1_000, header=header)
    assert lead.of(3) == 0
    lead.note(0, log_time=2_000, read_ms=1_000, header=lead.header(3_000))  # the host's clock stepped meanwhile
    assert lead.of(0) == 1_498


@pytest.mark.parametrize(("host_ahead_ms", "backlog"), [(-1_500, False), (0, False), (1_000, False), (0, True)])
def test_a_quiet_partitions_clock_record_is_asked_for_when_its_brokers_time_passes_the_timer(
    monkeypatch: pytest.MonkeyPatch, host_ahead_ms: int, backlog: bool,
) -> None:
    """This host 1.5 s behind the broker asked 1.5 s late, and every TIMEOUT came that late; 1 s
    ahead, it asked at once and then every 0.5 s until the broker's time reached the timer (a
    review). The first timer goes by this host's clock; its clock record teaches the lead. With
    another partition read 20 s behind (`backlog`), a lead taken from every record read asked
    20 s late (the review of a first mend).

    Simulated a millisecond at a time: a clock record asked for is appended 1 ms later and read
    back 1 ms after that."""
    broker = [T0]
    monkeypatch.setattr(service_module, "now_ms", lambda: broker[0] + host_ahead_ms)
    service = Rendezvous(RendezvousSettings(models=("champion",)))
    service.join.outputs = answers = Collected()
    asked: list[tuple[int, bytes]] = []  # (broker time, header value)
    service._fast = SimpleNamespace(  # type: ignore[assignment]
        produce=lambda *_a, **kw: asked.append((broker[0], dict(kw["headers"])[CLOCK_HEADER])))
    second_at = T0 + 3_000
    service.join.on_request(request("first", at=T0, budget=BUDGET_MS))
    answered_at: dict[str, int] = {}
    while broker[0] < second_at + 2_000:
        broker[0] += 1
        if broker[0] == second_at:
            service.join.on_request(request("second", at=second_at, budget=BUDGET_MS))
            asks_before_second = len(asked)
        read = [(0, at + 1, header) for at, header in asked if at + 2 == broker[0]]
        if backlog:  # another instance's clock records, written 20 s ago
            read.append((1, broker[0] - 20_000, b""))
        service.on_batch([Message(topic=service.topics.scores, partition=partition, offset=0, value=None,
                                  headers=[(CLOCK_HEADER, header)], timestamp=(TIMESTAMP_LOG_APPEND_TIME, at))
                          for partition, at, header in read])
        for answer in answers.answers:
            answered_at.setdefault(answer["request_id"], broker[0])
        service._ask_for_clock_records()
    deadline = second_at + BUDGET_MS
    assert deadline < answered_at["second"] <= deadline + service.settings.clock_record_delay_ms + 3
    assert len(asked) - asks_before_second == 2  # one for its deadline, one for its comparison record's linger
