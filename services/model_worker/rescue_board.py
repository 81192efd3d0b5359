"""The batch being scored, as shared memory: what the rescue process (rescue.py) reads of a worker
whose poll loop (and every Python thread with it) is stuck.

The worker writes it on the poll loop (`Board`), the rescue process only reads it (`read`), except
for the flag saying that it took the batch. A file in /dev/shm (memory, not disk) mapped by both:
plain `mmap`, so no resource tracker of `multiprocessing` unlinks it behind the worker's back.

Layout (little-endian):
  0   u64  sequence number of the batch (0: none yet)
  8   f64  time.monotonic() when the current model's turn began (0: no turn running), as
           `Watched.turn_started`
  16  u16  index of that model among the worker's hosted models
  24  u8   the in-process watchdog took the batch: the rescue stands down
  25  u8   the batch spans more partitions than fit: only the first MAX_RANGES are stored
  26  u16  partitions stored
  28  u16  length of the consumer's group metadata
  30  u8   the rescue process took the batch: the in-process watchdog stands down
  32       MAX_RANGES x (i32 partition, i64 first offset, i64 one past the last offset)
  ...      the group metadata (up to MAX_META bytes)
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Message

MAX_RANGES = 64
MAX_META = 1024
RUNS_FROM = 64  # records from which numpy finds the partitions' runs faster than a loop

_SEQ = struct.Struct("<Q")
_TURN = struct.Struct("<dH")
_FLAGS = struct.Struct("<BBHHB")
_RANGE = struct.Struct("<iqq")
_FLAGS_AT, _TOOK_AT, _RESCUING_AT, _RANGES_AT = 24, 24, 30, 32
_META_AT = _RANGES_AT + MAX_RANGES * _RANGE.size
SIZE = _META_AT + MAX_META

Range = tuple[int, int, int]  # partition, first offset, one past the last


@dataclass(frozen=True)
class Snapshot:
    seq: int
    turn_started: float
    model: int
    watchdog_took: bool
    overflow: bool
    ranges: tuple[Range, ...]
    meta: bytes
    rescuing: bool


def batch_ranges(sources: Sequence[Message]) -> list[Range]:
    """Per partition, the first offset of the batch and one past its last (a partition's records
    arrive in offset order; a batch of one topic)."""
    if len(sources) < RUNS_FROM:
        firsts: dict[int, int] = {}
        ends: dict[int, int] = {}
        for msg in sources:
            p, offset = msg.partition() or 0, msg.offset() or 0
            firsts.setdefault(p, offset)
            ends[p] = offset + 1
        return [(p, first, ends[p]) for p, first in firsts.items()]
    partitions = np.fromiter(map(Message.partition, sources), dtype=np.int64, count=len(sources))
    cuts = np.flatnonzero(partitions[1:] != partitions[:-1]) + 1
    ranges: dict[int, list[int]] = {}
    for start, stop in zip([0, *cuts.tolist()], [*cuts.tolist(), len(sources)], strict=True):
        p = int(partitions[start])
        first, last = sources[start].offset() or 0, sources[stop - 1].offset() or 0
        span = ranges.setdefault(p, [first, last + 1])
        span[1] = last + 1
    return [(p, first, end) for p, (first, end) in ranges.items()]


class Board:
    """The worker's side: created (and unlinked at `close`) by the worker."""

    def __init__(self, path: str | None = None) -> None:
        if path is None:
            fd, path = tempfile.mkstemp(prefix="rdv-rescue-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
            os.ftruncate(fd, SIZE)
        else:
            fd = os.open(path, os.O_RDWR)
        self.path = path
        try:
            self._buf = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self._seq = 0
        self._meta = b""

    def batch(self, sources: Sequence[Message], meta: bytes, models_turn: float) -> None:
        """A new batch, its first model's turn begun at `models_turn`. The sequence number and the
        turn are written last: the rescue reads a turn only with the batch it belongs to."""
        buf = self._buf
        ranges = batch_ranges(sources)
        stored = ranges[:MAX_RANGES]
        for i, rng in enumerate(stored):
            _RANGE.pack_into(buf, _RANGES_AT + i * _RANGE.size, *rng)
        if meta != self._meta:
            meta = meta if len(meta) <= MAX_META else b""  # none rather than a cut one: the rescue says so
            buf[_META_AT:_META_AT + len(meta)] = meta
            self._meta = meta
        _FLAGS.pack_into(buf, _FLAGS_AT, 0, len(ranges) > MAX_RANGES, len(stored), len(self._meta), 0)
        self._seq += 1
        _SEQ.pack_into(buf, 0, self._seq)
        _TURN.pack_into(buf, 8, models_turn, 0)

    def turn(self, started: float, model: int = 0) -> None:
        """A model's turn began at `started` (0: none is running)."""
        _TURN.pack_into(self._buf, 8, started, model)

    def watchdog_took(self) -> None:
        self._buf[_TOOK_AT] = 1

    def rescuing(self) -> bool:
        return self._buf[_RESCUING_AT] == 1

    def close(self) -> None:
        self._buf.close()
        unlink(self.path)


def unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Reader:
    """The rescue process's side."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._buf = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)

    def read(self) -> Snapshot:
        return read(self._buf)

    def take(self) -> None:
        self._buf[_RESCUING_AT] = 1

    def release(self) -> None:
        """The rescue stood down (the model returned): the in-process watchdog watches again."""
        self._buf[_RESCUING_AT] = 0

    def close(self) -> None:
        self._buf.close()


def read(buf: mmap.mmap | bytes | bytearray) -> Snapshot:
    (seq,) = _SEQ.unpack_from(buf, 0)
    started, model = _TURN.unpack_from(buf, 8)
    took, overflow, count, meta_len, rescuing = _FLAGS.unpack_from(buf, _FLAGS_AT)
    ranges = tuple(_RANGE.unpack_from(buf, _RANGES_AT + i * _RANGE.size) for i in range(min(count, MAX_RANGES)))
    meta = bytes(buf[_META_AT:_META_AT + min(meta_len, MAX_META)])
    return Snapshot(seq, started, model, bool(took), bool(overflow), ranges, meta, bool(rescuing))
