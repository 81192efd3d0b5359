"""A damaged archive file never stops the decoy at start nor `replay --source archive`: a torn
block raises whatever its codec meets (an IndexError on zeroed bytes, a zlib error on flipped
ones), and a sealed file can be damaged or removed after the manifest named it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.core.errors import ConfigError
from services.decoy.archive import ArchiveFailed, ArchiveWriter, iter_archive

ROLL = {"roll_bytes": 1 << 30, "roll_seconds": 3600}


def rows(first: int, n: int) -> list[dict[str, Any]]:
    return [{"topic": "t", "partition": 0, "offset": i, "timestamp": 1_700_000_000_000 + i, "key": None,
             "value": b"v%d" % i * 20, "archived_at": 1} for i in range(first, first + n)]


def test_a_part_file_whose_tail_is_zeroed_is_recovered_up_to_its_last_whole_block(tmp_path: Path) -> None:
    """What a crash while the last block was written leaves: that block is dropped (its records'
    offsets were never committed), and no copy of the file is kept for anyone to delete."""
    writer = ArchiveWriter(tmp_path, **ROLL)
    writer.append(rows(0, 60))
    part = next(tmp_path.glob("*.part"))
    first_block_end = part.stat().st_size
    writer.append(rows(60, 40))
    data = part.read_bytes()
    part.write_bytes(data[:-300] + bytes(300))  # the second block's end never reached the disk

    ArchiveWriter(tmp_path, **ROLL).close()  # raised IndexError before: the decoy could not start
    assert [r["offset"] for r in iter_archive(tmp_path)] == list(range(60))
    assert first_block_end < len(data) and not list(tmp_path.glob("*.damaged"))


def test_a_torn_last_block_with_the_null_codec_gives_no_records_of_zeros(tmp_path: Path) -> None:
    """Its count and size reached the disk, its data and marker did not (zeros): uncompressed,
    zeros decode as records (topic '', offset 0), which fastavro handed over before it checked the
    block's marker; they were sealed into the archive and replayed."""
    import fastavro

    from services.core.avro_walk import varint

    writer = ArchiveWriter(tmp_path, codec="null", **ROLL)
    writer.append(rows(0, 5))
    writer.append(rows(5, 3))
    part = next(tmp_path.glob("*.part"))
    data = bytearray(part.read_bytes())
    with part.open("rb") as handle:
        last = list(fastavro.block_reader(handle))[-1]
    _count, at = varint(bytes(data), last.offset, len(data))
    _size, at = varint(bytes(data), at, len(data))
    data[at:] = bytes(len(data) - at)
    part.write_bytes(bytes(data))

    ArchiveWriter(tmp_path, codec="null", **ROLL).close()
    assert [(r["topic"], r["offset"]) for r in iter_archive(tmp_path)] == [("t", i) for i in range(5)]


def test_a_part_file_damaged_before_its_last_block_is_kept_beside_what_was_recovered(tmp_path: Path) -> None:
    """Reading stops at the first damaged block: the blocks after it would be lost, so the
    original is kept."""
    writer = ArchiveWriter(tmp_path, **ROLL)
    writer.append(rows(0, 60))
    part = next(tmp_path.glob("*.part"))
    first_block_end = part.stat().st_size
    writer.append(rows(60, 40))
    damaged = bytearray(part.read_bytes())
    damaged[first_block_end - 40] ^= 0xFF  # inside the first block's records
    part.write_bytes(bytes(damaged))
    # A recovery cut short after keeping its copy (the .part still there): the next start keeps it again.
    part.with_name(part.name + ".damaged").write_bytes(b"an earlier copy")

    ArchiveWriter(tmp_path, **ROLL).close()
    (kept,) = tmp_path.glob("*.damaged")
    assert kept.read_bytes() == bytes(damaged)


def _damaged_in_the_middle(directory: Path) -> Path:
    """A `.part` of three blocks (40 records each), its second damaged: recovered, the first block's
    records are sealed and the original kept beside them."""
    writer = ArchiveWriter(directory, **ROLL)
    writer.append(rows(0, 40))
    part = next(directory.glob("*.part"))
    writer.append(rows(40, 40))
    second_end = part.stat().st_size
    writer.append(rows(80, 40))
    damaged = bytearray(part.read_bytes())
    damaged[second_end - 40] ^= 0xFF
    part.write_bytes(bytes(damaged))
    writer._lock.close()
    return part


def test_a_replay_says_the_records_after_a_damaged_block_are_not_read(tmp_path: Path) -> None:
    """They are in the kept original only: a replay read 40 of 120 without a word (a review)."""
    _damaged_in_the_middle(tmp_path)
    ArchiveWriter(tmp_path, **ROLL).close()
    (kept,) = tmp_path.glob("*.damaged")
    unread: list[str] = []
    assert len(list(iter_archive(tmp_path, unread=unread))) == 40
    assert unread == [f"{kept.name}: the original of a recovered file, damaged inside: the records after its "
                      "damaged block are not read"]


def test_the_kept_original_of_a_damaged_file_is_durable_before_the_original_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never fsynced, the only copy of the records after the damage could come back empty after a
    power loss, the original replaced by the recovered part (a review)."""
    import os

    from services.decoy import archive

    part = _damaged_in_the_middle(tmp_path)
    steps: list[str] = []
    fsync, replace, sync_directory = os.fsync, os.replace, archive._sync_directory
    monkeypatch.setattr(archive.os, "fsync", lambda fd: (steps.append("fsync " + os.readlink(f"/proc/self/fd/{fd}")),
                                                          fsync(fd))[1])
    monkeypatch.setattr(archive.os, "replace", lambda a, b: (steps.append(f"replace {Path(b).name}"), replace(a, b))[1])
    monkeypatch.setattr(archive, "_sync_directory", lambda d: (steps.append("sync directory"), sync_directory(d))[1])
    ArchiveWriter(tmp_path, **ROLL).close()
    kept = steps.index(f"fsync {part}.damaged")
    assert kept < steps.index("sync directory", kept) < steps.index(f"replace {part.name}")


def test_a_sealed_file_that_stops_decoding_midway_is_said_read_in_part(tmp_path: Path) -> None:
    """Its checksum matches, but a block cannot be decoded (a record an earlier release stamped
    past the year 9999): a replay read 500 of its 1,000 records without a word (a review)."""
    writer = ArchiveWriter(tmp_path, **ROLL)
    writer.append(rows(0, 500))
    writer.append([dict(rows(500, 1)[0], timestamp=300_000_000_000_000)])
    writer.append(rows(501, 499))
    writer.close()
    unread: list[str] = []
    assert len(list(iter_archive(tmp_path, unread=unread))) == 500
    (name,) = [p.name for p in tmp_path.glob("requests-*.avro")]
    assert unread == [f"{name}: read 500 of its 1,000 records: a block after them cannot be decoded"]


def test_a_storage_that_refuses_the_recovery_at_start_is_said_naming_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash left a `.part`, then the disk filled: the start said `error: No space left on device`,
    naming neither the archive nor what it was doing (a review)."""
    import errno

    from services.decoy import archive

    writer = ArchiveWriter(tmp_path, **ROLL)
    writer.append(rows(0, 10))
    writer._lock.close()  # the crash: the lock let go, the .part left

    def full(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive.shutil, "copyfileobj", full)
    monkeypatch.setattr(archive, "Writer", full)
    with pytest.raises(ArchiveFailed, match=rf"^archive {tmp_path}: cannot recover the files a crash left at start: "
                                            "No space left on device; the decoy stops"):
        ArchiveWriter(tmp_path, **ROLL)


def test_a_part_file_cut_short_or_empty_is_recovered_without_a_copy(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, **ROLL)
    writer.append(rows(0, 60))
    writer.append(rows(60, 40))
    part = next(tmp_path.glob("*.part"))
    part.write_bytes(part.read_bytes()[:-50])  # the last block's end never written
    (tmp_path / "requests-1-0001.avro.part").write_bytes(b"")  # opened just before a crash
    ArchiveWriter(tmp_path, **ROLL).close()
    assert [r["offset"] for r in iter_archive(tmp_path)] == list(range(60))
    assert not list(tmp_path.glob("*.damaged")) and not list(tmp_path.glob("*.part"))


def test_a_damaged_header_marker_keeps_the_copy(tmp_path: Path) -> None:
    """No block then matches the file's marker: the damage is not a cut-short tail (the review
    of this change: 80 committed records dropped with no copy)."""
    writer = ArchiveWriter(tmp_path, **ROLL)
    for first in (0, 60, 100):
        writer.append(rows(first, 40 if first else 60))
    part = next(tmp_path.glob("*.part"))
    data = bytearray(part.read_bytes())
    first_block = data.index(bytes(data[-16:]))  # the header's marker is the first copy of it
    data[first_block] ^= 0xFF
    part.write_bytes(bytes(data))
    ArchiveWriter(tmp_path, **ROLL).close()
    (kept,) = tmp_path.glob("*.damaged")
    assert kept.read_bytes() == bytes(data)


def test_a_sealed_file_damaged_or_missing_is_skipped_and_the_others_are_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for first in (0, 100, 200):  # three sealed files
        writer = ArchiveWriter(tmp_path, **ROLL)
        writer.append(rows(first, 50))
        writer.close()
    first, second, _third = sorted(p for p in tmp_path.glob("*.avro"))
    damaged = bytearray(second.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    second.write_bytes(bytes(damaged))
    first.unlink()
    unread: list[str] = []
    offsets = [r["offset"] for r in iter_archive(tmp_path, unread=unread)]
    assert offsets == list(range(200, 250))
    assert "missing" in caplog.text and "sha256 is not the manifest's" in caplog.text
    # Said to the caller too: a replay's report says its range may lack them (it said nothing).
    assert [entry.split(": ", 1)[0] for entry in unread] == [first.name, second.name]
    assert "missing" in unread[0] and "sha256 is not the manifest's" in unread[1]
    outside: list[str] = []
    assert list(iter_archive(tmp_path, from_ms=1_700_000_000_200, unread=outside)) and outside == []  # not the range's


def test_a_file_sealed_but_not_yet_in_the_manifest_at_a_crash_is_added_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its records were fsynced and their offsets committed; the manifest's write failed (a full
    disk, a kill between the rename and the write): they were never read back. Until that start a
    replay does not read them either, and says so."""
    from services.decoy import archive

    writer = ArchiveWriter(tmp_path, **ROLL)
    writer.append(rows(0, 2))
    writer.roll()
    writer.append(rows(2, 2))

    def full(*_args: Any) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(archive, "write_manifest", full)
        with pytest.raises(ArchiveFailed, match=r"cannot seal requests-.*\.avro\.part: No space left on device"):
            writer.roll()
    unread: list[str] = []
    with caplog.at_level("WARNING", logger="services.decoy.archive"):
        assert [r["offset"] for r in iter_archive(tmp_path, unread=unread)] == [0, 1]  # the sealed file is not named
    assert "1 archive file(s) sealed but not in the manifest yet, not read: requests-" in caplog.text  # was silent
    assert len(unread) == 1 and unread[0].endswith(
        ": not in the manifest (the decoy adds it at its next start, or deletes it if its retention had taken it out)")

    ArchiveWriter(tmp_path, **ROLL).close()
    assert [r["offset"] for r in iter_archive(tmp_path)] == [0, 1, 2, 3]


def test_a_file_in_the_archive_under_another_name_is_left_alone_not_adopted(tmp_path: Path) -> None:
    """A copy ('requests-<ms>-0001.copy.avro') or 'requests-old.avro' was adopted into the manifest
    at a start, and every later read of the manifest refused it: the decoy could not start again,
    nor could replay read the archive."""
    import shutil

    writer = ArchiveWriter(tmp_path, **ROLL)
    writer.append(rows(0, 3))
    writer.close()
    (sealed,) = tmp_path.glob("requests-*.avro")
    strays = [sealed.with_name(sealed.stem + ".copy.avro"), tmp_path / "requests-old.avro",
              tmp_path / "requests-old.avro.part"]
    for stray in strays:
        shutil.copyfile(sealed, stray)

    ArchiveWriter(tmp_path, **ROLL).close()  # a restart: adopts and recovers only its own names

    assert [r["offset"] for r in iter_archive(tmp_path)] == [0, 1, 2]
    assert all(stray.read_bytes() == sealed.read_bytes() for stray in strays)  # left as they were


def test_a_recovery_cut_short_leaves_the_original_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It rewrote the `.part` in place: a kill during the rewrite left nothing readable."""
    from fastavro.write import Writer

    from services.decoy import archive

    writer = ArchiveWriter(tmp_path, **ROLL)
    writer.append(rows(0, 100))
    part = next(tmp_path.glob("*.part"))
    original = part.read_bytes()

    class KilledMidway:
        """fastavro's writer, until the kill half way through the copy."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.real, self.written = Writer(*args, **kwargs), 0

        def write(self, record: Any) -> None:
            self.written += 1
            if self.written > 50:
                raise KeyboardInterrupt
            self.real.write(record)

        def flush(self) -> None:
            self.real.flush()

    with monkeypatch.context() as patched:
        patched.setattr(archive, "Writer", KilledMidway)
        with pytest.raises(KeyboardInterrupt):
            ArchiveWriter(tmp_path, **ROLL)
    assert part.read_bytes() == original

    ArchiveWriter(tmp_path, **ROLL).close()  # the next start: the whole file, the stale copy gone
    assert [r["offset"] for r in iter_archive(tmp_path)] == list(range(100))
    assert not list(tmp_path.glob("*.recovering"))


def test_a_second_decoy_on_the_same_directory_is_refused_while_the_first_writes(tmp_path: Path) -> None:
    """Two decoys on one directory each rewrote the manifest and took the other's files for their
    own (a review); the second now stops with one line naming the first's pid."""
    import subprocess
    import sys

    from services.core.errors import ConfigError

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from services.decoy.archive import ArchiveWriter;"
         f"w = ArchiveWriter(Path({str(tmp_path)!r}), **{ROLL!r}); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match=f"written by another decoy \\(pid {holder.pid}\\)"):
            ArchiveWriter(tmp_path, **ROLL)
    finally:
        holder.kill()
        holder.wait(30)
    writer = ArchiveWriter(tmp_path, **ROLL)  # the first ended (killed): its lock went with it
    again = ArchiveWriter(tmp_path, **ROLL)  # one process may open it again (after a failure)
    again.close()
    writer.close()


def test_files_still_being_written_are_said_not_read_or_missed_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replay of a running decoy's last minutes missed the open file's requests without a word,
    and before the first seal called the folder 'not a decoy archive' (a review)."""
    writer = ArchiveWriter(tmp_path, **ROLL)
    writer.append(rows(0, 10))  # written and fsynced, the file still open
    with pytest.raises(ConfigError, match="the decoy has sealed no file yet"):
        list(iter_archive(tmp_path))
    writer.close()  # sealed, in the manifest
    writer = ArchiveWriter(tmp_path, **ROLL)
    writer.append(rows(10, 5))
    assert [r["offset"] for r in iter_archive(tmp_path)] == list(range(10))
    assert "1 archive file(s) still being written, not read" in caplog.text
    writer.close()


def test_the_archive_s_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    """Every request's features and payload: made by the umask (0644, a 0755 directory), any user
    of the host read them (a review)."""
    import stat

    directory = tmp_path / "new" / "archive"
    writer = ArchiveWriter(directory, **ROLL)
    writer.append(rows(0, 60))
    writer.roll()
    writer.append(rows(60, 40))
    part = next(directory.glob("*.part"))
    damaged = bytearray(part.read_bytes())
    damaged[len(damaged) // 3] ^= 0xFF  # recovered at the next start, the original kept beside
    part.write_bytes(bytes(damaged))
    ArchiveWriter(directory, **ROLL).close()
    written = [p for p in directory.iterdir() if p.name.startswith("requests-")]
    assert any(p.name.endswith(".avro") for p in written) and any(p.name.endswith(".damaged") for p in written)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: 0o600 for p in written}


def test_archive_files_an_earlier_release_left_readable_are_made_the_owners_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """New files were private, the archive's older ones stayed 0644 (a review)."""
    import stat

    writer = ArchiveWriter(tmp_path, **ROLL)
    writer.append(rows(0, 5))
    writer.close()
    (sealed,) = tmp_path.glob("requests-*.avro")
    sealed.chmod(0o644)  # as the release before wrote it
    with caplog.at_level("WARNING", logger="services.decoy.archive"):
        ArchiveWriter(tmp_path, **ROLL).close()
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    assert "1 archive file(s) in" in caplog.text and "now their owner's only" in caplog.text
