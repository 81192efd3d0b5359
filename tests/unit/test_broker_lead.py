"""The rendezvous asks for a quiet partition's clock record by the broker's time (clock.py
`BrokerLead`), whichever way this host's clock is off from the broker's."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Message

from services.core.control_records import CLOCK_HEADER
from services.rendezvous import service as service_module
from services.rendezvous.clock import LEAD_WINDOW, BrokerLead
from services.rendezvous.service import Rendezvous
from services.rendezvous.settings import RendezvousSettings
from tests.unit.test_join import T0, request

BUDGET_MS = 200


def test_the_lead_is_the_least_delayed_of_the_recent_reads() -> None:
    lead = BrokerLead()
    assert lead.ms == 0  # nothing read yet: taken as in step
    for log_time, wall in [(1_000, 1_020), (2_000, 1_503), (3_000, 2_510)]:  # ahead 500, each read 3-20 ms later
        lead.note(log_time, wall)
    assert lead.ms == 497
    for _ in range(LEAD_WINDOW):  # a backlog read long after its appends: the old estimate ages out
        lead.note(3_000, 60_000)
    assert lead.ms == 3_000 - 60_000


@pytest.mark.parametrize("host_ahead_ms", [-1_500, 0, 1_000])
def test_a_quiet_partitions_clock_record_is_asked_for_when_the_brokers_time_passes_its_timer(
    monkeypatch: pytest.MonkeyPatch, host_ahead_ms: int,
) -> None:
    """This host 1.5 s behind the broker asked 1.5 s late, and every TIMEOUT came that late; 1 s
    ahead, it asked at once and then every 0.5 s until the broker's time reached the timer (a review)."""
    broker = [T0]
    monkeypatch.setattr(service_module, "now_ms", lambda: broker[0] + host_ahead_ms)
    service = Rendezvous(RendezvousSettings(models=("champion",)))
    asked: list[Any] = []
    service._fast = SimpleNamespace(produce=lambda *_a, **kw: asked.append(kw["partition"]))  # type: ignore[assignment]
    service.join.on_request(request("r", at=T0, budget=BUDGET_MS))
    clock_record = Message(topic=service.topics.scores, partition=0, offset=0, value=None,
                           headers=[(CLOCK_HEADER, b"")], timestamp=(TIMESTAMP_LOG_APPEND_TIME, T0))
    broker[0] = T0 + 2  # read 2 ms after its append
    service.on_batch([clock_record])

    broker[0] = T0 + BUDGET_MS - 10
    service._ask_for_clock_records()
    assert asked == [] and service.next_wakeup() > 0.01
    broker[0] = T0 + BUDGET_MS + service.settings.clock_record_delay_ms + 2
    assert service.next_wakeup() == 0.05  # overdue: one is on its way
    service._ask_for_clock_records()
    assert asked == [0]
