"""The decoy archives exactly what was on the requests topic, readable by any Avro tool."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Producer

from services.cli.replay import ReplaySettings, Scored, Skipped, _requests_from_archive, _skipped_notes
from services.client.client import make_request
from services.core.codec import codec
from services.core.ranges import parse_bounds
from services.core.settings import Topics
from services.decoy.archive import iter_archive, read_gaps, read_manifest
from services.decoy.service import Decoy
from services.decoy.settings import DecoySettings
from services.model_worker.models import demo_rows
from tests.integration.harness import Services, read_topic, wait_until

pytestmark = pytest.mark.kafka


def send_requests(config: dict[str, Any], topic: str, n: int, garbage: int = 0) -> None:
    producer = Producer(config)
    requests = codec("request")
    for row in demo_rows(n, seed=31):
        record = make_request(row, budget_ms=1000, reply_topic=None, reply_partition=None)
        producer.produce(topic, requests.encode(record), key=record["request_id"])
    for i in range(garbage):
        producer.produce(topic, b"\x01not a request " + bytes([i]), key=b"junk")
    assert producer.flush(30) == 0


def start_decoy(services: Services, bootstrap: str, prefix: str, archive: Path, **settings: Any) -> Decoy:
    decoy: Decoy = services.start(Decoy(DecoySettings(bootstrap=bootstrap, topic_prefix=prefix,
                                                      archive_dir=str(archive), **settings)))
    return decoy


def test_archive_holds_exactly_the_requests_sent(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any], tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    decoy = start_decoy(services, bootstrap, prefix, archive, roll_mb=0.05)  # small files: several of them
    send_requests(config, topics.requests, 1500, garbage=5)
    wait_until(lambda: decoy.archived >= 1505, 60, "the decoy to archive every record")
    services.stop_all()  # SIGTERM-equivalent: the open file is sealed into the manifest

    on_topic = {(m.partition(), m.offset()): m for m in read_topic(config, topics.requests, expect=1505)}
    archived = list(iter_archive(archive))
    assert len(archived) == len(on_topic) == 1505
    for record in archived:
        original = on_topic[(record["partition"], record["offset"])]
        assert record["topic"] == topics.requests
        assert record["value"] == original.value(), "the exact bytes as on the wire"
        assert record["key"] == original.key()
        assert record["timestamp"] == original.timestamp()[1]
    manifest = read_manifest(archive)
    assert len(manifest) >= 2 and sum(f.records for f in manifest) == 1505
    assert json.loads((archive / "manifest.json").read_text())["files"][0]["sha256"]
    # Any Avro tool can read the files: plain fastavro with the schema embedded in each file.
    with (archive / manifest[0].name).open("rb") as handle:
        reader = fastavro.reader(handle)
        assert reader.writer_schema is not None and reader.writer_schema["name"] == "io.rendezvous.ArchivedRequest"
        assert sum(1 for _ in reader) == manifest[0].records


@pytest.mark.parametrize("start_from", ["earliest", "latest"])
def test_records_deleted_before_the_decoy_archived_them_are_said_and_counted_as_a_gap(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any], tmp_path: Path,
    caplog: pytest.LogCaptureFixture, start_from: str,
) -> None:
    """The decoy stopped, the topic's retention deleted records it had not archived, and it resumed
    at the partition's start: only librdkafka's own warning told of the gap (a review). With
    `--start-from latest` it resumed at the partition's end: the records after the gap, still on
    the topic, were skipped without a word (a later review)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    from services.decoy.service import MISSED

    archive = tmp_path / "archive"
    producer = Producer(config)
    first = start_decoy(services, bootstrap, prefix, archive, start_from=start_from)  # ready: assigned
    send_to_partition(producer, topics.requests, 10)
    wait_until(lambda: first.archived >= 10, 60, "the decoy to archive the first records")
    services.stop_all()
    send_to_partition(producer, topics.requests, 10)  # offsets 10..19, while no decoy reads
    admin = AdminClient(config)  # kept: the futures of a client collected meanwhile never resolve
    deleted = admin.delete_records([TopicPartition(topics.requests, 0, 15)])
    for future in deleted.values():
        future.result(30)
    missed_before = MISSED._value.get()
    restarted = Services(threading.Event())  # `services` stays stopped
    try:
        with caplog.at_level("WARNING", logger="services.decoy.service"):
            second = start_decoy(restarted, bootstrap, prefix, archive, start_from=start_from)
            wait_until(lambda: second.archived >= 5, 60, "the decoy to archive what is left")
    finally:
        restarted.stop_all()
    assert MISSED._value.get() - missed_before == 5
    assert any(f"{topics.requests}[0]: records at offsets 10 to 14 were deleted from the topic before" in r.getMessage()
               for r in caplog.records)
    assert sorted(r["offset"] for r in iter_archive(archive) if r["partition"] == 0) == [*range(10), *range(15, 20)]
    # The manifest names the gap, and a replay of the archive says its range may lack those requests.
    (gap,) = read_gaps(archive)
    assert (gap.topic, gap.partition, gap.first, gap.last) == (topics.requests, 0, 10, 14)
    settings = ReplaySettings(model="demo:champion", source="archive", archive_dir=str(archive), bootstrap=bootstrap,
                              topic_prefix=prefix)
    skipped, scored = Skipped(), Scored()
    for record in _requests_from_archive(settings, parse_bounds("", "", "", 0), skipped):
        scored.took(record)
    assert any(f"{topics.requests} deleted them (its retention) before the decoy archived them: partition 0, "
               "offsets 10 to 14 (found gone at" in note for note in _skipped_notes(settings, skipped, scored))


@pytest.mark.parametrize("start_from", ["earliest", "latest"])
def test_records_deleted_while_the_running_decoy_was_behind_are_a_gap_said_and_counted(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any], tmp_path: Path,
    start_from: str,
) -> None:
    """The check for deleted records ran at assignment alone: a running decoy behind its backlog
    met a position the topic no longer held, and librdkafka's reset moved it on without a word,
    to the first record left (no gap named) or, under `latest`, to the partition's end (every
    record still on the topic skipped; a review)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    from services.decoy.service import MISSED

    archive = tmp_path / "archive"
    producer = Producer(config)
    decoy = start_decoy(services, bootstrap, prefix, archive, start_from=start_from)
    send_to_partition(producer, topics.requests, 10)
    wait_until(lambda: decoy.archived >= 10, 60, "the decoy to archive the first records")
    assert decoy.ctx is not None
    consumer, held = decoy.ctx.consumer.native, [TopicPartition(topics.requests, 0)]
    on_loop(decoy, lambda: consumer.pause(held))  # behind, as under a backlog: its position stays at 10
    send_to_partition(producer, topics.requests, 10)  # offsets 10..19
    admin = AdminClient(config)
    for future in admin.delete_records([TopicPartition(topics.requests, 0, 15)]).values():
        future.result(30)
    missed_before = MISSED._value.get()
    on_loop(decoy, lambda: consumer.resume(held))
    wait_until(lambda: decoy.archived >= 15, 60, "the decoy to archive what is left")
    services.stop_all()
    assert MISSED._value.get() - missed_before == 5
    assert sorted(r["offset"] for r in iter_archive(archive) if r["partition"] == 0) == [*range(10), *range(15, 20)]
    (gap,) = read_gaps(archive)
    assert (gap.topic, gap.partition, gap.first, gap.last) == (topics.requests, 0, 10, 14)


def on_loop(decoy: Decoy, action: Callable[[], object]) -> None:
    """`action` run on the decoy's poll loop, at its next tick: the client serializes its calls,
    and one from another thread waited for good behind the loop's polls."""
    done = threading.Event()
    tick = decoy.on_tick

    def then_tick() -> None:
        if not done.is_set():
            action()
            done.set()
        tick()

    decoy.on_tick = then_tick  # type: ignore[method-assign]
    try:
        assert done.wait(30), "the decoy's loop never ticked"
    finally:
        decoy.on_tick = tick  # type: ignore[method-assign]


def send_to_partition(producer: Producer, topic: str, n: int) -> None:
    requests = codec("request")
    for row in demo_rows(n, seed=32):
        record = make_request(row, budget_ms=1000, reply_topic=None, reply_partition=None)
        producer.produce(topic, requests.encode(record), key=record["request_id"], partition=0)
    assert producer.flush(30) == 0


def test_a_quiet_topics_last_records_are_sealed_once_the_file_is_old_enough(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any], tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    decoy = start_decoy(services, bootstrap, prefix, archive, roll_seconds=1.0)
    send_requests(config, topics.requests, 20)
    wait_until(lambda: decoy.archived >= 20, 60, "the decoy to archive the requests")
    # Nothing more arrives: the file is sealed by its age alone, while the decoy runs.
    wait_until(lambda: sum(f.records for f in read_manifest(archive)) == 20, 30, "the open file to be sealed")
    assert not list(archive.glob("*.part"))
    assert len(list(iter_archive(archive))) == 20


def test_a_torn_file_left_by_a_crash_is_recovered_on_start(tmp_path: Path) -> None:
    from services.decoy.archive import ArchiveWriter

    writer = ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600)
    rows = [{"topic": "t", "partition": 0, "offset": i, "timestamp": 1_700_000_000_000 + i, "key": None,
             "value": b"v%d" % i, "archived_at": 1} for i in range(100)]
    writer.append(rows[:60])
    part = next(tmp_path.glob("*.part"))
    first_block_end = part.stat().st_size
    writer.append(rows[60:])
    data = part.read_bytes()
    part.write_bytes(data[: first_block_end + (len(data) - first_block_end) // 2])  # a crash tore block 2

    ArchiveWriter(tmp_path, roll_bytes=1 << 30, roll_seconds=3600).close()
    recovered = [r["offset"] for r in iter_archive(tmp_path)]
    assert recovered == list(range(60)), "the fsynced first block survives; the torn one is dropped"
    assert not list(tmp_path.glob("*.part"))
