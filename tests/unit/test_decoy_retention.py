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

    writer.expire(NOW)
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
