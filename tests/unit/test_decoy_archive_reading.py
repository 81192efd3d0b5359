"""Reading the decoy's archive: each record once, and no record dropped for sharing an offset
with another (services/decoy/archive.py, iter_archive)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from services.core.errors import ConfigError
from services.decoy import archive
from services.decoy.archive import ArchiveWriter, iter_archive

ROLL = {"roll_bytes": 1 << 30, "roll_seconds": 3600}


def rows(offsets: range, first_ts: int, tag: bytes) -> list[dict[str, Any]]:
    return [{"topic": "t", "partition": 0, "offset": o, "timestamp": first_ts + o, "key": None,
             "value": tag + b"%d" % o, "archived_at": 1} for o in offsets]


def archive_of(directory: Path, *batches: list[dict[str, Any]]) -> None:
    for batch in batches:  # one writer each: every start of the decoy seals and opens a file
        writer = ArchiveWriter(directory, **ROLL)
        writer.append(batch)
        writer.close()


def test_records_read_again_after_a_crash_are_read_once(tmp_path: Path) -> None:
    archive_of(tmp_path, rows(range(0, 10), 1_000, b"a"), rows(range(6, 15), 1_000, b"a"))  # 6..9 again
    assert [r["offset"] for r in iter_archive(tmp_path)] == list(range(15))


def test_a_topic_created_again_starts_its_offsets_over_and_every_record_is_read(tmp_path: Path) -> None:
    """After a broker reset the same offsets hold other requests: they were dropped as duplicates."""
    archive_of(tmp_path, rows(range(10), 1_000, b"old"), rows(range(10), 90_000, b"new"))
    values = [r["value"] for r in iter_archive(tmp_path)]
    assert len(values) == 20 and sum(v.startswith(b"new") for v in values) == 10


def test_what_is_remembered_per_partition_is_bounded(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(archive, "DUPLICATE_WINDOW", 100)
    recent = archive._Recent()
    assert all(recent.first_time(o, 5_000 + o) for o in range(1_000))
    assert len(recent.timestamps) <= 201 and not recent.first_time(999, 5_999)
    # Far behind the highest offset: a topic that started over, read from its start.
    assert recent.first_time(0, 9_000) and not recent.first_time(0, 9_000) and recent.first_time(1, 9_001)


def test_a_re_read_from_further_back_than_the_window_is_read_once(tmp_path: Path, monkeypatch: Any) -> None:
    """Commits that failed for a while, or a group's offsets reset: a re-read of 30,000 offsets
    (the window 10,000) was taken for a topic created again, and all of it came out twice."""
    monkeypatch.setattr(archive, "DUPLICATE_WINDOW", 100)
    archive_of(tmp_path, rows(range(0, 1_000), 1_000, b"a"), rows(range(300, 1_200), 1_000, b"a"))
    assert [r["offset"] for r in iter_archive(tmp_path)] == list(range(1_200))
    recent = archive._Recent()
    assert all(recent.first_time(o, 1_000 + o) for o in range(1_000))
    assert len(recent.spans) == 1 and len(recent.timestamps) <= 201  # the older offsets as one span
    # After a skip of offsets (a reset forward): a span each side, the skipped ones new if read later,
    # and what was read before them still known (a backfill is no topic started over).
    assert all(recent.first_time(o, 1_000 + o) for o in range(5_000, 5_400))
    assert len(recent.spans) == 2 and recent.first_time(3_000, 4_000) and recent.high == 5_399
    assert not recent.first_time(500, 1_500)


def test_a_backfill_of_offsets_never_read_is_read_once_with_what_was_read_before(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A decoy started at the latest offsets, its group reset to the earliest later: the older
    offsets, never read and far behind, were taken for a topic created again, every record
    after them came out twice (90,000 of 70,000 in a review, at the real window)."""
    monkeypatch.setattr(archive, "DUPLICATE_WINDOW", 100)
    archive_of(tmp_path, rows(range(500, 700), 1_000, b"a"), rows(range(0, 700), 1_000, b"a"))
    assert sorted(r["offset"] for r in iter_archive(tmp_path)) == list(range(700))
    other = tmp_path / "other"
    archive_of(other, rows(range(0, 300), 1_000, b"a"), rows(range(400, 700), 1_000, b"a"),
               rows(range(0, 700), 1_000, b"a"))
    assert sorted(r["offset"] for r in iter_archive(other)) == list(range(700))


def test_archived_timestamps_read_back_to_the_millisecond() -> None:
    """timestamp() * 1000 in floats read some times after 2036 back 1 ms low."""
    from datetime import UTC, datetime

    moment = datetime(2038, 6, 21, 11, 24, 11, 299_000, tzinfo=UTC)
    record = archive._plain({"timestamp": moment, "archived_at": moment})
    assert record["timestamp"] == record["archived_at"] == 2_160_732_251_299


def test_a_topic_created_again_far_past_the_window_is_read_whole(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(archive, "DUPLICATE_WINDOW", 100)
    archive_of(tmp_path, rows(range(1_000), 1_000, b"old"), rows(range(10), 90_000, b"new"))
    values = [r["value"] for r in iter_archive(tmp_path)]
    assert len(values) == 1_010 and sum(v.startswith(b"new") for v in values) == 10


def test_a_manifest_naming_a_file_outside_the_archive_or_without_its_sha256_is_refused(tmp_path: Path) -> None:
    """Names were followed as given ('../elsewhere/x.avro', an absolute path: replay read a file
    outside the archive), and an empty sha256 turned the integrity check off."""
    import json

    import pytest

    from services.core.errors import ConfigError

    archive_of(tmp_path, rows(range(3), 1_000, b"a"))
    manifest = tmp_path / archive.MANIFEST
    good = json.loads(manifest.read_text())
    assert [r["offset"] for r in iter_archive(tmp_path)] == [0, 1, 2]
    for change, said in (({"name": "../elsewhere/requests-1-0001.avro"}, "is not the name of an archive file"),
                         ({"name": str(tmp_path / good["files"][0]["name"])}, "is not the name of an archive file"),
                         ({"sha256": ""}, "has no sha256")):
        manifest.write_text(json.dumps({**good, "files": [{**good["files"][0], **change}]}))
        with pytest.raises(ConfigError, match=said):
            list(iter_archive(tmp_path))


def test_a_file_name_taken_again_after_a_clock_step_back_does_not_replace_the_sealed_one(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Names are the wall clock's millisecond and a sequence that restarts with each process: two
    runs on the same millisecond (a clock stepped back) sealed the second file over the first."""
    monkeypatch.setattr(archive.time, "time", lambda: 1_700_000_000.0)
    archive_of(tmp_path, rows(range(0, 10), 1_000, b"a"), rows(range(10, 20), 1_000, b"b"))
    assert [r["offset"] for r in iter_archive(tmp_path)] == list(range(20))
    assert len(list(tmp_path.glob("requests-1700000000000-*.avro"))) == 2


def test_sealed_files_without_a_manifest_are_said_as_such_not_as_no_archive(tmp_path: Path) -> None:
    """The first manifest write failed (a full disk): 'not a decoy archive' sent people looking for
    another directory."""
    archive_of(tmp_path, rows(range(0, 10), 1_000, b"a"))
    (tmp_path / archive.MANIFEST).unlink()
    with pytest.raises(ConfigError, match=r"no manifest\.json yet \(its first write failed: a full disk\?\)"):
        archive.check_archive(tmp_path)


def test_a_reader_while_a_file_is_sealed_reads_it_once_it_is_named(tmp_path: Path, monkeypatch: Any) -> None:
    """A replay that listed the files between the seal's rename and the manifest's write (the
    sha256 of a large file takes tenths of a second) left the file unread, as "not in the manifest
    yet": now it waits for the seal, and reads it."""
    writer = ArchiveWriter(tmp_path, **ROLL)
    writer.append(rows(range(30), 1_700_000_000_000, b"a"))
    hashing, go, progress = threading.Event(), threading.Event(), threading.Event()
    real_sha256, real_flock = archive._sha256, archive.fcntl.flock

    def slow_sha256(path: Path) -> str:
        hashing.set()
        go.wait(30)
        return real_sha256(path)

    def flock(fd: int, operation: int) -> None:
        if operation == archive.fcntl.LOCK_SH:
            progress.set()  # the reader is at the lock: it would wait there
        real_flock(fd, operation)

    monkeypatch.setattr(archive, "_sha256", slow_sha256)
    monkeypatch.setattr(archive.fcntl, "flock", flock)
    sealing = threading.Thread(target=writer.close)
    sealing.start()
    assert hashing.wait(30)
    unread: list[str] = []
    read: list[int] = []

    def replay() -> None:
        try:
            read.extend(r["offset"] for r in iter_archive(tmp_path, unread=unread))
        finally:
            progress.set()

    reader = threading.Thread(target=replay)
    reader.start()
    assert progress.wait(30)  # the reader done (before) or at the lock (now)
    go.set()
    sealing.join(30)
    reader.join(30)
    assert (read, unread) == (list(range(30)), [])
