"""Where a taken-over partition is read from once recovery is done (services/rendezvous/takeover.py)."""

from __future__ import annotations

from typing import cast

from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, TopicPartition

from services.rendezvous.join import Join
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
