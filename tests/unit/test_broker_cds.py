"""The local broker's class-data-sharing archive: named for its JVM, written under a name of its
own, adopted only after a clean stop, never used against the user's own CDS options."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from services.localkafka import cds


def _java(tmp_path: Path, name: str = "java") -> str:
    java = tmp_path / name
    java.write_text("#!/bin/sh\n")
    return str(java)


def test_the_archive_is_named_for_the_java_runtime_and_the_kafka_version(tmp_path: Path) -> None:
    java, other = _java(tmp_path), _java(tmp_path, "java21")
    first = cds.archive_path(tmp_path / "cds", java, "4.4.0")
    assert first == cds.archive_path(tmp_path / "cds", java, "4.4.0")
    assert first.parent == tmp_path / "cds" and first.name.startswith("kafka-4.4.0-") and first.suffix == ".jsa"
    assert cds.archive_path(tmp_path / "cds", other, "4.4.0") != first
    assert cds.archive_path(tmp_path / "cds", java, "4.5.0") != first


def test_a_broker_writes_a_pending_archive_of_its_own_until_one_exists(tmp_path: Path) -> None:
    archive = cds.archive_path(tmp_path / "cds", _java(tmp_path), "4.4.0")
    (opts_a, pending_a), (_opts_b, pending_b) = cds.options(archive), cds.options(archive)
    assert pending_a is not None and pending_b is not None and pending_a != pending_b
    assert opts_a == (f"-XX:ArchiveClassesAtExit={pending_a}",)
    pending_a.write_bytes(b"archive")
    assert cds.adopt(pending_a, archive) and archive.read_bytes() == b"archive" and not pending_a.exists()
    assert cds.options(archive) == ((f"-XX:SharedArchiveFile={archive}",), None)


def test_a_part_file_left_by_a_broker_that_died_is_deleted_at_the_next_start_without_archive(tmp_path: Path) -> None:
    archive = tmp_path / "kafka-4.0.0-0123456789abcdef.jsa"
    stale, recent = (archive.with_name(f"{archive.name}.{tag}.part") for tag in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"))
    for part in (stale, recent):
        part.write_bytes(b"half an archive")
    hours_ago = time.time() - 2 * cds.STALE_PART_S
    os.utime(stale, (hours_ago, hours_ago))
    _options, pending = cds.options(archive)
    assert not stale.exists()
    assert recent.exists()  # perhaps a broker exiting now writes it
    assert pending is not None and not pending.exists()


def test_an_empty_or_missing_archive_is_not_adopted_and_a_killed_brokers_is_discarded(tmp_path: Path) -> None:
    archive = tmp_path / "a.jsa"
    empty = tmp_path / "a.jsa.1.part"
    empty.write_bytes(b"")
    assert not cds.adopt(empty, archive) and not archive.exists() and not empty.exists()
    assert not cds.adopt(tmp_path / "never-written.part", archive)
    half = tmp_path / "a.jsa.2.part"
    half.write_bytes(b"half")
    cds.discard(half)
    assert not half.exists() and not archive.exists()


@pytest.mark.parametrize(("setting", "extra", "expected"), [
    (None, None, True),
    ("off", None, False),
    ("0", None, False),
    ("on", "-Xmx1g", True),
    (None, "-XX:SharedArchiveFile=/x.jsa", False),
    (None, "-Xshare:off", False),
])
def test_it_is_on_unless_turned_off_or_the_user_brings_cds_options(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, extra: str | None, expected: bool
) -> None:
    if setting is None:
        monkeypatch.delenv(cds.CDS_ENV, raising=False)
    else:
        monkeypatch.setenv(cds.CDS_ENV, setting)
    assert cds.wanted(extra) is expected


def test_archives_no_broker_started_on_for_weeks_are_deleted_when_a_new_one_is_adopted(tmp_path: Path) -> None:
    directory = tmp_path / "cds"
    directory.mkdir()
    forgotten, in_use = directory / "kafka-4.0.0-0000000000000000.jsa", directory / "kafka-4.0.0-1111111111111111.jsa"
    weeks_ago = time.time() - 60 * 86400
    for old in (forgotten, in_use):
        old.write_bytes(b"an old archive")
        os.utime(old, (weeks_ago, weeks_ago))
    assert cds.options(in_use) == ((f"-XX:SharedArchiveFile={in_use}",), None)  # a start maps it: used now
    archive = cds.archive_path(directory, _java(tmp_path), "4.4.0")
    _options, pending = cds.options(archive)
    assert pending is not None
    pending.write_bytes(b"archive")
    assert cds.adopt(pending, archive)
    assert archive.exists() and in_use.exists()
    assert not forgotten.exists()


def test_an_archive_the_jvm_crashed_on_is_deleted_and_said_any_other_exit_leaves_it(tmp_path: Path) -> None:
    """A damaged archive crashed every start, the error naming neither it nor RDV_BROKER_CDS (a review)."""
    archive, stdout = tmp_path / "kafka.jsa", tmp_path / "stdout.log"
    archive.write_bytes(b"archive")
    stdout.write_text("Error: Could not find or load main class kafka.Kafka\n")
    cds.set_aside_if_crashed(archive, stdout)  # another failure: the archive stays
    assert archive.is_file()
    stdout.write_text("#\n# A fatal error has been detected by the Java Runtime Environment:\n#\n#  SIGBUS (0x7)\n"
                      "# V  [libjvm.so+0x6bc53d]  FileMapInfo::relocate_pointers_in_core_regions(long)+0x24d\n")
    with pytest.raises(cds.ArchiveCrashed, match=r"crashed mapping its class-data archive .*kafka.jsa, deleted now "
                                                 r"\(RDV_BROKER_CDS=off turns archives off\)"):
        cds.set_aside_if_crashed(archive, stdout)
    assert not archive.exists()
