"""Where a taken-over partition is read from once recovery is done, and how recovery waits for a
transaction still open on its outputs (services/rendezvous/takeover.py, recovery.py)."""

from __future__ import annotations

import logging
from typing import cast

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, TopicPartition

from services.core.topic_range import PartitionSpan
from services.rendezvous import takeover as takeover_module
from services.rendezvous.join import Join
from services.rendezvous.recovery import OpenTransaction, _refuse_open_transactions
from services.rendezvous.settings import RendezvousSettings
from services.rendezvous.takeover import Takeover


def takeover(start_from: str) -> Takeover:
    # Choosing the starts reads only the settings; the join is what recovery fills.
    return Takeover(RendezvousSettings(start_from=start_from), cast(Join, None))


def starts(start_from: str, committed: list[TopicPartition]) -> list[tuple[str, int, int, int | None]]:
    return [(tp.topic, tp.partition, tp.offset, tp.leader_epoch) for tp in takeover(start_from)._starts(committed)]


def test_a_committed_partition_starts_at_its_committed_offset_with_its_leader_epoch() -> None:
    with_epoch = TopicPartition("rdv.requests", 0, 1200, leader_epoch=3)
    without = TopicPartition("rdv.scores", 0, 3400)
    assert starts("earliest", [with_epoch, without]) == [("rdv.requests", 0, 1200, 3), ("rdv.scores", 0, 3400, None)]
    assert starts("latest", [with_epoch, without]) == [("rdv.requests", 0, 1200, 3), ("rdv.scores", 0, 3400, None)]


def test_an_uncommitted_partition_starts_at_the_beginning_for_earliest_and_is_left_alone_for_latest() -> None:
    never = TopicPartition("rdv.requests", 1, OFFSET_INVALID)
    assert starts("earliest", [never]) == [("rdv.requests", 1, OFFSET_BEGINNING, None)]
    # "latest" is the end the consumer found when the partition was assigned: the end now would
    # skip whatever arrived during recovery.
    assert starts("latest", [never]) == []


def test_recovery_refuses_to_scan_a_partition_whose_stable_end_is_short_of_what_was_written() -> None:
    spans = {"rdv.answers": [PartitionSpan(0, 10, 20), PartitionSpan(1, 5, 5)], "rdv.log": [PartitionSpan(0, 3, 9)]}
    # Everything written is stable (or a partition was not asked: nothing is re-read there).
    _refuse_open_transactions({("rdv.answers", 0): 20, ("rdv.answers", 1): 5, ("rdv.log", 0): 9}, spans)
    _refuse_open_transactions({}, spans)
    with pytest.raises(OpenTransaction, match=r"rdv\.log\[0\] \(stable up to offset 9, written up to 12\)"):
        _refuse_open_transactions({("rdv.answers", 0): 20, ("rdv.log", 0): 12}, spans)


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
            waiting._wait_for_transaction(OpenTransaction("a transaction is still open"))
        warnings += [round(clock[0] - 1000.0, 1) for r in caplog.records if r.levelno == logging.WARNING]
        delays.append(round(waiting._next_try - clock[0], 1))
        clock[0] = waiting._next_try
    soon = int(takeover_module.OPEN_TXN_SOON_S / takeover_module.OPEN_TXN_RETRY_S)
    assert delays[:soon] == [takeover_module.OPEN_TXN_RETRY_S] * soon
    assert set(delays[soon:]) == {takeover_module.RETRY_S}
    assert warnings == [5.0, 10.0, 15.0]
