"""The decoy's commit order (services/decoy/service.py): records are written as they come, and
their offsets are finished only once the skeleton asks before a commit and the file is fsynced."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import Message

from services.decoy.archive import ArchiveWriter, _readable_records
from services.decoy.service import Decoy
from services.decoy.settings import DecoySettings


def requests(partition: int, offsets: range) -> list[Message]:
    return [Message(topic="rq", partition=partition, offset=o, value=b"r%d" % o, key=b"k", timestamp=(1, 5))
            for o in offsets]


def test_offsets_are_finished_only_when_asked_before_a_commit_and_then_their_records_are_on_disk(
    tmp_path: Path,
) -> None:
    decoy = Decoy(DecoySettings(archive_dir=str(tmp_path)))
    decoy._archive = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600)
    decoy.on_batch(requests(0, range(0, 3)))
    decoy.on_batch(requests(1, range(7, 9)) + requests(0, range(3, 4)))
    assert decoy.positions.finished() == []  # written, not yet durable: nothing may be committed
    finished = decoy.finished_offsets()
    assert sorted((tp.partition, tp.offset) for tp in finished) == [(0, 4), (1, 9)]
    part = next(tmp_path.glob("*.avro.part"))
    on_disk = [(r["partition"], r["offset"]) for r in _readable_records(part, lambda err: None)]
    assert sorted(on_disk) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 7), (1, 8)]  # read back: flushed
    assert decoy.archived == 6
