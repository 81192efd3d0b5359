"""The decoy's durable archive: rolling Avro object container files plus a manifest.

Layout of an archive directory:

    manifest.json                      every finished file: records, bytes, sha256,
                                       per-partition offset range, timestamp range; the
                                       gaps: records the topic deleted (its retention)
                                       before the decoy archived them; and, once the decoy's
                                       own retention deleted files, the time before which
                                       records may be gone (`retained_from`)
    requests-<start ms>-<seq>.avro     finished files (Avro container, schema inside)
    requests-<start ms>-<seq>.avro.part   the file being written

Durability: records are written as they come and flushed and fsynced (`sync`) before the decoy
commits their offsets, so a committed record is on disk. After a crash the `.part`
file is sealed on start-up (its readable records kept, a torn last block dropped); records
after the last commit are read again, so the archive is at-least-once and readers drop
duplicates: the same (topic, partition, offset) with the same timestamp, among the last
DUPLICATE_WINDOW offsets of its partition, or, further back, within a span of offsets read before
and appended no later than its newest record (a re-read goes back to the last commit, further
only when commits failed for a while or the group's offsets were reset). The timestamp tells a
re-read from a new record at an old offset: a topic deleted and created again (a broker reset)
starts its offsets over.

A seal renames its file and names it in the manifest under an exclusive flock of the directory;
readers list the files and read the manifest under a shared one (`listing_lock`).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import fastavro
from fastavro.write import Writer

from services.core.avro_walk import varint
from services.core.codec import load_schema, schemas_dir
from services.core.errors import ConfigError, RendezvousError
from services.core.ranges import epoch_ms

log = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST = "manifest.json"
LOCK = "decoy.lock"  # held by the one decoy writing the directory (its pid inside, for the message)
PART = ".part"
DAMAGED = ".damaged"  # a recovered file's original, kept when it held a damaged block
RECOVERING = ".recovering"  # a recovered file's new copy, until it replaces the original
EXPIRE_EVERY_S = 60.0  # how often a decoy with a retention looks for files past it
LISTING_LOCK_WAIT_S = 5.0  # how long a seal or an expiry waits for readers to let the listing go


class ArchiveFailed(RendezvousError):
    """The archive's storage refused a write (a full disk, a read-only or deleted directory)."""


# The latest timestamp an archive's readers can read: fastavro turns timestamp-millis into a
# datetime, and one past the year 9999 (a producer may set any long) raised OverflowError, so the
# rest of its file was lost to replay and to a crash's recovery (a review).
LATEST_READABLE_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def archive_schema() -> Any:
    """The schema written into every archive file (timestamp-millis logical types intact)."""
    return fastavro.parse_schema(load_schema(schemas_dir() / "archived_request.avsc"))


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """Timestamps as epoch-ms ints (fastavro turns timestamp-millis into datetimes on read)."""
    for name in ("timestamp", "archived_at"):
        value = record[name]
        if isinstance(value, datetime):
            record[name] = epoch_ms(value)
    return record


@dataclass
class FileStats:
    """What the manifest says of one finished file."""

    name: str
    records: int = 0
    bytes: int = 0
    sha256: str = ""
    partitions: dict[str, list[int]] = field(default_factory=dict)  # "topic/p" -> [min, max] offset
    first_timestamp: int | None = None
    last_timestamp: int | None = None

    def see(self, record: dict[str, Any]) -> None:
        self.records += 1
        key = f"{record['topic']}/{record['partition']}"
        low_high = self.partitions.setdefault(key, [record["offset"], record["offset"]])
        low_high[0] = min(low_high[0], record["offset"])
        low_high[1] = max(low_high[1], record["offset"])
        ts = record["timestamp"]
        self.first_timestamp = ts if self.first_timestamp is None else min(self.first_timestamp, ts)
        self.last_timestamp = ts if self.last_timestamp is None else max(self.last_timestamp, ts)


@dataclass(frozen=True)
class Gap:
    """Records of a partition the topic deleted (its retention) before the decoy archived them."""

    topic: str
    partition: int
    first: int  # the first and last offset missing
    last: int
    noticed_at: int  # epoch ms the decoy found them gone: each was appended before


class ArchiveWriter:
    """Appends records to the open file; rolls by size or age; keeps the manifest."""

    def __init__(self, directory: Path, *, roll_bytes: int, roll_seconds: float, codec: str = "deflate",
                 retain_ms: int = 0):
        self.directory = directory
        self.roll_bytes = roll_bytes
        self.roll_seconds = roll_seconds
        self.codec = codec
        self.retain_ms = retain_ms  # sealed files whose newest record is older are deleted; 0: none
        self._next_expiry = 0.0  # monotonic: `expire` looks at most once per EXPIRE_EVERY_S
        self._schema = archive_schema()
        self._file: BinaryIO | None = None
        self._writer: Writer | None = None
        self._stats: FileStats | None = None
        self._opened_at = 0.0
        self._seq = 0
        self._unsynced = False  # records written since the last fsync
        self._failed: ArchiveFailed | None = None
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # made here: its owner's only (`_private`)
        except OSError as exc:
            raise ConfigError(f"cannot create archive directory {directory}: {exc.strerror}") from None
        self._lock = _hold(directory)
        _make_private(directory)
        manifest = read_whole_manifest(directory)
        self.manifest, self.gaps, self.retained_from = manifest.files, manifest.gaps, manifest.retained_from
        self.sealed_bytes = sum(stats.bytes for stats in self.manifest)  # of the files the manifest names
        self.expired_files = 0  # deleted by the retention since this writer started
        # First: a retention turned on to make room on a full disk must make it before the recovery
        # and the first write need it (they failed with it, at every start; a review).
        self._expire(int(time.time() * 1000))
        # A full disk here said `error: No space left on device`, naming neither the archive nor
        # what was being done (a review).
        with self._storage("recover the files a crash left", "at start"):
            self._recover_parts()
            self._adopt_sealed()

    @property
    def healthy(self) -> bool:
        """False once the storage failed: nothing is written, synced or sealed after that."""
        return self._failed is None

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append a batch and make it durable (flush + fsync) before returning."""
        self.write(records)
        self.sync()
        self.roll_if_old()

    def write(self, records: list[dict[str, Any]]) -> None:
        """Add records to the open file; durable only after the next `sync` (or roll)."""
        if not records:
            return
        with self._storage("write to"):
            if self._writer is None:
                self._open()
            assert self._writer is not None and self._stats is not None
            for record in records:
                self._writer.write(record)
                self._stats.see(record)
            self._unsynced = True
        self._roll_if_large()  # a backlog writes far more than --roll-mb between commits

    def sync(self) -> None:
        """Make every record written so far durable (flush + fsync); seal the file once it is
        `roll_bytes` large. `ArchiveFailed` if the storage refuses, or if the file lost its name
        meanwhile (its directory deleted: fsyncing a file no directory holds keeps nothing)."""
        self._make_durable()
        self._roll_if_large()

    def _roll_if_large(self) -> None:
        if self._file is not None and self._file.tell() >= self.roll_bytes:
            self.roll()

    def _make_durable(self) -> None:
        if not self._unsynced:
            return
        with self._storage("fsync"):
            assert self._writer is not None and self._file is not None
            self._writer.flush()
            self._file.flush()
            os.fsync(self._file.fileno())
            _still_named(self._file)
            self._unsynced = False

    @contextmanager
    def _storage(self, doing: str, name: str = "") -> Iterator[None]:
        """Turns a refusal of the storage into `ArchiveFailed` naming the directory, the file and
        what was being done, logged once; every later call raises it again."""
        if self._failed is not None:
            raise self._failed
        try:
            yield
        except OSError as exc:
            name = name or (Path(self._file.name).name if self._file is not None else "a new file")
            self._failed = ArchiveFailed(
                f"archive {self.directory}: cannot {doing} {name}: {exc.strerror or exc}; the decoy stops "
                "(what it read since its last commit is read again when it starts)")
            log.error("%s", self._failed)
            raise self._failed from None

    def note_gap(self, gap: Gap) -> None:
        """Name `gap` in the manifest, for replay to say that its range may lack those records. A
        decoy that crashed before it committed past a gap finds it again from the same offset,
        longer if retention deleted more meanwhile: one entry, the longest (two overlapping ranges
        were named; a review)."""
        same = [g for g in self.gaps if (g.topic, g.partition, g.first) == (gap.topic, gap.partition, gap.first)]
        if same and same[0].last >= gap.last:
            return
        gaps = [g for g in self.gaps if g not in same] + [gap]
        with self._storage("write the manifest of", MANIFEST):
            write_manifest(self.directory, self.manifest, gaps, self.retained_from)
        self.gaps = gaps

    def expire(self, now: int) -> int:
        """Delete the sealed files whose newest record was appended more than `retain_ms` before
        `now` (none while it is 0), at most once per EXPIRE_EVERY_S: an archive without retention
        filled its disk, and stopped the decoy (a review). The manifest drops them, and the gaps
        their time covers, and says from when on the archive is whole (`retained_from`), for a
        replay to say that a range starting earlier may lack requests; then the files go. Both
        under the listing lock: no reader finds a file named and gone."""
        if self.retain_ms <= 0 or time.monotonic() < self._next_expiry:
            return 0
        self._next_expiry = time.monotonic() + EXPIRE_EVERY_S
        return self._expire(now)

    def _expire(self, now: int) -> int:
        """How many files it deleted."""
        if self.retain_ms <= 0:
            return 0
        cutoff = now - self.retain_ms
        old = [f for f in self.manifest if f.last_timestamp is not None and f.last_timestamp < cutoff]
        if not old:
            return 0
        # Every record of a deleted file was appended before this; those appended from it on are all kept.
        newest_gone = max(f.last_timestamp for f in old if f.last_timestamp is not None)
        retained_from = max(self.retained_from or 0, newest_gone + 1)
        kept = [f for f in self.manifest if f not in old]
        gaps = [g for g in self.gaps if g.noticed_at >= retained_from]  # a gap's records precede its notice
        with self._storage("delete the files past its retention from", MANIFEST), \
                listing_lock(self.directory, exclusive=True):
            try:
                write_manifest(self.directory, kept, gaps, retained_from)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):  # the disk full, or the user's quota
                    raise
                # No room for the manifest's new copy: the files go first, and it is written in the
                # room they leave. A crash in between leaves it naming files gone, which the next
                # start's retention takes out of it.
                _unlink_all(self.directory, old)
                write_manifest(self.directory, kept, gaps, retained_from)
            _unlink_all(self.directory, old)
            _sync_directory(self.directory)
        self.manifest, self.gaps, self.retained_from = kept, gaps, retained_from
        self.sealed_bytes -= sum(f.bytes for f in old)
        self.expired_files += len(old)
        log.info("retention: deleted %d archive file(s), %d records, %.1f MiB, appended before %s; %d file(s) kept",
                 len(old), sum(f.records for f in old), sum(f.bytes for f in old) / 2**20,
                 datetime.fromtimestamp(retained_from / 1000, tz=UTC).isoformat(timespec="seconds"), len(kept))
        return len(old)

    def roll_if_old(self) -> None:
        """Seal the open file once it is `roll_seconds` old, whether or not records still come
        (the service asks on every pass of its loop): a quiet topic's last records reach a
        sealed file, in the manifest, in time too."""
        if self._file is not None and time.monotonic() - self._opened_at >= self.roll_seconds:
            self.roll()

    def roll(self) -> None:
        """Seal the open file (if any) and record it in the manifest."""
        if self._file is None or self._stats is None:
            return
        self._make_durable()
        part = Path(self._file.name)
        with self._storage("seal", part.name):
            self._file.close()
            self._file, self._writer = None, None
            self._seal(part, self._stats)
            self._stats = None

    def close(self) -> None:
        """Seal the open file; after a failure, only let go of it: its `.part` is recovered at
        the next start (sealing it would count records that never reached the disk)."""
        try:
            if self._failed is None:
                self.roll()
            elif self._file is not None:
                with contextlib.suppress(OSError):  # its buffer may not fit either
                    self._file.close()
                self._file, self._writer, self._stats = None, None, None
        finally:
            self._lock.close()  # lets the lock go (a process that ends lets it go too)

    def _open(self) -> None:
        # The directory still the one locked: replaced after a file was sealed (no file open to
        # notice it), the new one got files this decoy's manifest did not list, a replay named the
        # moved ones missing, and a second decoy took the new one unlocked (a review).
        try:
            _still_named(self._lock)
        except OSError:
            raise OSError(errno.ENOENT, f"the directory was replaced or removed since this decoy locked it (its {LOCK} "
                          "is gone)") from None
        # The sequence restarts with each process: after a clock step back onto the same
        # millisecond, the seal's rename would have replaced a sealed file, its records lost.
        while True:
            self._seq += 1
            name = f"requests-{int(time.time() * 1000)}-{self._seq:04d}.avro"
            path = self.directory / (name + PART)
            if not (self.directory / name).exists():
                break
        self._file = _private(path)
        # The new name must survive a crash before its records' offsets are committed (the file's
        # own fsync does not make its directory entry durable).
        _sync_directory(self.directory)
        self._writer = Writer(self._file, self._schema, codec=self.codec)
        self._stats = FileStats(name)
        self._opened_at = time.monotonic()

    def _seal(self, part: Path, stats: FileStats) -> None:
        final = part.with_name(part.name[: -len(PART)])
        # A reader between the rename and the manifest's write (the sha256 of 64 MiB takes a few
        # tenths of a second) found a sealed file the manifest did not name, and left it unread.
        with listing_lock(self.directory, exclusive=True):
            os.replace(part, final)
            _sync_directory(self.directory)  # the rename too must survive a crash
            self._record(final, stats)

    def _record(self, final: Path, stats: FileStats) -> None:
        stats.bytes = final.stat().st_size
        stats.sha256 = _sha256(final)
        self.manifest.append(stats)
        self.sealed_bytes += stats.bytes
        write_manifest(self.directory, self.manifest, self.gaps, self.retained_from)
        log.info("archived %s: %d records, %d bytes", final.name, stats.records, stats.bytes)

    def _recover_parts(self) -> None:
        """Seal `.part` files a crash left behind, keeping every record that can be read.

        The records are copied, one at a time, into a new file that then replaces the original:
        a crash during recovery leaves the original whole (rewriting it in place lost it all), and
        memory stays flat however far the records compress (1,000:1 made a 64 MiB file need GiBs)."""
        for stale in self.directory.glob("*" + PART + RECOVERING):
            stale.unlink()  # a recovery cut short: its original is still there
        for part in sorted(self.directory.glob("*" + PART)):
            if not _archive_name(part.name[: -len(PART)]):
                continue
            stats = FileStats(part.name[: -len(PART)])
            tears: list[Exception] = []
            copy = part.with_name(part.name + RECOVERING)
            with _private(copy) as handle:
                writer = Writer(handle, self._schema, codec=self.codec)
                for record in _readable_records(part, tears.append):
                    writer.write(record)
                    stats.see(record)
                writer.flush()
                handle.flush()
                os.fsync(handle.fileno())
            if tears and _torn_at_end(part):
                log.info("%s: its last block was being written at the crash: dropped", part.name)
            elif tears:
                # Reading stops at the first damaged block. A crash tears only the last one, but
                # damage inside the file would lose the blocks after it: the original is kept.
                damaged = part.with_name(part.name + DAMAGED)
                damaged.unlink(missing_ok=True)  # one a recovery cut short kept: this one is the same file
                with part.open("rb") as original, _private(damaged) as kept:  # the requests' too
                    shutil.copyfileobj(original, kept)
                    # Durable before the original is replaced: the only copy of the records after
                    # the damage (a power loss could bring it back empty; a review).
                    kept.flush()
                    os.fsync(kept.fileno())
                _sync_directory(self.directory)
                log.warning("%s: the original is kept as %s (delete it once checked)", part.name, damaged.name)
            if not stats.records:
                copy.unlink()
                part.unlink()
                continue
            os.replace(copy, part)
            log.warning("recovered %d records from an unfinished archive file %s", stats.records, part.name)
            self._seal(part, stats)

    def _adopt_sealed(self) -> None:
        """Record in the manifest a sealed file it does not name: a crash between the seal's rename
        and the manifest's write left its records (fsynced, their offsets committed) unread."""
        named = {stats.name for stats in self.manifest}
        for final in _unlisted(self.directory, named):
            stats = FileStats(final.name)
            for record in _readable_records(final):
                stats.see(record)
            # Only with a retention on (turned off, the file is kept) and records read (a damaged
            # file is kept, and said, by the reading).
            if (self.retain_ms > 0 and self.retained_from is not None and stats.last_timestamp is not None
                    and stats.last_timestamp < self.retained_from):
                # The retention had taken it out of the manifest when the crash came, before it went.
                log.info("%s is past the archive's retention (taken out of the manifest before a crash): deleted",
                         final.name)
                final.unlink()
                continue
            log.warning("%s was sealed but not in the manifest (a crash in between): adding it", final.name)
            self._record(final, stats)


def _torn_at_end(path: Path) -> bool:
    """Whether a file's damage is only what a crash leaves: nothing written at all, or a last
    block cut short (every block before it whole, no block's sync marker after it, and its
    declared size running past the end of the file or its end zeroed, as a power loss leaves
    it). Anything else may hide whole blocks after the damage: not a torn tail."""
    if path.stat().st_size == 0:
        return True  # opened, nothing flushed yet
    with path.open("rb") as handle:
        try:
            blocks = fastavro.block_reader(handle)
        except Exception:  # noqa: BLE001 - not even a header: not a crash's tear
            return False
        sync, end = blocks._header["sync"], handle.tell()  # the file's marker, and where the blocks begin
        try:
            for block in blocks:
                for _record in block:  # a block whose records cannot be read is damage inside
                    pass
                end = block.offset + block.size
        except Exception:  # noqa: BLE001 - whatever the codec meets, as in _readable_records
            handle.seek(end)
            rest = handle.read()
            return sync not in rest and (_runs_past(rest) or rest.endswith(bytes(len(sync))))
    return False  # nothing damaged in the framing or the blocks: not a torn tail


def _runs_past(block: bytes) -> bool:
    """Whether a block's declared extent (its count and size, its data, the 16-byte marker)
    is longer than the bytes there are."""
    _count, pos = varint(block, 0, len(block))
    if pos < 0:
        return True
    size, pos = varint(block, pos, len(block))
    return pos < 0 or pos + size + 16 > len(block)


def _still_named(file: BinaryIO) -> None:
    """`OSError` unless the open file is still the one its path names."""
    opened = os.fstat(file.fileno())
    try:
        named = os.stat(file.name)
    except FileNotFoundError:
        named = None
    if opened.st_nlink == 0 or named is None or (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino):
        raise OSError(errno.ENOENT, "it was deleted or replaced while being written (its directory removed?)")


@contextmanager
def listing_lock(directory: Path, *, exclusive: bool = False) -> Iterator[None]:
    """Holds the directory's listing still: the decoy seals a file (renames it and names it in the
    manifest) under the exclusive lock, a reader lists the files and reads the manifest under the
    shared one, so a reader sees a file either still being written or sealed and named. An advisory
    flock(2) on the directory itself (apart from the writer's lock file, which is a POSIX lock). A
    file system that refuses it (some network ones) leaves the listing unguarded, as before."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield  # the caller's own use of the directory says what is wrong with it
        return
    try:
        try:
            if exclusive:
                _lock_within(fd, directory, LISTING_LOCK_WAIT_S)
            else:
                fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError as exc:
            log.debug("%s: no listing lock (%s)", directory, exc.strerror)
        yield
    finally:
        os.close(fd)  # lets the lock go


def _lock_within(fd: int, directory: Path, wait_s: float) -> None:
    """The exclusive listing lock, waited for `wait_s` at most: a reader stopped while it held the
    shared one (Ctrl-Z, a full stderr pipe) held the decoy's poll loop for good (a review). Past
    it, the decoy goes on unguarded, as before the lock, and says so."""
    until = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= until:
                log.warning("%s: a reader has held the archive's listing lock for %.0fs: going on without it (that "
                            "reader may find a sealed file unnamed, or a deleted one named)", directory, wait_s)
                return
            time.sleep(0.05)  # pacing the tries: flock(2) has no timed wait


def _unlink_all(directory: Path, files: list[FileStats]) -> None:
    for stats in files:
        (directory / stats.name).unlink(missing_ok=True)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _readable_records(
    path: Path, torn: Callable[[Exception], None] = lambda _exc: None
) -> Iterator[dict[str, Any]]:
    """The records of a file up to its first damaged block (`torn` hears of the damage). A block's
    records are handed over only once the whole block is read and its sync marker checked:
    fastavro's record reader hands them over first, so a torn last block whose data a power loss
    zeroed gave records of zeros (topic '', offset 0) with the null codec, sealed and replayed."""
    with path.open("rb") as handle:
        try:
            for block in fastavro.block_reader(handle):  # each block's marker checked before it is given
                records = [_plain(record) for record in block if isinstance(record, dict)]
                yield from records
        # A torn block raises whatever its codec meets (IndexError, zlib.error, ...): one damaged
        # file must not stop the decoy at every start.
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: a damaged block (%s: %s); keeping what precedes it", path.name,
                        type(exc).__name__, exc)
            torn(exc)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Manifest:
    """What the manifest says: the sealed files, the gaps (none in a manifest written before it
    named them), and the append time (epoch ms) before which the decoy's retention deleted
    records (None: none deleted)."""

    files: list[FileStats] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    retained_from: int | None = None


def read_whole_manifest(directory: Path) -> Manifest:
    """The manifest, parsed once (it names every file: a year of rolls is 100,000 entries)."""
    return _from_manifest(directory, lambda data: Manifest(
        [_checked(FileStats(**entry)) for entry in data["files"]],
        [_checked_gap(Gap(**entry)) for entry in data.get("gaps", [])],
        _checked_time(data.get("retained_from"))), Manifest())


def read_manifest(directory: Path) -> list[FileStats]:
    return read_whole_manifest(directory).files


def read_gaps(directory: Path) -> list[Gap]:
    return read_whole_manifest(directory).gaps


def read_retained_from(directory: Path) -> int | None:
    return read_whole_manifest(directory).retained_from


def _checked_time(value: object) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise TypeError(f"retained_from {value!r:.80} is no epoch ms")


def _from_manifest(directory: Path, read: Callable[[dict[str, Any]], T], empty: T) -> T:
    path = directory / MANIFEST
    if not path.exists():
        return empty
    try:
        return read(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:  # [[[...]]] nests
        raise ConfigError(f"archive manifest {path} is unreadable: {str(exc)[:200]}") from None


def _checked_gap(gap: Gap) -> Gap:
    """TypeError unless each field has its type."""
    numbers = (gap.partition, gap.first, gap.last, gap.noticed_at)
    if not isinstance(gap.topic, str) or not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        raise TypeError(f"the gap entry {vars(gap)!r:.200} has a field of the wrong type")
    return gap


def _checked(stats: FileStats) -> FileStats:
    """TypeError unless each field has its type (a hand-edited manifest failed later, mid-replay);
    ValueError unless the name is one of the archive's own files and the sha256 a digest: a name
    with '..' or a whole path made replay read a file outside the archive, and an empty sha256
    turned the integrity check off."""
    whole = (stats.records, stats.bytes, *(t for t in (stats.first_timestamp, stats.last_timestamp) if t is not None))
    if not isinstance(stats.name, str) or not isinstance(stats.sha256, str) or not isinstance(stats.partitions, dict) \
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in whole):
        raise TypeError(f"the entry of {stats.name!r} has a field of the wrong type")
    if not _FILE_NAME.fullmatch(stats.name):
        raise ValueError(f"{stats.name[:80]!r} is not the name of an archive file (requests-<ms>-<seq>.avro)")
    if not _SHA256.fullmatch(stats.sha256):
        raise ValueError(f"the entry of {stats.name} has no sha256 of its file")
    return stats


_FILE_NAME = re.compile(r"requests-[0-9]+-[0-9]+\.avro")  # a plain name in the archive's directory
_SHA256 = re.compile(r"[0-9a-f]{64}")


_STRAY_NAMES_SAID: set[str] = set()


def _private(path: Path) -> BinaryIO:
    """A new file for writing that only its owner may read: the archive holds every request's
    features and payload (files were made by the process' umask, 0644: any user of the host read them)."""
    return open(path, "xb", opener=lambda name, flags: os.open(name, flags, 0o600))


def _make_private(directory: Path) -> None:
    """The archive's files an earlier release left readable by others (its umask's 0644) made
    their owner's only, as `_private` makes new ones; said once."""
    opened = [p for p in directory.glob("requests-*") if stat.S_IMODE(p.stat().st_mode) & 0o077]
    for path in opened:
        path.chmod(0o600)
    if opened:
        log.warning("%d archive file(s) in %s were readable by other users: now their owner's only (every "
                    "request's features and payload are in them)", len(opened), directory)


def _hold(directory: Path) -> BinaryIO:
    """The directory's lock, taken: a second decoy writing it would seal, recover and list the other's
    files as its own (both rewrite the manifest). A POSIX record lock: the process' own, so a writer
    opened again in one process (after a failure) takes it again; the system lets it go when the
    process ends, however it ends."""
    path = directory / LOCK
    try:
        handle = path.open("a+b")
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read(32).decode(errors="replace").strip() or "?"
        handle.close()
        raise ConfigError(f"archive directory {directory} is written by another decoy (pid {holder}): one decoy "
                          "a directory (give this one another --archive-dir)") from None
    handle.truncate(0)
    handle.write(str(os.getpid()).encode())
    handle.flush()
    return handle


def _archive_name(name: str) -> bool:
    """Whether `name` is one the decoy writes. Another (a copy, 'requests-old.avro') is left alone
    and said once: adopted into the manifest, it made every later read of it refuse the archive."""
    if _FILE_NAME.fullmatch(name):
        return True
    if name not in _STRAY_NAMES_SAID:
        _STRAY_NAMES_SAID.add(name)
        log.warning("%s is not an archive file's name (requests-<ms>-<seq>.avro): left alone", name[:200])
    return False


def _unlisted(directory: Path, named: set[str]) -> list[Path]:
    """Sealed archive files in `directory` the manifest does not name."""
    return [path for path in sorted(directory.glob("requests-*.avro"))
            if path.name not in named and _archive_name(path.name)]


def write_manifest(directory: Path, files: list[FileStats], gaps: list[Gap], retained_from: int | None = None) -> None:
    """Atomically replace the manifest (write a temp file, fsync, rename). The gaps and the
    retention's time are keys a reader of the files alone need not know."""
    data: dict[str, Any] = {"format": "rendezvous-serving decoy archive v1", "schema": "schemas/archived_request.avsc",
                            "files": [vars(f) for f in files], "gaps": [vars(g) for g in gaps]}
    if retained_from is not None:
        data["retained_from"] = retained_from
    tmp = directory / (MANIFEST + ".tmp")
    with tmp.open("w") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, directory / MANIFEST)


def check_archive(directory: Path) -> list[str]:
    """ConfigError unless `directory` is a decoy archive with a sealed file; the names of the files
    still being written."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: " + ("is not a directory" if directory.exists() else "no such directory"))
    open_files = sorted(path.name for path in directory.glob("requests-*.avro.part"))
    if not (directory / MANIFEST).exists():
        if _unlisted(directory, set()):
            raise ConfigError(f"{directory}: no {MANIFEST} yet (its first write failed: a full disk?); the decoy "
                              "writes it, with the sealed files in it, at its next start")
        if open_files:
            raise ConfigError(f"{directory}: the decoy has sealed no file yet (it seals one every --roll-seconds "
                              f"or --roll-mb; {open_files[0]} is being written): nothing to read before that")
        raise ConfigError(f"{directory} is not a decoy archive (no {MANIFEST})")
    return open_files


def iter_archive(
    directory: Path, *, from_ms: int | None = None, to_ms: int | None = None, unread: list[str] | None = None,
    retained: list[int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Archived records with from_ms <= timestamp < to_ms, once each (duplicates dropped). The files
    that may hold some and are not read are logged, and each is added to `unread` ("name: why"):
    a replay's report says its range may lack their requests (a damaged file only logged made a
    report on two thirds of a range read as the whole; a review). `retained` is given the time
    before which the decoy's retention had deleted records when the files were listed, if the
    range starts before it."""
    unread = [] if unread is None else unread
    with listing_lock(directory):
        open_files = check_archive(directory)
        manifest = read_whole_manifest(directory)
        files = manifest.files
        unlisted = _unlisted(directory, {stats.name for stats in files})
    retained_from = manifest.retained_from
    if retained is not None and retained_from is not None and (from_ms is None or from_ms < retained_from):
        retained.append(retained_from)
    if open_files:
        # Fsynced and committed, but still being written: read once sealed (a replay of the last
        # minutes of a running decoy misses them, and says so).
        log.warning("%d archive file(s) still being written, not read: %s (the newest requests, up to the decoy's "
                    "--roll-seconds)", len(open_files), ", ".join(open_files[:5]))
        unread += [f"{name}: still being written (the newest requests)" for name in open_files]
    seen: dict[tuple[str, int], _Recent] = {}
    if unlisted:
        # Sealed, but the manifest's write failed (a full disk): their records are committed. The
        # decoy's next start adds them; until then they are not read, and that is said.
        log.warning("%d archive file(s) sealed but not in the manifest yet, not read: %s (the decoy adds them at "
                    "its next start)", len(unlisted), ", ".join(path.name for path in unlisted[:5]))
        unread += [f"{path.name}: not in the manifest (the decoy adds it at its next start, or deletes it if its "
                   "retention had taken it out)" for path in unlisted]
    kept = sorted(path.name for path in directory.glob("*" + PART + DAMAGED))
    if kept:
        # A recovery read such a file up to its damaged block: what came after it is only there.
        log.warning("%d damaged original(s) of recovered archive files, not read: %s", len(kept), ", ".join(kept[:5]))
        unread += [f"{name}: the original of a recovered file, damaged inside: the records after its damaged block "
                   "are not read" for name in kept]
    for stats in files:
        if not _overlaps(stats, from_ms, to_ms):
            continue
        path = directory / stats.name
        try:
            damage = _damage(path, stats)
            if damage is None:
                yield from _first_times(_read_counting(path, stats, unread), seen, from_ms, to_ms)
                continue
        except OSError as exc:  # gone since the listing: raised when its read began, before any record
            if exc.errno not in (errno.ENOENT, errno.ESTALE):  # ESTALE: deleted by another NFS client
                raise
            damage = _missing(directory, stats)
        log.warning("archive file %s skipped: %s", stats.name, damage)
        unread.append(f"{stats.name}: {damage}")


def _first_times(records: Iterator[dict[str, Any]], seen: dict[tuple[str, int], _Recent], from_ms: int | None,
                 to_ms: int | None) -> Iterator[dict[str, Any]]:
    """The records of the range not read before (`seen`: what was, per partition)."""
    for record in records:
        ts = record["timestamp"]
        if (from_ms is not None and ts < from_ms) or (to_ms is not None and ts >= to_ms):
            continue
        recent = seen.get((record["topic"], record["partition"]))
        if recent is None:
            recent = seen[(record["topic"], record["partition"])] = _Recent()
        if recent.first_time(record["offset"], ts):
            yield record


def _missing(directory: Path, stats: FileStats) -> str:
    """Why a file the listing named is not there: the decoy's retention may have deleted it since
    (it runs while a replay reads; taken for damage, and a file gone between its checksum and its
    read ended the replay with 'No such file or directory'; a review)."""
    try:
        retained_from = read_retained_from(directory)
    except ConfigError:
        retained_from = None
    if retained_from is not None and stats.last_timestamp is not None and stats.last_timestamp < retained_from:
        return "deleted by the decoy's retention (--retain-hours) while the archive was read"
    return "missing"


def _read_counting(path: Path, stats: FileStats, unread: list[str]) -> Iterator[dict[str, Any]]:
    """The records of a sealed file; one whose checksum matches but that stops at a block that cannot
    be decoded is said in `unread`, with how much of it was read (it was read in part without a word:
    500 of 1,000 records, records an older release stamped past the year 9999; a review)."""
    read, tears = 0, list[Exception]()
    for record in _readable_records(path, tears.append):
        read += 1
        yield record
    if tears:
        note = f"{stats.name}: read {read:,} of its {stats.records:,} records: a block after them cannot be decoded"
        log.warning("archive file %s (%s)", note, tears[0])
        unread.append(note)


# Offsets of a partition, behind the highest one read, within which a record read again is known
# by its own offset and timestamp: a re-read starts at the last commit (one batch, --max-batch 1000
# by default, and what a commit interval of 100 ms reads, back). 2 MB a partition at most. Older
# offsets are kept as spans (`_Recent.spans`).
DUPLICATE_WINDOW = 10_000
MAX_SPANS = 1_000  # spans of older offsets a partition keeps (a new one only where offsets skip)
GAP = 2  # offsets this far apart are one span: a transaction's commit marker takes an offset


class _Recent:
    """The timestamps of one partition's recent offsets, and spans of the older ones: memory
    bounded by DUPLICATE_WINDOW and MAX_SPANS, whatever the archive's size (a set of every record
    read grew without bound)."""

    def __init__(self) -> None:
        self.timestamps: dict[int, int] = {}
        self.high = -1
        self.newest = -1  # the newest timestamp read
        # [first offset, last offset, newest timestamp] of the offsets gone from `timestamps`, in
        # order. A re-read from further back than the window (a commit that failed for a while, a
        # group's offsets reset) was taken for a topic created again: every record came twice.
        self.spans: list[list[int]] = []

    def first_time(self, offset: int, timestamp: int) -> bool:
        """False for a record read before (same offset, same timestamp; or, further back than the
        window, an offset of a span read before, appended no later than its newest record)."""
        if self.timestamps.get(offset) == timestamp:
            return False
        if offset < self.high - DUPLICATE_WINDOW:
            span = self._span_of(offset)
            if span is not None and timestamp <= span[2]:
                return False
            if timestamp > self.newest:
                # Far behind, not read before, and newer than all that was: the topic started over
                # (created again, its new records appended after all the old ones).
                self.timestamps, self.high, self.spans = {}, offset, []
            # Else an offset never read, older than those read: a backfill (a decoy started at the
            # latest offsets, its group later reset to the earliest). Kept with the rest: taken for
            # a topic started over, it made every record read after it come out twice (a review).
        self.timestamps[offset] = timestamp
        self.high = max(self.high, offset)
        self.newest = max(self.newest, timestamp)
        if len(self.timestamps) > 2 * DUPLICATE_WINDOW:
            self._trim(self.high - DUPLICATE_WINDOW)
        return True

    def _span_of(self, offset: int) -> list[int] | None:
        at = bisect.bisect_right(self.spans, offset, key=lambda span: span[0]) - 1
        return self.spans[at] if at >= 0 and offset <= self.spans[at][1] else None

    def _trim(self, floor: int) -> None:
        """Offsets below `floor` leave the window for the spans."""
        kept: dict[int, int] = {}
        for offset, timestamp in sorted(self.timestamps.items()):
            if offset >= floor:
                kept[offset] = timestamp
                continue
            last = self.spans[-1] if self.spans else None
            if last is not None and last[0] <= offset <= last[1] + GAP:
                last[1], last[2] = max(last[1], offset), max(last[2], timestamp)
            else:
                self.spans.append([offset, offset, timestamp])
        self.timestamps = kept
        self.spans.sort()
        del self.spans[:-MAX_SPANS]


def _damage(path: Path, stats: FileStats) -> str | None:
    """Why a finished file cannot be read as the manifest describes it, or None."""
    if not path.is_file():
        return _missing(path.parent, stats)
    if _sha256(path) != stats.sha256:
        return "its sha256 is not the manifest's (damaged since it was sealed)"
    return None


def _overlaps(stats: FileStats, from_ms: int | None, to_ms: int | None) -> bool:
    if stats.first_timestamp is None or stats.last_timestamp is None:
        return False
    if from_ms is not None and stats.last_timestamp < from_ms:
        return False
    return not (to_ms is not None and stats.first_timestamp >= to_ms)
