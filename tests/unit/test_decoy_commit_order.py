"""The decoy's commit order (services/decoy/service.py): records are written as they come, and
their offsets are finished only once the skeleton asks before a commit and the file is fsynced."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from confluent_kafka import Message, TopicPartition

from services.decoy.archive import ArchiveFailed, ArchiveWriter, _readable_records, read_manifest
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


def test_an_archive_directory_deleted_while_written_stops_the_decoy_before_any_offset_is_finished(
    tmp_path: Path,
) -> None:
    """The decoy went on writing and fsyncing into a file no directory held, and committed its
    offsets: everything it read until its next roll (300 s by default) was lost, while its
    metrics and readiness said all was well (a review's run: 160 of 160 requests)."""
    archive = tmp_path / "archive"
    decoy = Decoy(DecoySettings(archive_dir=str(tmp_path)))
    decoy._archive = ArchiveWriter(archive, roll_bytes=1 << 30, roll_seconds=3600)
    decoy.on_batch(requests(0, range(0, 3)))
    assert decoy.finished_offsets() == [TopicPartition("rq", 0, 3)]
    shutil.rmtree(archive)
    decoy.on_batch(requests(0, range(3, 5)))  # written into the deleted file: no error yet
    with pytest.raises(ArchiveFailed, match=r"cannot fsync requests-.*\.avro\.part: it was deleted or replaced"):
        decoy.finished_offsets()
    assert not decoy._archive.healthy
    # Asked again on the way out (a revoke, the drain): what was finished before, nothing more.
    assert decoy.finished_offsets() == [TopicPartition("rq", 0, 3)]
    with pytest.raises(ArchiveFailed):
        decoy.on_batch(requests(0, range(5, 6)))
    decoy._archive.close()  # lets go of the file; raises nothing, seals nothing
    assert not archive.exists() and decoy.archived == 3


def test_an_archive_directory_replaced_after_a_seal_stops_the_decoy_at_its_next_file(tmp_path: Path) -> None:
    """With no file open (the last one sealed by age on a quiet topic) nothing noticed the directory
    moved away and a new one made: the decoy wrote on into the new one, its manifest listing the
    moved files (a replay named them missing), and a second decoy took the new one unlocked (a review)."""
    archive = tmp_path / "archive"
    writer = ArchiveWriter(archive, roll_bytes=1 << 30, roll_seconds=3600)
    writer.append([_row(0)])
    writer.roll()  # sealed: no file open
    archive.rename(tmp_path / "moved")
    archive.mkdir()
    with pytest.raises(ArchiveFailed, match=r"cannot write to a new file: the directory was replaced or removed since"):
        writer.write([_row(1)])
    assert not writer.healthy and list(archive.iterdir()) == []
    writer.close()


def test_a_failed_archive_is_left_for_recovery_not_sealed(tmp_path: Path) -> None:
    """Sealing after a failure would put a file in the manifest counting records that never
    reached the disk; the `.part` is recovered at the next start instead."""
    writer = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600)
    writer.append([_row(0)])
    part = next(tmp_path.glob("*.avro.part"))
    part.rename(part.with_name("moved.part"))  # the path no longer names the open file
    writer.write([_row(1)])
    with pytest.raises(ArchiveFailed, match="deleted or replaced"):
        writer.sync()
    writer.close()
    assert read_manifest(tmp_path) == [] and [p.name for p in tmp_path.glob("*.part")] == ["moved.part"]


def _row(offset: int) -> dict[str, object]:
    return {"topic": "rq", "partition": 0, "offset": offset, "timestamp": 5, "key": b"k", "value": b"v",
            "archived_at": 5}


def test_records_of_a_partition_lost_before_they_were_synced_are_not_finished_later(tmp_path: Path) -> None:
    """Lost (no commit at the revoke): finishing them at the next commit would commit a position of
    a partition another decoy owns now."""
    decoy = Decoy(DecoySettings(archive_dir=str(tmp_path)))
    decoy._archive = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600)
    decoy.on_batch(requests(0, range(0, 2)) + requests(1, range(0, 3)))
    decoy.on_released([TopicPartition("rq", 1)], lost=True)
    assert decoy.finished_offsets() == [TopicPartition("rq", 0, 2)]


def test_a_request_stamped_past_the_year_9999_is_archived_without_losing_the_records_after_it(
    tmp_path: Path,
) -> None:
    """A producer may set any long as a record's time: archived as it was, every reader of the
    file (replay, a crash's recovery) stopped at its block with OverflowError, and the records
    around it were lost (a review). It keeps the time it was archived instead."""
    from services.decoy.archive import iter_archive

    decoy = Decoy(DecoySettings(archive_dir=str(tmp_path)))
    decoy._archive = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600)
    far = Message(topic="rq", partition=0, offset=3, value=b"r3", key=b"k", timestamp=(0, 300_000_000_000_000))
    decoy.on_batch([*requests(0, range(0, 3)), far, *requests(0, range(4, 6))])
    decoy.finished_offsets()
    decoy._archive.close()
    read = list(iter_archive(tmp_path))
    assert [r["offset"] for r in read] == [0, 1, 2, 3, 4, 5]
    assert read[3]["timestamp"] == read[3]["archived_at"] and read[0]["timestamp"] == 5


def test_a_decoy_given_some_partitions_only_says_that_its_archive_covers_those_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two decoys with their own directories in one group split the requests between them, and a
    replay of either covered half the traffic as if it were all of it, without a word (a review)."""
    decoy = Decoy(DecoySettings(archive_dir=str(tmp_path)))
    decoy._partitions = 4
    with caplog.at_level("WARNING", logger="services.decoy.service"):
        decoy.on_assigned([TopicPartition("rdv.requests", p, -1001) for p in range(4)])
        assert caplog.records == []  # all of them: nothing to say
        decoy.on_released([TopicPartition("rdv.requests", p) for p in (0, 1)], lost=False)
        decoy.on_assigned([TopicPartition("rdv.requests", 3, -1001)])
    (said,) = caplog.records
    assert said.getMessage().startswith("decoy archives partition(s) 2, 3 of the 4 of rdv.requests into")


def test_a_start_moved_past_a_gap_is_committed_after_the_records_read_before_it_and_only_once_they_are(
    tmp_path: Path,
) -> None:
    """The jump past records the topic deleted was committed even when the poll that found it never
    handed its records over (the loop ended): they were in hand, never archived, and named in no
    gap (a review). And a jump back (a topic recreated) was never committed (a review)."""
    from services.decoy.service import _Jump

    decoy = Decoy(DecoySettings(archive_dir=str(tmp_path)))
    decoy._archive = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600)
    decoy._jumps.append(_Jump("rq", 0, 50))  # found in a poll whose records never reached on_batch
    assert decoy.finished_offsets() == []  # nothing committed past records in hand
    decoy.on_batch(requests(0, range(10, 13)))  # the poll's records, then its jump, then what follows
    decoy.on_batch(requests(0, range(50, 52)))
    assert decoy.finished_offsets() == [TopicPartition("rq", 0, 52)]
    decoy._jumps.append(_Jump("rq", 0, 0))  # back to the start of a topic recreated
    decoy.on_batch([])
    assert decoy.finished_offsets() == [TopicPartition("rq", 0, 0)]
    assert decoy.archived == 5


def test_a_late_out_of_range_report_of_a_partition_released_since_is_not_taken_for_news(tmp_path: Path) -> None:
    """Queued before a revoke, it came after: the gap was counted again (the manifest names it
    once, the counter did not) and the start the decoy chose was committed over the new owner's
    position (a review)."""
    from types import SimpleNamespace

    from services.decoy.archive import read_gaps

    class Native:
        def get_watermark_offsets(self, _tp: TopicPartition, **_kwargs: object) -> tuple[int, int]:
            return 100, 200

        def seek(self, tp: TopicPartition) -> None:
            seeks.append(tp.partition)

    seeks: list[int] = []
    decoy = Decoy(DecoySettings(archive_dir=str(tmp_path)))
    decoy._archive = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600)
    decoy.ctx = SimpleNamespace(consumer=SimpleNamespace(native=Native()), commit_soon=lambda: None)  # type: ignore[assignment]
    decoy._owned = {0}
    decoy._out_of_range(TopicPartition("rq", 1, 5))  # released since
    assert (read_gaps(tmp_path), seeks, decoy._jumps) == ([], [], [])
    decoy._out_of_range(TopicPartition("rq", 0, 5))  # its own: the gap named, the partition started past it
    assert [(g.partition, g.first, g.last) for g in read_gaps(tmp_path)] == [(0, 5, 99)] and seeks == [0]
    assert [(j.partition(), j.start) for j in decoy._jumps] == [(0, 100)]


def test_the_decoy_says_its_archives_room_for_an_alert_before_a_full_disk_stops_it(tmp_path: Path) -> None:
    import shutil as disk

    from prometheus_client import REGISTRY

    from services.decoy import service

    service.DISK_SIZE.set(-1)  # another test may have set them
    service.DISK_FREE.set(-1)
    decoy = Decoy(DecoySettings(archive_dir=str(tmp_path)))
    decoy._say_disk()
    usage = disk.disk_usage(tmp_path)
    assert REGISTRY.get_sample_value("rdv_decoy_disk_size_bytes") == usage.total
    free = REGISTRY.get_sample_value("rdv_decoy_disk_free_bytes")
    assert free is not None and 0 < free <= usage.total


def test_the_decoys_tick_runs_the_retention_and_says_the_archives_size_and_what_it_deleted(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    from services.core.runtime import now_ms
    from services.decoy import service

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    hour = 3_600_000
    decoy = Decoy(DecoySettings(archive_dir=str(tmp_path), retain_hours=1))
    writer = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600, retain_ms=hour)
    for at in (now_ms() - 2 * hour, now_ms()):  # one file past the hour, one within it
        writer.write([{"topic": "rq", "partition": 0, "offset": 0, "timestamp": at, "key": None, "value": b"r",
                       "archived_at": at}])
        writer.roll()
    decoy._archive = writer
    service.DISK_SIZE.set(-1)  # another test may have set it
    expired_before = sample("rdv_decoy_expired_files_total")
    decoy.on_tick()
    decoy.on_tick()  # counted once
    (kept,) = read_manifest(tmp_path)
    assert sample("rdv_decoy_archive_bytes") == kept.bytes == writer.sealed_bytes
    assert sample("rdv_decoy_expired_files_total") - expired_before == 1
    assert sample("rdv_decoy_disk_size_bytes") > 0
