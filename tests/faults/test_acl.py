"""Least-privilege ACLs on a real broker: KRaft's StandardAuthorizer, one SCRAM user per role.

`rendezvous acl apply` (as the admin principal) creates the layout of services/control/acl.py;
then every role tries to write and read every topic of the deployment, and the measured
matrix must equal what the layout says. A model worker and the rendezvous run with only their
own grants and answer a client's request; so does the rescue process of a worker whose model
holds the interpreter lock (its transaction as the model principal); a client writing the control
topic is refused, and the CLI says so in one line naming the permission.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from services.cli.common import ensure_topics
from services.client.client import Client
from services.control.acl import ROLES, Principals, allows, layout
from services.core.errors import TopicMissing, TopicRefused
from services.core.kafka import admin, partition_counts, reader
from services.core.settings import Topics
from services.localkafka import LocalBroker, ephemeral_broker
from services.localkafka.config import SASL_LISTENER, sasl_client_config, scram_format_arg
from services.model_worker.models import demo_rows
from tests.faults.hung import HOLDING_THE_GIL, hung_worker, stuck_batch_answered_and_worker_reads_on
from tests.integration.harness import Services

pytestmark = pytest.mark.kafka

PRINCIPALS = Principals()
PASSWORDS = {role: f"{role}-pw-{uuid.uuid4().hex[:6]}" for role in ROLES}
MECHANISM = "SCRAM-SHA-512"


def user(role: str) -> str:
    return PRINCIPALS.of(role).split(":", 1)[1]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the ACL tests start their own Kafka broker: install {' and '.join(missing)}")
    prefix = f"listener.name.{SASL_LISTENER.lower()}"
    scram = [arg for role in ROLES for arg in ("--add-scram", scram_format_arg(user(role), PASSWORDS[role]))]
    options: dict[str, Any] = {
        "extra_listeners": {SASL_LISTENER: "SASL_PLAINTEXT"},
        "extra_properties": {
            f"{prefix}.sasl.enabled.mechanisms": MECHANISM,
            f"{prefix}.{MECHANISM.lower()}.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # The PLAINTEXT listeners (broker <-> controller) are the node's own: ANONYMOUS there.
            "super.users": "User:ANONYMOUS",
        },
        "format_args": scram,
    }
    with ephemeral_broker(tmp_path_factory.mktemp("kafka-acl"), **options) as running:
        yield running


def config(broker: LocalBroker, role: str) -> dict[str, Any]:
    return sasl_client_config(broker.listener(SASL_LISTENER), user(role), PASSWORDS[role], mechanism=MECHANISM)


def kafka_flags(role: str, broker: LocalBroker) -> list[str]:
    keys = ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password")
    conf = config(broker, role)
    return [arg for key in keys for arg in ("--kafka-config", f"{key}={conf[key]}")]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def deployment(broker: LocalBroker) -> tuple[str, Topics]:
    return new_deployment(broker)


def new_deployment(broker: LocalBroker) -> tuple[str, Topics]:
    """A deployment's topics (a fresh prefix), with its layout applied."""
    prefix = f"a{uuid.uuid4().hex[:8]}."
    topics = Topics.from_prefix(prefix)
    # The cluster operator (the PLAINTEXT listener's super user here) applies the layout; from then
    # on the admin principal creates the deployment's topics.
    done = cli("acl", "apply", "--bootstrap", broker.bootstrap, "--topic-prefix", prefix)
    assert done.returncode == 0, done.stderr
    ensure_topics(config(broker, "admin"), topics, partitions=1)
    return prefix, topics


def _can_write(conf: dict[str, Any], topic: str) -> bool:
    results: list[KafkaError | None] = []
    producer = Producer({**conf, "message.timeout.ms": 10_000})
    producer.produce(topic, b"acl-probe", key=b"acl-probe", partition=0,
                     on_delivery=lambda err, _msg: results.append(err))
    producer.flush(15)
    assert results, f"no delivery report for {topic}"
    err = results[0]
    assert err is None or err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    return err is None


def _readable(conf: dict[str, Any], topics: list[str]) -> dict[str, bool]:
    """Which topics this principal can read (each holds a record written by the admin)."""
    return {topic: _read_one(conf, topic) for topic in topics}


def _read_one(conf: dict[str, Any], topic: str) -> bool:
    # A topic the principal may not even describe is refused in the metadata (librdkafka then
    # waits for it silently); one it may describe but not read, in the fetch.
    reported: list[KafkaError] = []
    consumer = reader(conf, "acl", extra={"error_cb": reported.append})
    errors: list[str] = []
    try:
        described = consumer.list_topics(topic, timeout=10).topics[topic].error
        if described is not None and described.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            return False  # not even allowed to see it
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if any(err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED for err in reported):
                return False
            if msg is None:
                continue
            if msg.error() is None:
                return True
            if msg.error().code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                return False
            errors.append(msg.error().str())
        raise AssertionError(f"neither a record nor a refusal reading {topic}: {errors} {reported}")
    finally:
        consumer.close()


def test_every_role_can_do_exactly_what_the_layout_grants(broker: LocalBroker, deployment: tuple[str, Topics]) -> None:
    prefix, topics = deployment
    names = [getattr(topics, role) for role in ("requests", "scores", "answers", "log", "control", "deadletter",
                                                 "replies", "models")]
    admin = config(broker, "admin")
    for topic in names:
        assert _can_write(admin, topic), f"the admin cannot write {topic}"
    grants = layout(topics, prefix, PRINCIPALS)
    rows, mismatches = [], []
    for role in ROLES:
        conf = config(broker, role)
        readable = _readable(conf, names)
        for topic in names:
            measured = (_can_write(conf, topic), readable[topic])
            expected = (allows(grants, PRINCIPALS.of(role), "topic", topic, "WRITE"),
                        allows(grants, PRINCIPALS.of(role), "topic", topic, "READ"))
            verdicts = ["allowed" if ok else "refused" for ok in measured]
            rows.append(f"{role:<11} {topic.removeprefix(prefix):<11} write={verdicts[0]:<8} read={verdicts[1]}")
            if measured != expected:
                mismatches.append(f"{role} {topic}: measured {measured}, layout says {expected}")
    print("ACL matrix (principal x topic, as measured on the broker):\n" + "\n".join(rows))
    assert not mismatches, mismatches
    assert not allows(grants, PRINCIPALS.client, "topic", topics.control, "WRITE")


def test_apply_with_prune_takes_an_earlier_principals_grants_away_and_leaves_the_rest(broker: LocalBroker) -> None:
    """The client role moves to another principal: `acl apply --prune` removes the earlier one's
    grants on this deployment (it can no longer write requests), not on another deployment, and
    leaves a DENY grant the operator added."""
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    prefix, topics = new_deployment(broker)
    _other_prefix, other = new_deployment(broker)
    client = config(broker, "client")
    assert _can_write(client, topics.requests) and _can_write(client, other.requests)
    operator = admin({"bootstrap.servers": broker.bootstrap})  # the cluster's super user
    deny = AclBinding(ResourceType.TOPIC, topics.log, ResourcePatternType.LITERAL, PRINCIPALS.model, "*",
                      AclOperation.READ, AclPermissionType.DENY)
    for future in operator.create_acls([deny]).values():
        future.result()

    done = cli("acl", "apply", "--bootstrap", broker.bootstrap, "--topic-prefix", prefix,
               "--principal", "client=rdv-newclient", "--prune")

    assert done.returncode == 0, done.stderr
    assert f"removed: {PRINCIPALS.client} WRITE topic {topics.requests}" in done.stderr
    assert not _can_write(client, topics.requests)
    assert _can_write(client, other.requests)  # another deployment's grants stay
    anyone: Any = None
    denied = AclBindingFilter(ResourceType.TOPIC, topics.log, ResourcePatternType.LITERAL, anyone, anyone,
                              AclOperation.ANY, AclPermissionType.DENY)
    assert operator.describe_acls(denied).result() == [deny]


def test_services_run_with_only_their_own_grants(broker: LocalBroker, deployment: tuple[str, Topics]) -> None:
    prefix, topics = deployment
    sasl = broker.listener(SASL_LISTENER)
    services = Services(threading.Event())

    def credentials(role: str) -> tuple[str, ...]:
        return tuple(kafka_flags(role, broker)[1::2])

    try:
        services.worker(sasl, prefix, "demo:champion", kafka_config=credentials("model"))
        services.rendezvous(sasl, prefix, models=("champion",), kafka_config=credentials("rendezvous"))
        with Client(config(broker, "client"), topics, reply_partition=0, answer_wait_s=60) as client:
            answers = [client.score(row, budget_ms=20_000) for row in demo_rows(5, seed=3)]
        assert [a.status for a in answers] == ["OK"] * 5, answers
    finally:
        services.stop_all()


def test_a_client_writing_the_schedule_is_refused_in_one_line(
    broker: LocalBroker, deployment: tuple[str, Topics]
) -> None:
    prefix, _topics = deployment
    done = cli("schedule", "set", "--models", "champion", "--bootstrap", broker.listener(SASL_LISTENER),
               "--topic-prefix", prefix, "--force", *kafka_flags("client", broker))
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    assert "not authorized" in lines[0] and "WRITE" in lines[0] and f"{prefix}control" in lines[0], lines[0]


def test_a_topic_the_principal_may_not_see_is_said_so_not_called_missing(
    broker: LocalBroker, deployment: tuple[str, Topics]
) -> None:
    """The broker leaves such a topic out of the cluster's list: 'missing topic(s) ...; create them
    with rendezvous topics create' sent the operator to create a topic that was there (a review)."""
    prefix, topics = deployment
    with pytest.raises(TopicRefused, match=rf"not authorized to describe topic\(s\) {topics.log} at "):
        partition_counts(config(broker, "client"), [topics.log], timeout=15)
    with pytest.raises(TopicMissing) as missing:  # the admin may see any name under the prefix: truly missing
        partition_counts(config(broker, "admin"), [f"{prefix}nope"], timeout=15)
    assert not isinstance(missing.value, TopicRefused) and "create them with" in str(missing.value)
    done = cli("compare", "--bootstrap", broker.listener(SASL_LISTENER), "--topic-prefix", prefix,
               *kafka_flags("client", broker))
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert f"not authorized to describe topic(s) {topics.log}" in lines[0] and "topics create" not in lines[0]


def _can_join(conf: dict[str, Any], group: str, topic: str) -> bool:
    """Whether this principal may join `group` (it reads `topic`, which it may read)."""
    reported: list[KafkaError] = []
    consumer = Consumer({**conf, "group.id": group, "error_cb": reported.append, "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            errors = [*reported, *([msg.error()] if msg is not None and msg.error() is not None else [])]
            if any(err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED for err in errors):
                return False
            if consumer.assignment():
                return True
        raise AssertionError(f"neither an assignment nor a refusal joining {group}: {reported}")
    finally:
        consumer.close()


def test_a_client_may_not_join_the_gateways_reply_group(broker: LocalBroker, deployment: tuple[str, Topics]) -> None:
    """It could take the gateways' reply partitions: their calls would wait out their deadlines."""
    prefix, topics = deployment
    client = config(broker, "client")
    assert _can_join(client, f"{prefix}client-app", topics.replies)
    assert not _can_join(client, f"{prefix}gateway", topics.replies)


def test_the_rescue_of_a_worker_stuck_holding_the_gil_needs_only_the_models_grants(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """The rescue process reads the batch, writes its error Scores and commits its offsets for the
    worker's group in a transaction (`<group>.rescue`) as the model principal: the layout's
    transactional-id and group grants must be enough (fresh topics: the scenario counts Scores)."""
    prefix, topics = new_deployment(broker)
    worker = hung_worker(tmp_path / "worker.log", broker.listener(SASL_LISTENER), prefix, HOLDING_THE_GIL,
                         *kafka_flags("model", broker))
    try:
        stuck_batch_answered_and_worker_reads_on(worker, HOLDING_THE_GIL, topics, config(broker, "admin"))
    finally:
        worker.stop()
