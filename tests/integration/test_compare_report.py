"""`rendezvous compare` on a real broker: a real run's log as a table and an HTML page that a
real browser (headless Chromium) renders; exact ranges by offset and by time; several reader
processes reading the same as one."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer

from services.client.client import Client
from services.compare_report.reader import plan, read_range
from services.compare_report.workers import read_parallel
from services.core.codec import codec
from services.core.ranges import Bounds, OffsetBound, TimeBound
from services.core.settings import Topics
from services.model_worker.models import demo_rows
from tests.integration.harness import Services, read_topic

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
THREE = ("champion", "challenger", "canary")
REQUESTS = 300
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_TIMEOUT_S = 90
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z


def rendezvous(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, check=False)  # fmt: skip


def table_rows(stdout: str) -> dict[str, list[str]]:
    """Cells of the rich table's body rows, by model name (the first word of the first cell)."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[cells[0].split()[0]] = cells
    return rows


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with no network side trips, a fresh profile and a bounded run time."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make system-deps` (deploy/ci/system-deps.sh)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S,
                          check=False)  # fmt: skip


def distinct_colours(png: Path) -> int:
    from matplotlib.image import imread

    pixels = imread(str(png))
    flat = (np.asarray(pixels)[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    return len(np.unique(flat, axis=0))


def test_report_of_a_real_run_in_the_terminal_and_in_a_browser(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any], tmp_path: Path
) -> None:
    for name in THREE:
        services.worker(bootstrap, prefix, f"demo:{name}")
    services.rendezvous(bootstrap, prefix, models=THREE)
    with Client(config, topics, budget_ms=20_000, answer_wait_s=60) as client:
        answers = client.score_many(demo_rows(REQUESTS, seed=21))
    assert len(answers) == REQUESTS
    assert len(read_topic(config, topics.log, expect=REQUESTS)) == REQUESTS  # every record logged

    html = tmp_path / "report.html"
    result = rendezvous("compare", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--since", "10m",
                        "--html", str(html))  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert set(rows) == set(THREE), result.stdout
    assert {name: cells[2] for name, cells in rows.items()} == {name: str(REQUESTS) for name in THREE}
    assert "★" in rows["champion"][0] and f"{REQUESTS} records" in result.stdout
    assert f"HTML report written to {html}" in result.stderr.replace("\n", "")

    dom = chromium("--dump-dom", html.as_uri(), profile=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f"<title>rendezvous compare: {topics.log}" in dom.stdout
    ids = re.findall(r'<figure id="(fig-[^"]+)"', dom.stdout)
    assert sorted(ids) == sorted(["fig-latency-cdf", "fig-score-qq", "fig-agreement-over-time",
                                  "fig-confusion-challenger", "fig-confusion-canary"])  # fmt: skip
    assert dom.stdout.count("<svg") == len(ids)

    png = tmp_path / "report.png"
    shot = chromium(f"--screenshot={png}", "--window-size=1200,2000", html.as_uri(), profile=tmp_path / "profile-png")
    assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
    assert distinct_colours(png) > 50, "the screenshot is (nearly) blank"


def comparison(i: int, created: int) -> dict[str, Any]:
    score = (i % 100) / 100
    return {"request_id": f"r{i}", "created_at": created, "deadline": created + 100, "answered_at": created + 5,
            "status": "OK", "chosen_model": "a", "reason": "", "schedule": "s", "schedule_version": 1,
            "outputs": [{"model": m, "version": "1", "score": score, "label": str(score > 0.5), "error": None,
                         "latency_ms": 5.0 + i % 7, "compute_ms": 1.0, "late": False} for m in ("a", "b")]}  # fmt: skip


@pytest.fixture
def timed_log(config: dict[str, Any], topics: Topics) -> str:
    """400 records, 100 per partition, with record timestamps T0 + i seconds (i = 0..399). Kept
    for good: two years old, they are past the broker's default retention, and its next check
    (every 5 minutes) deleted them under a test (CI: read 0 of 400)."""
    _alter_topic(config, topics.log, "retention.ms", "-1")
    producer = Producer(config)
    comparisons = codec("comparison")
    for i in range(400):
        producer.produce(topics.log, comparisons.encode(comparison(i, T0 + i * 1000)), key=f"r{i}".encode(),
                         partition=i % 4, timestamp=T0 + i * 1000)  # fmt: skip
    assert producer.flush(30) == 0
    return topics.log


def test_ranges_by_offset_and_by_time_are_exact(config: dict[str, Any], timed_log: str, bootstrap: str,
                                                prefix: str) -> None:  # fmt: skip
    by_offset = read_range(config, timed_log, Bounds(OffsetBound(10), OffsetBound(30)))
    assert len(by_offset.columns) == 4 * 20 and by_offset.offsets == 80
    # [T0 + 100 s, T0 + 200 s): records 100..199, whatever partition they are in.
    by_time = read_range(config, timed_log, Bounds(TimeBound(T0 + 100_000), TimeBound(T0 + 200_000)))
    created = np.sort(by_time.columns.frame().created_at)
    assert created.tolist() == [T0 + i * 1000 for i in range(100, 200)]
    capped = read_range(config, timed_log, Bounds(), max_records=150)
    assert len(capped.columns) == 150 and capped.truncated

    iso = "2024-05-01T12:05:00Z"  # T0 + 300 s: records 300..399
    result = rendezvous("compare", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--from", iso)
    assert result.returncode == 0, result.stderr
    assert {name: cells[2] for name, cells in table_rows(result.stdout).items()} == {"a": "100", "b": "100"}

    empty = rendezvous("compare", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--from", "offset:1000")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.startswith(f"no records in range ({timed_log} from offset 1000 to the end)")


def _alter_topic(config: dict[str, Any], topic: str, name: str, value: str) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    from services.core.kafka import admin

    entry = ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
    client = admin(config)  # referenced until the answer is in: a collected client cancels it
    for future in client.incremental_alter_configs([ConfigResource(ConfigResource.Type.TOPIC, topic,
                                                                   incremental_configs=[entry])]).values():
        future.result(30)


def test_records_deleted_after_the_range_was_planned_are_an_error_not_a_shorter_report(
    config: dict[str, Any], timed_log: str
) -> None:
    """Reset to the partition's new start, the reader found it at its end: a report of fewer
    records than the range, said nowhere."""
    from confluent_kafka import TopicPartition

    from services.compare_report.reader import read_partitions
    from services.core.errors import BrokerError
    from services.core.kafka import admin

    spans = plan(config, timed_log, Bounds(), timeout=15)
    client = admin(config)
    for future in client.delete_records([TopicPartition(timed_log, 2, 60)]).values():
        future.result(30)
    with pytest.raises(BrokerError, match=rf"records of {re.escape(timed_log)}-2 in the range were deleted"):
        read_partitions(config, timed_log, spans)
    kept = [s for s in spans if s.partition != 2]
    assert len(read_partitions(config, timed_log, kept)[0]) == 300  # the other partitions read whole


def test_two_reader_processes_read_what_one_does(config: dict[str, Any], timed_log: str) -> None:
    spans = plan(config, timed_log, Bounds(), timeout=15)
    one = read_range(config, timed_log, Bounds()).columns.frame()
    merged, skipped = read_parallel(config, timed_log, spans, workers=2)
    two = merged.frame()
    assert skipped == 0 and two.records == one.records == 400
    assert np.array_equal(np.sort(two.created_at), np.sort(one.created_at))
    assert sorted(two.models) == ["a", "b"] and np.array_equal(np.sort(two.latency_ms), np.sort(one.latency_ms))


def test_missing_topic_is_one_clear_line(bootstrap: str) -> None:
    result = rendezvous("compare", "--bootstrap", bootstrap, "--topic-prefix", f"missing{uuid.uuid4().hex[:6]}.")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "missing topic(s)" in errors[0], result.stderr


def test_a_seal_is_left_out_and_a_null_value_that_is_none_is_counted_as_skipped(
    config: dict[str, Any], timed_log: str
) -> None:
    """A null value without a control header is no comparison record: the live service
    dead-letters it, the report skipped it uncounted, as it does a seal (a review by experiment)."""
    from services.core.control_records import SEAL_HEADER

    producer = Producer(config)
    producer.produce(timed_log, None, partition=0, headers=[(SEAL_HEADER, b"")])
    producer.produce(timed_log, None, partition=1)
    assert producer.flush(30) == 0
    result = read_range(config, timed_log, Bounds())
    assert (len(result.columns), result.skipped) == (400, 1)
