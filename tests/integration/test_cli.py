"""The `rendezvous` command as a user runs it: clear one-line errors, send, the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.core.settings import Topics
from tests.integration.harness import Services

pytestmark = pytest.mark.kafka


def rendezvous(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in its own process."""
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0]


def test_unknown_model_spec_is_one_clear_line(bootstrap: str, prefix: str) -> None:
    result = rendezvous("model", "serve", "--bootstrap", bootstrap, "--topic-prefix", prefix,
                        "--model", "demo:nonesuch")
    assert_one_line_error(result, "demo:nonesuch", "champion")


def test_unreachable_broker_is_one_clear_line() -> None:
    result = rendezvous("serve", "--bootstrap", "127.0.0.1:9", "--connect-timeout-s", "2")
    assert_one_line_error(result, "no Kafka broker answered", "127.0.0.1:9")


def test_missing_topic_is_one_clear_line(bootstrap: str) -> None:
    missing = f"missing{uuid.uuid4().hex[:6]}."
    result = rendezvous("serve", "--bootstrap", bootstrap, "--topic-prefix", missing)
    assert_one_line_error(result, "missing topic(s)", "rendezvous topics create")


def test_bad_flag_value_is_one_clear_line() -> None:
    result = rendezvous("serve", "--bootstrap", "x:1", "--deadline-ms", "soon")
    assert_one_line_error(result, "--deadline-ms", "soon")


def test_help_never_shows_secrets_from_the_environment() -> None:
    result = rendezvous("serve", "--help", env={"RDV_KAFKA_CONFIG": "sasl.password=hunter2"})
    assert result.returncode == 0
    assert "--kafka-config" in result.stdout and "hunter2" not in result.stdout + result.stderr


def test_topics_create_then_send_prints_answers(
    services: Services, bootstrap: str, config: dict[str, Any]
) -> None:
    prefix = f"cli{uuid.uuid4().hex[:8]}."
    created = rendezvous("topics", "create", "--bootstrap", bootstrap, "--topic-prefix", prefix)
    assert created.returncode == 0, created.stderr
    again = rendezvous("topics", "create", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--partitions", "8")
    assert again.returncode == 0 and "created 0 topic(s): all existed" in again.stderr, again.stderr
    # They keep their 4: said, where "all existed" alone read as if 8 were in force.
    assert f"note: {prefix}requests has 4, {prefix}scores has 4" in again.stderr, again.stderr
    services.worker(bootstrap, prefix, "demo:champion")
    services.rendezvous(bootstrap, prefix, models=("champion",))
    result = rendezvous("send", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--demo-rows", "3",
                        "--budget-ms", "20000", "--wait-s", "60")
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 3
    assert {(a["model"], a["status"]) for a in answers} == {("champion", "OK")}
    assert "3 answers: 3 OK" in result.stderr
    bad = rendezvous("send", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--features", "{oops")
    assert_one_line_error(bad, "--features", "not valid JSON")
    # Nobody answers on another prefix: the requests unanswered are counted, in one line.
    idle = f"idle{uuid.uuid4().hex[:8]}."
    assert rendezvous("topics", "create", "--bootstrap", bootstrap, "--topic-prefix", idle).returncode == 0
    unanswered = rendezvous("send", "--bootstrap", bootstrap, "--topic-prefix", idle, "--demo-rows", "3",
                            "--wait-s", "2")
    assert_one_line_error(unanswered, "3 of 3 requests got no answer within 2s")
    assert unanswered.stdout == "" and "0 answers: none" in unanswered.stderr
    # A local queue that stays full (a broker away, or, here, one request held 10 s for a batch):
    # each request waited --wait-s for room, 5 rows for 8 s; --wait-s bounds them all (a review).
    held = rendezvous("send", "--bootstrap", bootstrap, "--topic-prefix", idle, "--demo-rows", "5", "--wait-s", "2",
                      "--kafka-config", "queue.buffering.max.messages=1", "--kafka-config", "linger.ms=10000")
    assert_one_line_error(held, "of 5 requests were not sent: --wait-s (2 s) ran out")


def test_topics_create_keeps_an_operators_retention_and_restores_what_the_deployment_relies_on(
    bootstrap: str, config: dict[str, Any]
) -> None:
    """`topics create` runs at every `helm upgrade`: it set the replies' retention back to an hour
    over an operator's own (a review of the docs, which said it left existing topics alone)."""
    from services.core.kafka import admin, topic_config
    from services.core.kafka.topics import _apply_configs

    prefix = f"keep{uuid.uuid4().hex[:8]}."
    assert rendezvous("topics", "create", "--bootstrap", bootstrap, "--topic-prefix", prefix).returncode == 0
    client = admin(config)
    _apply_configs(client, {f"{prefix}replies": {"retention.ms": "7200000"},
                            f"{prefix}requests": {"message.timestamp.type": "CreateTime"}}, 30)
    again = rendezvous("topics", "create", "--bootstrap", bootstrap, "--topic-prefix", prefix)
    assert again.returncode == 0, again.stderr
    assert topic_config(config, f"{prefix}replies", "retention.ms") == "7200000"
    assert topic_config(config, f"{prefix}requests", "message.timestamp.type") == "LogAppendTime"


def test_demo_runs_and_prints_the_live_table(bootstrap: str, topics: Topics) -> None:
    prefix = f"demo{uuid.uuid4().hex[:8]}."
    result = rendezvous("demo", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--duration", "8",
                        "--rate", "50", "--budget-ms", "2000", "--metrics-base-port", "0", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    assert "rendezvous demo" in table and "deadlines met" in table and "latency p50 / p99" in table
    assert "host CPU busy / stolen" in table  # from /proc/stat: the suite runs on Linux
    champion_rows = [line for line in table.splitlines() if "champion" in line and "OK" in line]
    assert champion_rows, table[-2000:]
    assert table.endswith("┘\n"), table[-200:]  # what is printed next starts a line of its own


def test_a_demo_on_topics_something_already_serves_is_refused_and_changes_nothing(
    bootstrap: str, prefix: str, config: dict[str, Any], topics: Topics
) -> None:
    """It joined the serving rendezvous' group and published a schedule naming its own models
    (kept after it failed): on a cluster in use, that changed what callers were answered."""
    from confluent_kafka import Consumer

    from services.cli.common import ensure_topics
    from services.control.schedule import Schedule
    from services.control.topic import load_book, publish
    from services.core.runtime import now_ms
    from tests.integration.harness import wait_until

    ensure_topics(config, topics, 4)
    publish(config, topics.control, Schedule(models=("champion", "challenger"), created_at=now_ms()))
    serving = Consumer({**config, "group.id": f"{prefix}rendezvous"})
    serving.subscribe([topics.requests])
    try:
        wait_until(lambda: serving.poll(0.2) is None and bool(serving.assignment()), 60, "the group to have a member")
        result = rendezvous("demo", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--duration", "5",
                            "--metrics-base-port", "0", timeout=120)
    finally:
        serving.close()
    assert_one_line_error(result, f"{prefix}rendezvous already has members on {bootstrap}", "--topic-prefix demo.")
    latest = load_book(config, topics.control, "default").latest
    assert latest is not None and (latest.version, latest.models) == (1, ("champion", "challenger"))


def test_a_session_timeout_the_broker_refuses_is_one_line_naming_the_flag_and_the_bounds(
    bootstrap: str, prefix: str
) -> None:
    """It said "consume failed: JoinGroup failed: Broker: Invalid session timeout (at ?[-1]@-1)"."""
    assert rendezvous("topics", "create", "--bootstrap", bootstrap, "--topic-prefix", prefix).returncode == 0
    result = rendezvous("serve", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--models", "champion",
                        "--session-timeout-ms", "10", "--metrics-port", "0", timeout=120)
    assert_one_line_error(result, "session.timeout.ms 10 (--session-timeout-ms) must be within the broker's "
                          "group.min.session.timeout.ms")


def test_a_requests_topic_stamped_by_its_clients_is_refused_at_start(
    bootstrap: str, prefix: str, config: dict[str, Any]
) -> None:
    """Only the scores topic was checked: with CreateTime requests a client sets the time a request
    starts the join's clock from."""
    from services.core.kafka import create_topics

    own = f"{prefix}requests-createtime"
    create_topics(config, {own: (4, {"message.timestamp.type": "CreateTime"})})
    result = rendezvous("serve", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--topic", f"requests={own}",
                        "--models", "champion")
    assert_one_line_error(result, own, "message.timestamp.type=CreateTime", "LogAppendTime")


@pytest.mark.parametrize(("partitions", "stamp", "said"), [
    (1, "CreateTime", "message.timestamp.type=CreateTime"),  # a writer's clock bounds effective_at
    (2, "LogAppendTime", "has 2 partitions: the control topic must have one"),  # readers would disagree
])
def test_a_control_topic_that_would_let_readers_disagree_or_be_frozen_is_refused_at_start(
    bootstrap: str, prefix: str, config: dict[str, Any], partitions: int, stamp: str, said: str
) -> None:
    from services.core.kafka import create_topics

    assert rendezvous("topics", "create", "--bootstrap", bootstrap, "--topic-prefix", prefix).returncode == 0
    own = f"{prefix}control-{partitions}-{stamp.lower()}"
    create_topics(config, {own: (partitions, {"cleanup.policy": "compact", "message.timestamp.type": stamp})})
    result = rendezvous("serve", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--topic", f"control={own}",
                        "--models", "champion", "--metrics-port", "0")
    assert_one_line_error(result, own, said)


def test_a_control_topic_that_deletes_old_versions_is_shown_with_a_warning_and_refused_by_the_gateway(
    bootstrap: str, prefix: str, config: dict[str, Any]
) -> None:
    """`schedule history` shows what such a topic holds, with one warning line on stderr (its JSON
    alone on stdout); a gateway refuses to start on it in one line, as a rendezvous does."""
    from services.control.schedule import Schedule
    from services.control.topic import encode_schedule
    from services.core.kafka import Producer, create_topics
    from services.core.runtime import now_ms
    from services.localkafka.config import free_port

    own = f"{prefix}control-deleting"
    create_topics(config, {own: (1, {"cleanup.policy": "delete", "retention.ms": "3600000",
                                     "message.timestamp.type": "LogAppendTime"})})
    schedule = Schedule(models=("champion", "challenger"), version=1, created_at=now_ms())
    producer = Producer(config)
    producer.produce(own, encode_schedule(schedule), key=schedule.new_key())  # publish would refuse the topic
    producer.flush()
    where = ("--bootstrap", bootstrap, "--topic-prefix", prefix, "--topic", f"control={own}")
    shown = rendezvous("schedule", "history", *where, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert [v["version"] for v in json.loads(shown.stdout)] == [1]
    warnings = [line for line in shown.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and f"{own} has cleanup.policy=delete with retention.ms=3600000" in warnings[0]
    refused = rendezvous("gateway", *where, "--http-addr", "127.0.0.1", "--http-port", str(free_port()),
                         "--grpc-port", "0", "--metrics-port", "0")
    assert_one_line_error(refused, f"{own} has cleanup.policy=delete")


def test_a_demo_metrics_port_taken_is_said_before_anything_starts(bootstrap: str, tmp_path: Path) -> None:
    """The demo waited two minutes for a rendezvous that had exited at once (its metrics port taken,
    e.g. by one left from a demo killed with -9), then said "a demo process exited; see its log";
    then it named the process and its error; now it tries the ports first and names the flag that
    moves them (a review: a second demo met the first one's). A process that exits is named with
    its own error (tests/unit/test_spawn.py)."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        result = rendezvous("demo", "--bootstrap", bootstrap, "--topic-prefix", f"demo{uuid.uuid4().hex[:8]}.",
                            "--duration", "5", "--metrics-base-port", str(port),
                            env={"RDV_CACHE_DIR": str(tmp_path)}, timeout=240)
    finally:
        taken.close()
    assert_one_line_error(result, f"the demo's metrics port {port} is taken (Address already in use",
                          "--metrics-base-port")
