"""A transaction the broker left hanging across a restart is ended by the rendezvous that owns it.

Seen with Kafka 4.4 (docs/failover.md): the broker was stopped while a rendezvous transaction
committed; its coordinator recorded the commit, but no partition of it got its commit marker. After
the restart the records are there without a marker, so the partition's last stable offset stays
behind its end for good and read_committed readers (recovery among them) stop there. The
rendezvous waits (answering the re-read requests without seeing those answers would answer them
twice); once the transaction has stayed open far beyond the transaction timeout, it writes a seal
record there in a transaction of its own: the same producer id's commit marker ends both.

The broker's fault is made here on purpose, since a broker cannot be asked for it: after a
committed transaction of the rendezvous' transactional id, the broker is stopped, the commit
marker is cut from the end of that answers partition's log (with the state that would remember
it: the producer snapshots and the clean-shutdown file), and the broker is started again on
that data, which is then what the real fault left.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition

from services.cli.common import ensure_topics
from services.client.client import make_request
from services.core.codec import codec
from services.core.settings import Topics
from services.localkafka import config as broker_config
from services.localkafka.broker import LocalBroker
from services.rendezvous.recovery import Mark
from services.rendezvous.settings import RendezvousSettings
from tests.faults.procs import Proc, until
from tests.faults.test_broker_outage import open_transactions
from tests.integration.harness import read_topic, send_offsets_as_member
from tests.integration.test_takeover_open_transaction import _answer

pytestmark = pytest.mark.kafka

INSTANCE = "rdv-0"
CONTROL_BATCH = 0x20  # record batch attributes: a control batch (a transaction marker)
ATTRIBUTES_AT = 21  # base offset 8, length 4, leader epoch 4, magic 1, crc 4: then attributes


def _requests(config: dict[str, Any], topic: str) -> list[str]:
    """Three requests on partition 0; the previous incarnation answers the first two."""
    requests, producer, ids = codec("request"), Producer(config), []
    for n in range(3):
        record = make_request({"x": 1.0}, budget_ms=2_000, reply_topic=None, reply_partition=None,
                              request_id=f"hanging-{n}")
        producer.produce(topic, requests.encode(record), key=record["request_id"].encode(), partition=0)
        ids.append(record["request_id"])
    assert producer.flush(10) == 0
    return ids


def _previous_incarnation(config: dict[str, Any], topics: Topics, answered: list[str]) -> None:
    """What the rendezvous `rdv-0` would have committed: one transaction per request, its answer
    and the offset past it, with a mark at or before where the outputs of what follows start
    (each answer and its commit marker take two offsets)."""
    settings = RendezvousSettings(instance=INSTANCE)
    txn = settings.transactional_id()
    producer = Producer({**config, "transactional.id": txn})
    producer.init_transactions(30)
    for offset, request_id in enumerate(answered):
        producer.begin_transaction()
        producer.produce(topics.answers, codec("answer").encode(_answer(request_id)), key=request_id.encode(),
                         partition=0)
        send_offsets_as_member(producer, config, settings.group_id(),
                               [TopicPartition(topics.requests, 0, offset + 1, metadata=Mark(offset, 0, txn).encode())])
        producer.commit_transaction(30)


def _offsets_partition(group: str, broker: LocalBroker) -> str:
    """The `__consumer_offsets` partition holding the group's offsets: Kafka's own choice, the
    group id's Java hash code (made non-negative) modulo the topic's partition count."""
    code = 0
    for char in group:
        code = (31 * code + ord(char)) & 0xFFFFFFFF
    count = int(_properties(broker)["offsets.topic.num.partitions"])
    return f"__consumer_offsets-{(code & 0x7FFFFFFF) % count}"


def _properties(broker: LocalBroker) -> dict[str, str]:
    return broker_config.parse_properties(broker.properties_file.read_text())


def _cut_last_commit_marker(broker: LocalBroker, partition: str) -> None:
    """Remove the marker that ends the partition's log (the broker is stopped), and what would
    let the broker remember it."""
    logs = broker_config.log_dir(_properties(broker))
    assert logs is not None
    directory = logs / partition
    segment = max(directory.glob("*.log"))
    data = segment.read_bytes()
    position, last = 0, -1
    while position + 12 <= len(data):  # record batches: base offset, then the length of the rest
        last, position = position, position + 12 + int.from_bytes(data[position + 8:position + 12], "big")
    attributes = int.from_bytes(data[last + ATTRIBUTES_AT:last + ATTRIBUTES_AT + 2], "big")
    assert last >= 0 and attributes & CONTROL_BATCH, f"{segment} does not end with a transaction marker"
    with segment.open("r+b") as log_file:
        log_file.truncate(last)
    for stale in [*directory.glob("*.snapshot"), segment.with_suffix(".index"), segment.with_suffix(".timeindex")]:
        stale.unlink(missing_ok=True)
    (logs / ".kafka_cleanshutdown").unlink(missing_ok=True)


@pytest.mark.parametrize("with_offsets", [False, True], ids=["answers", "answers-and-offsets"])
def test_the_rendezvous_ends_a_transaction_the_broker_left_hanging(
    own_broker: LocalBroker, tmp_path: Path, with_offsets: bool
) -> None:
    """The previous incarnation's second transaction loses its commit marker on `answers` (its
    offset is committed); with `answers-and-offsets` on the group's offsets too, as seen in the
    outage runs: the takeover then falls back to the first commit (takeover.py) and re-reads the
    second request, whose answer it finds once the seal has ended the hanging transaction."""
    config: dict[str, Any] = {"bootstrap.servers": own_broker.bootstrap}
    topics = Topics.from_prefix("rdv.")
    ensure_topics(config, topics, partitions=4)
    ids = _requests(config, topics.requests)
    _previous_incarnation(config, topics, ids[:2])
    until(lambda: not open_transactions(config, [topics.answers]), 30, "the commit marker on rdv.answers[0]")

    own_broker.stop(keep_data=True)
    _cut_last_commit_marker(own_broker, f"{topics.answers}-0")
    if with_offsets:
        _cut_last_commit_marker(own_broker, _offsets_partition(RendezvousSettings().group_id(), own_broker))
    own_broker.start(fresh=False)
    hanging = open_transactions(config, [topics.answers])
    assert hanging == {f"{topics.answers}[0]": (2, 3)}, f"the second answer's transaction left hanging: {hanging}"

    rendezvous = Proc(["serve", "--bootstrap", own_broker.bootstrap, "--models", "champion",
                       "--instance", INSTANCE], tmp_path / "rendezvous.log")
    try:
        rendezvous.start(ready_timeout=120)  # ready once recovery has read the answers: after the seal
        answers = read_topic(config, topics.answers, expect=len(ids), decode="answer", timeout=60)
        still_open = open_transactions(config, [topics.answers, topics.log])
        seals = rendezvous.metric("rdv_hanging_transaction_seals_total", topic=topics.answers)
    finally:
        rendezvous.stop()

    answered = Counter(a["request_id"] for a in answers)
    assert answered == Counter(ids), f"each request answered once, the hanging answer included: {answered}"
    assert still_open == {}, f"no transaction left open: {still_open}"
    assert "Writing a seal record there" in rendezvous.log_file.read_text()
    assert seals == 1, "one seal record, counted"
