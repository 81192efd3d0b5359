"""The local broker's class-data-sharing archive on a real JVM: a clean stop writes it, the next
broker maps it (seen in /proc/<pid>/maps) and serves as before; a kill leaves nothing behind; one
cut short is deleted and the broker started without it."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from services.core.kafka import create_topics
from services.localkafka.broker import ephemeral_broker

pytestmark = pytest.mark.kafka


def _started(tmp: Path, cds_dir: Path) -> tuple[float, bool]:
    """Start a broker and write a record through it: how long the start took, and whether its
    JVM maps an archive from `cds_dir`."""
    began = time.monotonic()
    with ephemeral_broker(tmp, cds_dir=cds_dir) as broker:
        took = time.monotonic() - began
        assert broker.pid is not None
        maps = Path(f"/proc/{broker.pid}/maps").read_text()
        # The topic made first: the broker creates none on its own, and a record for a missing
        # topic failed after librdkafka's 30 s wait for it, which a flush(30) counted as delivered.
        create_topics({"bootstrap.servers": broker.bootstrap}, {"cds-check": (1, {})})
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        delivered: list[object] = []
        producer.produce("cds-check", b"x" * 100, on_delivery=lambda err, _msg: delivered.append(err))
        assert producer.flush(30) == 0 and delivered == [None], f"the broker serves: {delivered}"
        return took, str(cds_dir) in maps


def test_a_clean_stop_writes_the_archive_and_the_next_broker_maps_it(tmp_path: Path) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or not (shutil.which("java") and shutil.which("mvn")):
        pytest.fail("this test starts brokers of its own: it needs Java 17 and Maven")
    cds_dir = tmp_path / "cds"
    first, first_maps = _started(tmp_path / "first", cds_dir)
    archives = sorted(cds_dir.glob("*.jsa"))
    assert len(archives) == 1 and archives[0].stat().st_size > 1_000_000, list(cds_dir.iterdir())
    assert not list(cds_dir.glob("*.part")), "the pending file was adopted"
    assert not first_maps, "no archive existed for the first broker"
    second, second_maps = _started(tmp_path / "second", cds_dir)
    assert second_maps, "the second broker's JVM maps the archive"
    print(f"FIGURES broker start: without archive {first:.1f} s (writes it), with archive {second:.1f} s, "
          f"archive {archives[0].stat().st_size / 1e6:.0f} MB")
    # Cut short (its data not on disk before a power loss): the JVM mapping it died of SIGBUS at every
    # start (a review). It is deleted and the broker started again without it, which writes another.
    with archives[0].open("r+b") as archive:
        archive.truncate(5_000_000)
    _third, third_maps = _started(tmp_path / "third", cds_dir)
    assert not third_maps, "the damaged archive is not mapped again"
    rewritten = sorted(cds_dir.glob("*.jsa"))
    assert rewritten == archives and rewritten[0].stat().st_size > 5_000_000, "a whole one written at the stop"
