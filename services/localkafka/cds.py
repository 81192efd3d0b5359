"""A class-data-sharing archive for the local broker's JVM: faster start, and a warm first minute.

Java's dynamic CDS (JDK 13+): a broker started while no archive exists records the classes it
loads and writes them when it exits cleanly (`-XX:ArchiveClassesAtExit`); every later broker
maps that archive instead of loading and verifying those classes again
(`-XX:SharedArchiveFile`). The archive is written at the end of a whole run, so it holds the
classes of serving (produce, fetch, transactions), not only those of start-up: the first
requests after a cold start find them loaded.

Measured (`bench/latency_curve.py --rates 100 --step 4 --cold-seconds 15`, alternating, two
pairs): broker ready after 3.5 / 3.8 s instead of 5.5 / 6.0 s; of the requests sent at 200 req/s
in the first 15 s, 95.7 / 92.4% answered by their deadline instead of 82.9 / 70.4%.

Safety: an archive fits only the JVM and class path that wrote it, so its name carries the Java
runtime (its real path and modification time) and the Kafka version. It is written under a
name of its own per broker process and adopted (an atomic rename) only after that broker
stopped cleanly, so a broker killed while writing never leaves a broken archive behind. A JVM
that cannot map an archive runs without it (`-Xshare:auto`, the default). `RDV_BROKER_CDS=off`
turns it off; JVM options of one's own about CDS (`RDV_BROKER_JVM_OPTS`) take its place.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from pathlib import Path

from services.localkafka import config

log = logging.getLogger(__name__)

CDS_ENV = "RDV_BROKER_CDS"
_OWN_CDS_OPTIONS = ("-Xshare", "-XX:SharedArchiveFile", "-XX:ArchiveClassesAtExit", "-XX:+AutoCreateSharedArchive")


def archive_path(directory: Path, java: str, kafka_version: str, libs: Path | None = None) -> Path:
    """Where the archive of this Java runtime, Kafka version and set of jars (`libs`) lives in
    `directory`. The JVM refuses an archive whose jars changed (a new download has new times):
    named after the Java binary and version alone, one was passed to every later start, refused
    each time, and none was ever written again."""
    real = Path(java).resolve()
    parts = [f"{real}:{_stamp(real)}:{kafka_version}"]
    if libs is not None:
        parts += [f"{jar.name}:{jar.stat().st_size}:{_stamp(jar)}" for jar in sorted(libs.glob("*.jar"))]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return directory / f"kafka-{kafka_version}-{key}.jsa"


def _stamp(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def wanted(extra_jvm_options: str | None) -> bool:
    """Whether to use an archive: not when turned off, nor when the user set CDS options."""
    if config.switched_off(os.environ.get(CDS_ENV), CDS_ENV):
        return False
    return not any(option in (extra_jvm_options or "") for option in _OWN_CDS_OPTIONS)


def options(archive: Path) -> tuple[tuple[str, ...], Path | None]:
    """The JVM options for this start, and the file it will write (None: it maps an archive)."""
    if archive.is_file():
        _mark_used(archive)
        return (f"-XX:SharedArchiveFile={archive}",), None
    archive.parent.mkdir(parents=True, exist_ok=True)
    _forget_stale(archive.parent)
    pending = archive.with_name(f"{archive.name}.{uuid.uuid4().hex[:12]}.part")
    return (f"-XX:ArchiveClassesAtExit={pending}",), pending


# A JVM writes its archive in the seconds of its exit: a part file this old is one whose broker
# died without the clean stop or the kill that adopt or discard it (a crash, a reboot).
STALE_PART_S = 3600.0


def _forget_stale(directory: Path) -> None:
    """Delete part files left by brokers that died before their own were adopted or discarded
    (each is tens of MB, and every later start without an archive would leave another)."""
    now = time.time()
    for part in directory.glob("*.jsa.*.part"):
        with contextlib.suppress(OSError):  # another start may delete it first
            if now - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
                log.info("deleted %s: a class-data archive a broker that did not stop cleanly left half-written", part)


class ArchiveCrashed(Exception):
    """The JVM crashed mapping an archive, now set aside: start again without it."""


# What a JVM prints first when it dies of a fatal error (e.g. SIGBUS in FileMapInfo, mapping an
# archive cut short: written by a broker whose machine lost power before the rename reached disk).
_JVM_FATAL = b"A fatal error has been detected by the Java Runtime Environment"


def set_aside_if_crashed(archive: Path, stdout: Path) -> None:
    """`ArchiveCrashed` after deleting `archive` if the JVM that mapped it died of a fatal error
    (the next clean stop writes another): a damaged archive crashed every later start, its error
    naming neither the archive nor RDV_BROKER_CDS (a review)."""
    try:
        with stdout.open("rb") as out:
            crashed = _JVM_FATAL in out.read(4096)
        if not crashed:
            return
        archive.unlink()
    except OSError:
        return
    raise ArchiveCrashed(f"the JVM crashed mapping its class-data archive {archive}, deleted now ({CDS_ENV}=off "
                         "turns archives off)")


def adopt(pending: Path, archive: Path) -> bool:
    """After a clean stop: make the archive the broker wrote the one later brokers map, on disk
    before its name (a rename that reached the disk before the data left an archive that crashes)."""
    if not pending.is_file() or pending.stat().st_size == 0:
        pending.unlink(missing_ok=True)
        return False
    with pending.open("rb") as written:
        os.fsync(written.fileno())
    os.replace(pending, archive)
    log.info("class-data-sharing archive for the local broker written: %s", archive)
    _forget_unused(archive)
    return True


# An archive is written once and then only mapped, so its modification time says when a broker
# last started on it (options() sets it). Another JVM or Kafka version may still be in use beside
# this one (an archive per pair), so only those no start mapped for this long are deleted.
UNUSED_ARCHIVE_S = 14 * 86400.0


def _mark_used(archive: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only cache still maps
        os.utime(archive)


def _forget_unused(kept: Path) -> None:
    """Delete the archives no broker started on for UNUSED_ARCHIVE_S (tens of MB each): every
    JDK update or new set of jars names a new one, and the old ones were never used again."""
    now = time.time()
    for archive in kept.parent.glob("kafka-*.jsa"):
        with contextlib.suppress(OSError):  # another start may delete it first
            if archive != kept and now - archive.stat().st_mtime > UNUSED_ARCHIVE_S:
                archive.unlink()
                log.info("deleted %s: a class-data archive no broker started on for %d days",
                         archive, UNUSED_ARCHIVE_S // 86400)


def discard(pending: Path) -> None:
    """After a kill: what the broker may have half-written is not an archive."""
    pending.unlink(missing_ok=True)
