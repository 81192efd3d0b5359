"""The decoy: consumes the requests topic like a model, archives exactly what it read.

Commit order: each batch is written to the archive file as it comes; when the shared skeleton
commits (every commit interval, and when partitions are revoked), the file is flushed and
fsynced first, and only then do the positions of what it holds count as finished. A crash can
repeat records (readers de-duplicate them) but never lose a committed one. One fsync per commit,
not per batch: at 200 requests/s a poll hands over a few records at a time, and an fsync and a
deflate block for each made archiving a request cost more CPU than scoring it.
Nothing is decoded: the archive holds the wire bytes, so a replay sees exactly what every
model saw, bad records included.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_INVALID, KafkaException, Message, TopicPartition
from confluent_kafka import Consumer as NativeConsumer
from prometheus_client import Counter, Gauge

from services.core.errors import BrokerError
from services.core.kafka import partition_counts
from services.core.runtime import now_ms
from services.core.service import Context, Positions, Probed, SimpleHandler, StreamService, StreamSpec
from services.decoy.archive import LATEST_READABLE_MS, ArchiveFailed, ArchiveWriter, Gap
from services.decoy.settings import DecoySettings

log = logging.getLogger(__name__)

# A request is archived at most this much later for it: one wake-up (and one archive write) per
# 100 ms instead of per poll's few records (0.23 CPU-ms a request at 200 requests/s instead of 0.51).
GATHER_S = 0.1
ARCHIVED = Counter("rdv_decoy_archived_total", "Request records written to the decoy archive.")
ARCHIVED_BYTES = Counter("rdv_decoy_archived_bytes_total", "Value bytes written to the decoy archive.")
MISSED = Counter("rdv_decoy_missed_records_total",
                 "Request records deleted from the topic (retention) before the decoy archived them: gaps.")
ARCHIVE_BYTES = Gauge("rdv_decoy_archive_bytes",
                      "Bytes of the sealed files the archive's manifest names (on disk, after the codec).")
EXPIRED = Counter("rdv_decoy_expired_files_total", "Sealed archive files deleted by the retention (--retain-hours).")
DISK_FREE = Gauge("rdv_decoy_disk_free_bytes", "Bytes free for the decoy on its archive's file system.")
DISK_SIZE = Gauge("rdv_decoy_disk_size_bytes", "Size of the decoy archive's file system (bytes).")
DISK_EVERY_S = 10.0  # how often the archive's file system is asked for its free space


class Decoy(SimpleHandler, Probed):
    """Reads every request like a model and archives it; `run(stop)` until the flag is set."""

    def __init__(self, settings: DecoySettings):
        super().__init__()
        self.settings = settings
        self.topics = settings.topics()
        self.archived = 0
        self._archive: ArchiveWriter | None = None
        self._disk_asked_at = float("-inf")  # monotonic
        # In the archive file, not yet fsynced; and the starts `_out_of_range` moved partitions to,
        # in their place among the records (committed with what was read before them, in order).
        self._written: list[_Written] = []
        self._partitions = 0  # of the requests topic
        self._owned: set[int] = set()  # the partitions this decoy archives now
        # (topic, partition) -> the offset it reads from next, as far as the decoy knows: a
        # position below it that librdkafka reports out of range is one it has left (`_out_of_range`).
        self._reached = Positions()
        self._jumps: list[_Jump] = []  # chosen within this poll: placed once its records are written
        # --kafka-config auto.offset.reset equal to --start-from said what it says; the decoy's own
        # "error" would refuse it as set otherwise (a review): left out, not refused.
        config = {key: value for key, value in settings.librdkafka().items()
                  if not (key == "auto.offset.reset" and str(value) == settings.start_from)}
        self.service = StreamService(StreamSpec(
            name="decoy", config=config, subscription=[self.topics.requests],
            group_id=settings.group_id(), processing="durable", producer=False,
            max_batch=settings.max_batch, max_wait_s=0.5, gather_s=GATHER_S,
            connect_timeout_s=settings.connect_timeout_s,
            # Never librdkafka's reset: it jumped past records the topic deleted without a word, to
            # its end under `latest` (a review). Every start is chosen here (`_past_gaps`), and a
            # position the topic no longer holds is told to `_out_of_range`.
            consumer_config={"auto.offset.reset": "error"},
        ), self)
        self.ready = self.service.ready

    def run(self, stop: threading.Event) -> None:
        counts = partition_counts(self.settings.librdkafka(), [self.topics.requests],
                                  timeout=self.settings.connect_timeout_s)
        self._partitions = counts.get(self.topics.requests, 0)
        log.info("decoy archiving %s into %s", self.topics.requests, self.settings.archive_dir)
        self.service.run(stop)
        log.info("decoy stopping after %d records", self.archived)

    def start(self, ctx: Context) -> None:
        super().start(ctx)
        # Before the archive is opened: a full disk fails that at every start, and the alert on
        # the room left must see the disk then, not the gauges' zeros (a review).
        self._say_disk()
        self._archive = ArchiveWriter(Path(self.settings.archive_dir),
                                      roll_bytes=int(self.settings.roll_mb * 1024 * 1024),
                                      roll_seconds=self.settings.roll_seconds, codec=self.settings.codec,
                                      # A tiny --retain-hours is a retention still, not 0 ms: none.
                                      retain_ms=max(1, round(self.settings.retain_hours * 3_600_000))
                                      if self.settings.retain_hours > 0 else 0)
        EXPIRED.inc(self._archive.expired_files)  # at its start (later ones: on_tick)
        ctx.stack.callback(self._archive.close)
        ctx.consumer.on_out_of_range = self._out_of_range

    def on_tick(self) -> None:
        assert self._archive is not None
        self._archive.roll_if_old()
        EXPIRED.inc(self._archive.expire(now_ms()))
        ARCHIVE_BYTES.set(self._archive.sealed_bytes)
        if time.monotonic() >= self._disk_asked_at + DISK_EVERY_S:
            self._disk_asked_at = time.monotonic()
            self._say_disk()

    def _say_disk(self) -> None:
        """The archive's room, for an alert before a full disk stops the decoy (RdvDecoyDiskFilling)."""
        try:
            usage = shutil.disk_usage(self.settings.archive_dir)
        except OSError:
            return  # the archive's own next write says what is wrong with it
        DISK_FREE.set(usage.free)
        DISK_SIZE.set(usage.total)

    def on_batch(self, messages: list[Message]) -> None:
        if messages:
            assert self._archive is not None
            archived_at = now_ms()
            self._archive.write([_record(msg, archived_at) for msg in messages])
            self._reached.advance(messages)
        # A start chosen in this poll (its error came with the poll's records) goes after them: a
        # poll that never reached here (the loop ended) commits no jump past records in hand.
        if messages or self._jumps:
            self._written.append(_Written(messages, self._jumps))
            self._jumps = []

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        self._past_gaps(partitions)  # before the positions are taken: it may move them
        super().on_assigned(partitions)
        self._owned |= {tp.partition for tp in partitions}
        if 0 < len(self._owned) < self._partitions:
            # Two decoys with their own directories split the requests between them, and a replay
            # of either covered half the traffic as if it were all of it, without a word (a review).
            log.warning("decoy archives partition(s) %s of the %d of %s into %s: another member of group %s "
                        "archives the others into its own directory, and a replay of this one covers these only",
                        ", ".join(map(str, sorted(self._owned))), self._partitions, self.topics.requests,
                        self.settings.archive_dir, self.settings.group_id())

    def _past_gaps(self, partitions: list[TopicPartition]) -> None:
        """Records the topic deleted (its retention) while no decoy read them: the archive has a gap
        there, which only librdkafka's own warning told (a review). Said in one line each, counted,
        named in the manifest, and the partition resumes at the first record the topic still holds:
        left to auto.offset.reset, `--start-from latest` resumed at the partition's end, and the
        records after the gap, still on the topic, were skipped without a word (a review). A
        partition this group never committed starts where --start-from says, chosen here too."""
        if self.ctx is None or not partitions:
            return
        consumer = self.ctx.consumer
        starts: dict[tuple[str, int], int] = {}
        try:
            for tp in consumer.committed(partitions, timeout=10):
                if tp.error is not None:
                    continue
                low, high = _watermarks(consumer.native, tp.topic, tp.partition)
                start = self._start_for(tp.topic, tp.partition, tp.offset, low, high)
                if start is None:
                    self._reached.move_to(tp)
                else:
                    starts[(tp.topic, tp.partition)] = start
        except KafkaException as exc:  # a question, not the archiving: never a reason to stop
            # Those not started here are told to `_out_of_range` at their first fetch.
            log.warning("could not check %s for records deleted unarchived (%s): checked at the first fetch",
                        self.topics.requests, exc)
        if starts:
            for tp in partitions:
                tp.offset = starts.get((tp.topic, tp.partition), tp.offset)
            consumer.native.assign(partitions)  # assigned already (core/service.py): started here instead
        for (topic, partition), start in starts.items():
            self._reached.move_to(TopicPartition(topic, partition, start))

    def _out_of_range(self, position: TopicPartition) -> None:
        """A partition's position the topic does not hold (auto.offset.reset=error), met while
        archiving: a backlog's oldest records deleted by the topic's retention before the decoy
        read them. librdkafka's reset moved on without a word: to the first record left (the gap
        named nowhere) or, under `latest`, to the partition's end (every record still on the topic
        skipped; a review). Named, counted and resumed at the first record left, as at assignment;
        a partition with no position starts where --start-from says."""
        assert self.ctx is not None
        consumer = self.ctx.consumer
        topic, partition = position.topic, position.partition
        if partition not in self._owned:
            # Told late, of a partition released since (its error was queued before the revoke):
            # taken for news, its gap was counted again and the start the decoy chose committed
            # over the new owner's position (a review).
            return
        reached = self._reached.of(topic, partition)
        if reached is not None and position.offset < reached:
            # Told late, of a position it has left: the committed one (or none) it had between the
            # skeleton's assignment and `_past_gaps`' start. Taken for news, the gap was counted
            # twice, and a partition with no commit was read again from its start (tests caught it).
            return
        try:
            low, high = _watermarks(consumer.native, topic, partition)
        except KafkaException as exc:
            raise BrokerError(f"{topic}[{partition}]: its position {position.offset} is not on the topic, and where "
                              f"its records start could not be read ({exc})") from None
        start = self._start_for(topic, partition, position.offset, low, high)
        if start is None:  # past the end: the topic recreated, or records lost by the brokers
            log.warning("%s[%d]: the decoy's position %d is past the partition's end (%d): the topic was recreated "
                        "or lost records; it resumes at the first record the topic holds, %d", topic, partition,
                        position.offset, high, low)
            start = low
        self._reached.move_to(TopicPartition(topic, partition, start))
        self._restart_at(consumer.native, topic, partition, start)
        # Committed as a start: left below the gap, every later assignment found and counted the
        # same gap again, and a --start-from latest start was lost to a kill (a review).
        self._jumps.append(_Jump(topic, partition, start))
        self.ctx.commit_soon()

    def _restart_at(self, native: NativeConsumer, topic: str, partition: int, start: int) -> None:
        """Fetch `partition` from `start` again. Stopped by the error, its fetch takes no seek
        (librdkafka refuses one, _STATE): only an assignment starts it again, and an eager group's
        is the whole one (assign()), every other partition at the position the decoy reached."""
        try:
            native.seek(TopicPartition(topic, partition, start))
            return
        except KafkaException:
            pass
        assigned = native.assignment()
        # Where each stands: the client's position counts every record it returned, those of this
        # very poll too, which the decoy has not archived yet (its `_reached` lags them: started
        # there, they were archived twice; a review).
        positions = {(tp.topic, tp.partition): tp.offset for tp in native.position(assigned)}
        for tp in assigned:
            key = (tp.topic, tp.partition)
            known = positions.get(key, OFFSET_INVALID)
            tp.offset = start if key == (topic, partition) else (
                known if known >= 0 else self._reached.read_to().get(key, OFFSET_INVALID))
        native.assign(assigned)

    def _start_for(self, topic: str, partition: int, offset: int, low: int, high: int) -> int | None:
        """Where a partition at `offset` (the topic holding `low` to `high`) starts: one this group
        never read (no offset) at --start-from's end of it; one past records the topic deleted at
        the first record left, the gap named and counted; None where the topic holds its position
        or it is past the end (each caller's own case: `_past_gaps`, `_out_of_range`)."""
        if offset < 0:
            return low if self.settings.start_from == "earliest" else high
        if offset < low:
            self._gap(topic, partition, offset, low)
            return low
        return None

    def _gap(self, topic: str, partition: int, first: int, resumed_at: int) -> None:
        MISSED.inc(resumed_at - first)
        log.warning("%s[%d]: records at offsets %d to %d were deleted from the topic before this group archived them "
                    "(its retention): the archive has a gap there, named in its manifest; it resumes at %d", topic,
                    partition, first, resumed_at - 1, resumed_at)
        self._note_gap(Gap(topic, partition, first, resumed_at - 1, now_ms()))

    def _note_gap(self, gap: Gap) -> None:
        """The gap in the manifest, for replay to name. A storage that refuses it is said by the
        archive, and stops the decoy at its next write (not here: a rebalance callback)."""
        assert self._archive is not None
        with contextlib.suppress(ArchiveFailed):
            self._archive.note_gap(gap)

    def on_released(self, partitions: list[TopicPartition], lost: bool) -> None:
        """Records of partitions lost without a commit are the next owner's to archive (a
        revoke's commit finished them first): they must not be finished here later, which would
        commit positions of partitions this decoy no longer owns."""
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._owned -= {tp.partition for tp in partitions}
        self._reached.forget(partitions)
        self._written = [batch.without(gone) for batch in self._written]
        self._jumps = [jump for jump in self._jumps if (jump.topic(), jump.partition()) not in gone]
        super().on_released(partitions, lost)

    def on_rewind(self) -> None:
        self._written = []  # re-read from the committed offsets: finished as they come again
        self._reached = Positions()  # read again from further back
        self._jumps.clear()
        super().on_rewind()

    def finished_offsets(self) -> list[TopicPartition]:
        """Asked by the skeleton before it commits: what was written is fsynced now, and only
        then finished."""
        assert self._archive is not None
        # After a failure (raised from here or from on_batch, ending the service) nothing more
        # is finished: what was written since the last sync is read again at the next start.
        if self._written and self._archive.healthy:
            self._archive.sync()
            written, self._written = self._written, []
            for batch in written:  # in order: a jump sets the position the records before it reached
                self.positions.advance(batch.messages)  # per batch: its numpy path (a loop per record cost 4x)
                for jump in batch.jumps:
                    self.positions.move_to(TopicPartition(jump.topic(), jump.partition(), jump.start))
                self.archived += len(batch.messages)
                ARCHIVED.inc(len(batch.messages))
                ARCHIVED_BYTES.inc(sum(len(msg.value() or b"") for msg in batch.messages))
        return super().finished_offsets()


class _Written:
    """One poll's records in the archive file, then the starts `_out_of_range` chose in that poll
    (committed after them, in order)."""

    __slots__ = ("jumps", "messages")

    def __init__(self, messages: list[Message], jumps: list[_Jump]):
        self.messages, self.jumps = messages, jumps

    def without(self, gone: set[tuple[str, int]]) -> _Written:
        """Those of partitions not released."""
        return _Written([msg for msg in self.messages if (msg.topic(), msg.partition()) not in gone],
                        [jump for jump in self.jumps if (jump.topic(), jump.partition()) not in gone])


class _Jump:
    """A partition's start moved by `_out_of_range`, committed after the records of its poll
    (it answers `topic()` and `partition()` as they do, for the filters of released partitions)."""

    __slots__ = ("_partition", "_topic", "start")

    def __init__(self, topic: str, partition: int, start: int):
        self._topic, self._partition, self.start = topic, partition, start

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition


def _watermarks(native: NativeConsumer, topic: str, partition: int) -> tuple[int, int]:
    """The first offset the partition holds and its end, asked of the broker (not the client's cache)."""
    low, high = native.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    return low, high


def _record(msg: Message, archived_at: int) -> dict[str, Any]:
    _kind, timestamp = msg.timestamp()
    key = msg.key()
    return {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        # None, or none an archive's reader can read: the time it was archived instead.
        "timestamp": timestamp if 0 < timestamp <= LATEST_READABLE_MS else archived_at,
        "key": key.encode() if isinstance(key, str) else key,
        "value": msg.value(),
        "archived_at": archived_at,
    }
