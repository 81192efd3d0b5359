"""The decoy's retention (--retain-hours, services/decoy/archive.py `ArchiveWriter.expire`): sealed
files past it are deleted, the manifest says from when on the archive is whole, and a replay of a
range starting before that says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.core.errors import ConfigError
from services.decoy import archive
from services.decoy.archive import ArchiveWriter, Gap, iter_archive, read_gaps, read_manifest, read_retained_from

HOUR = 3_600_000
NOW = 1_800_000_000_000


def rows(offsets: range, first_ts: int) -> list[dict[str, Any]]:
    return [{"topic": "rdv.requests", "partition": 0, "offset": o, "timestamp": first_ts + o, "key": None,
             "value": b"v%d" % o, "archived_at": 1} for o in offsets]


def sealed(writer: ArchiveWriter, batch: list[dict[str, Any]]) -> None:
    writer.append(batch)
    writer.roll()


def test_files_past_the_retention_are_deleted_and_the_manifest_says_from_when_it_is_whole(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600, retain_ms=24 * HOUR)
    sealed(writer, rows(range(0, 10), NOW - 30 * HOUR))  # its newest record 30 h old: past 24 h
    sealed(writer, rows(range(10, 20), NOW - 25 * HOUR + 5))  # records 25 h old, the last two 1 ms before: past
    sealed(writer, rows(range(20, 30), NOW - 24 * HOUR - 25))  # its last five within 24 h: kept whole
    writer.note_gap(Gap("rdv.requests", 0, 100, 110, noticed_at=NOW - 26 * HOUR))  # its records older still: dropped
    writer.note_gap(Gap("rdv.requests", 0, 200, 210, noticed_at=NOW - HOUR))
    names = [f.name for f in writer.manifest]
    sizes = [f.bytes for f in writer.manifest]
    assert writer.sealed_bytes == sum(sizes) == sum(p.stat().st_size for p in tmp_path.glob("requests-*.avro"))

    writer.expire(NOW)
    assert (writer.sealed_bytes, writer.expired_files) == (sizes[2], 2)  # for rdv_decoy_archive_bytes and _expired
    assert [f.name for f in read_manifest(tmp_path)] == names[2:]
    assert sorted(p.name for p in tmp_path.glob("requests-*")) == names[2:]
    assert read_retained_from(tmp_path) == NOW - 25 * HOUR + 5 + 19 + 1  # just after the newest record deleted
    assert [g.first for g in read_gaps(tmp_path)] == [200]
    assert [r["offset"] for r in iter_archive(tmp_path)] == list(range(20, 30))

    sealed(writer, rows(range(30, 40), NOW - 48 * HOUR))  # sealed within the minute: not looked at yet
    writer.expire(NOW)
    assert len(read_manifest(tmp_path)) == 2, "looked at once a minute at most"
    writer.close()
    reopened = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600, retain_ms=24 * HOUR)
    assert reopened.retained_from == NOW - 25 * HOUR + 25  # kept across a restart, and written with every change
    reopened.expire(NOW)
    assert [r["offset"] for r in iter_archive(tmp_path)] == list(range(20, 30))
    assert read_retained_from(tmp_path) == NOW - 25 * HOUR + 25, "never moved back by older records"
    reopened.close()


def test_without_a_retention_nothing_is_deleted(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600)
    sealed(writer, rows(range(0, 10), 1_000))
    writer.expire(NOW)
    assert len(read_manifest(tmp_path)) == 1 and read_retained_from(tmp_path) is None
    assert "retained_from" not in json.loads((tmp_path / archive.MANIFEST).read_text())
    writer.close()


def test_a_manifest_whose_retention_time_is_no_time_is_refused(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600)
    sealed(writer, rows(range(0, 3), 1_000))
    writer.close()
    manifest = tmp_path / archive.MANIFEST
    for bad in ("yesterday", -1, True, 1.5):
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "retained_from": bad}))
        with pytest.raises(ConfigError, match=r"is unreadable: retained_from .* is no epoch ms"):
            read_retained_from(tmp_path)


def test_an_archive_replay_of_a_range_starting_before_the_retention_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.cli import replay as replay_module
    from services.cli.replay import ReplaySettings, Skipped, _skipped_notes, recorded_requests
    from services.core.ranges import parse_bounds

    writer = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600, retain_ms=HOUR)
    sealed(writer, rows(range(0, 5), NOW - 3 * HOUR))
    sealed(writer, rows(range(5, 10), NOW - 10_000))
    writer.expire(NOW)
    writer.close()
    monkeypatch.setattr(replay_module, "partition_counts", lambda *_args: {})
    settings = ReplaySettings(model="demo:champion", source="archive", archive_dir=str(tmp_path))
    for since, said in (("4h", True), ("1m", False)):
        skipped = Skipped()
        list(recorded_requests(settings, parse_bounds(since, "", "", NOW), skipped))
        notes = _skipped_notes(settings, skipped, replay_module.Scored())
        assert any("deleted by the decoy's retention (--retain-hours)" in n for n in notes) is said, notes


def two_files(tmp_path: Path, retain_ms: int = 24 * HOUR) -> ArchiveWriter:
    """An archive of a file of recent records (offsets 0-9), then one of records past 24 h (10-19)."""
    writer = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600, retain_ms=retain_ms)
    sealed(writer, rows(range(0, 10), NOW - HOUR))
    sealed(writer, rows(range(10, 20), NOW - 30 * HOUR))
    return writer


def test_a_file_the_retention_deletes_while_a_replay_reads_is_said_as_such_not_as_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The listing was guarded, the reading after it not: a replay said 'missing' of a file the
    retention deleted meanwhile, and one deleted between its checksum and its read ended the replay
    with 'No such file or directory' (a review)."""
    writer = two_files(tmp_path)
    unread: list[str] = []
    reading = iter_archive(tmp_path, unread=unread)
    first = next(reading)  # listed: both files named
    writer.expire(NOW)
    assert [first["offset"], *(r["offset"] for r in reading)] == list(range(10))
    assert len(unread) == 1 and "deleted by the decoy's retention (--retain-hours) while the archive" in unread[0]

    writer = two_files(tmp_path / "again")
    real_damage = archive._damage

    def checked_then_deleted(path: Path, stats: archive.FileStats) -> str | None:
        damage = real_damage(path, stats)
        if stats.records and stats.first_timestamp == NOW - 30 * HOUR + 10:
            writer.expire(NOW)  # between the checksum and the read
        return damage

    monkeypatch.setattr(archive, "_damage", checked_then_deleted)
    unread = []
    assert [r["offset"] for r in iter_archive(tmp_path / "again", unread=unread)] == list(range(10))
    assert len(unread) == 1 and "deleted by the decoy's retention" in unread[0]


def test_a_retention_turned_on_for_a_full_disk_makes_room_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recovery and the first write need room: with the retention run from the loop only, a
    decoy stopped by a full disk failed at every start. And with no room for the manifest's new
    copy, the files go first (a review)."""
    stopped = two_files(tmp_path, retain_ms=0)
    old = tmp_path / stopped.manifest[1].name
    stopped.append(rows(range(20, 25), NOW))  # what a crash left unsealed: its recovery needs room too
    part = next(tmp_path.glob("*.part"))
    stopped._lock.close()  # the crash: the file is left as it is
    real_write, real_private = archive.write_manifest, archive._private

    def write_manifest(*args: Any) -> None:
        if old.exists():  # the disk is full until the old file goes
            raise OSError(28, "No space left on device")
        real_write(*args)

    def private(path: Path) -> Any:
        if old.exists():
            raise OSError(28, "No space left on device")
        return real_private(path)

    monkeypatch.setattr(archive, "write_manifest", write_manifest)
    monkeypatch.setattr(archive, "_private", private)
    monkeypatch.setattr(archive.time, "time", lambda: NOW / 1000)  # the clock the start's retention reads
    writer = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600, retain_ms=24 * HOUR)
    assert not old.exists() and not part.exists()  # made room for the manifest first, then recovered the part
    assert sorted(r["offset"] for r in iter_archive(tmp_path)) == [*range(10), *range(20, 25)]
    writer.close()


def test_a_file_the_retention_took_out_of_the_manifest_before_a_crash_is_deleted_not_adopted(tmp_path: Path) -> None:
    """A crash between the manifest's write and the files' deletion: they were adopted at the next
    start (read and hashed whole), and the retention deleted them a minute later (a review)."""
    writer = two_files(tmp_path)
    kept, gone = writer.manifest
    writer.close()
    archive.write_manifest(tmp_path, [kept], [], gone.last_timestamp + 1)  # what the crash left: the file still there
    assert (tmp_path / gone.name).exists()
    reopened = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600, retain_ms=24 * HOUR)
    assert [f.name for f in reopened.manifest] == [kept.name] and not (tmp_path / gone.name).exists()
    reopened.close()
    # The same crash, and a start with the retention turned off since: the file is kept, named again.
    writer = two_files(tmp_path / "kept")
    kept, gone = writer.manifest
    writer.close()
    archive.write_manifest(tmp_path / "kept", [kept], [], gone.last_timestamp + 1)
    unretained = ArchiveWriter(tmp_path / "kept", roll_bytes=1 << 30, roll_seconds=3600)
    assert [f.name for f in unretained.manifest] == [kept.name, gone.name]
    unretained.close()


def test_a_reader_holding_the_listing_does_not_hold_a_seal_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A replay stopped with Ctrl-Z while it held the shared lock held the decoy's poll loop (a review)."""
    import fcntl
    import os

    monkeypatch.setattr(archive, "LISTING_LOCK_WAIT_S", 0.2)
    writer = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600)
    writer.append(rows(range(0, 3), NOW))
    held = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_SH)  # a reader, stopped while it lists
        with caplog.at_level("WARNING", logger="services.decoy.archive"):
            writer.roll()
    finally:
        os.close(held)
    assert len(read_manifest(tmp_path)) == 1
    assert "a reader has held the archive's listing lock for 0s: going on without it" in caplog.text
    writer.close()
