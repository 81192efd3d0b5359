"""A short burst of serving-like traffic right after the local broker starts: its JIT warms up.

Why: a JVM runs new code interpreted until its JIT compiler has seen it often enough. A fresh
broker met the first second of the demo's load with its produce, fetch and transaction paths
still cold: that second answered 49-57% of the requests by their deadline (p50 190-204 ms) and
every later second 100%. The same kinds of requests sent first, from a scratch topic, compile
those paths before anyone depends on them: after this warm-up that second met 100% (p50 15-52
ms), for about 2.3 s more to start. docs/benchmarks.md has the runs.

What it sends, for `seconds` and at least MIN_ROUNDS rounds (a busy host takes longer): records
through an idempotent producer, one request each (as serving sends at modest rates); transactions
with records and consumer offsets in them (as an exactly-once service commits); reads of it all by
a read_committed consumer that commits its offsets (as an at-least-once worker does).
The scratch topic and group are deleted afterwards.

Best effort: the broker is ready either way, so any failure is logged and the start goes on.
`RDV_BROKER_WARMUP=off` skips it.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from services.core.kafka.error_kinds import kafka_code, kafka_message
from services.localkafka import config

log = logging.getLogger(__name__)

WARMUP_ENV = "RDV_BROKER_WARMUP"
TOPIC = "_rdv_broker_warmup"
PARTITIONS = 4
PLAIN_PER_ROUND = 8
# A JIT compiles after a number of calls, not of seconds: on a busy host the time runs out before
# the requests do, so the warm-up goes on until this many rounds were sent, however long it takes.
MIN_ROUNDS = 20
# librdkafka's log lines of the warm-up's short-lived clients. Right after a start the broker is
# still loading its transaction coordinator: librdkafka says so at WARNING ("Failed to acquire
# transactional PID ... Coordinator load in progress: retrying") and retries, which is routine
# here, not something for the person starting a demo to worry about. A failure that stops the
# warm-up still shows: it raises, and `warm_up` logs it.
_QUIET = logging.getLogger(f"{__name__}.librdkafka")
_QUIET.setLevel(logging.ERROR)
# How long a transactional call may wait: the first one waits for that coordinator's load, which
# on a loaded 2-core host takes longer than the few seconds a warm broker needs (a review).
_TXN_TIMEOUT_S = 30


@dataclass
class WarmUp:
    """What the warm-up did (kept in the broker's state file, shown by `rendezvous broker status`)."""

    seconds: float = 0.0
    records: int = 0
    transactions: int = 0
    fetched: int = 0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wanted(value: str | None) -> bool:
    """On unless `RDV_BROKER_WARMUP` says off/0/false/no."""
    return not config.switched_off(value, WARMUP_ENV)


def warm_up(bootstrap: str, seconds: float = 1.5) -> WarmUp:
    """Send serving-like traffic to the broker at `bootstrap` for about `seconds`, and at least
    MIN_ROUNDS rounds of it."""
    started = time.monotonic()
    done = WarmUp()
    base: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _QUIET}
    admin = AdminClient(base)
    group = f"{TOPIC}_{uuid.uuid4().hex[:8]}"
    try:
        _create_topic(admin)
        _traffic(base, group, seconds, done)
    except (KafkaException, TimeoutError) as exc:  # an admin call unanswered in 15 s: not the broker's end
        said = kafka_message(exc) or str(exc) if isinstance(exc, KafkaException) else str(exc)
        done.error = said or "an admin request had no answer within 15 s"
        log.warning("broker warm-up stopped early (the broker is ready anyway): %s", done.error)
    finally:
        _clean_up(admin, group)
        done.seconds = round(time.monotonic() - started, 2)
    return done


def _create_topic(admin: AdminClient) -> None:
    future = admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)], operation_timeout=10)[TOPIC]
    try:
        future.result(timeout=15)
    except KafkaException as exc:
        if kafka_code(exc) != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def _traffic(base: dict[str, Any], group: str, seconds: float, done: WarmUp) -> None:
    plain = Producer({**base, "linger.ms": 0, "enable.idempotence": True})
    txn = Producer({**base, "linger.ms": 1, "transactional.id": group})
    reader = Consumer({**base, "group.id": group, "isolation.level": "read_committed",
                       "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    try:
        reader.assign([TopicPartition(TOPIC, p, OFFSET_END) for p in range(PARTITIONS)])
        txn.init_transactions(_TXN_TIMEOUT_S)
        until = time.monotonic() + seconds
        while time.monotonic() < until or done.transactions < MIN_ROUNDS:
            _one_round(plain, txn, reader, done)
    finally:
        reader.close()
        plain.flush(5)


def _one_round(plain: Producer, txn: Producer, reader: Consumer, done: WarmUp) -> None:
    """Records alone, one produce request each, then a transaction (two records and the reader's
    offsets), then read. A JIT compiles a method after some hundreds of calls, so what matters is
    the number of requests: a transaction takes several round trips, a lone record one."""
    key = str(done.records).encode()
    for i in range(PLAIN_PER_ROUND):
        plain.produce(TOPIC, b"w" * 200, key, partition=(done.records + i) % PARTITIONS)
        plain.flush(5)
    done.records += PLAIN_PER_ROUND
    txn.begin_transaction()
    for i in (1, 2):
        txn.produce(TOPIC, b"t" * 300, key, partition=(done.records + i) % PARTITIONS)
    positions = [tp for tp in reader.position(reader.assignment()) if tp.offset >= 0]
    if positions:
        txn.send_offsets_to_transaction(positions, reader.consumer_group_metadata(), _TXN_TIMEOUT_S)
    txn.commit_transaction(_TXN_TIMEOUT_S)
    done.records += 2
    done.transactions += 1
    fetched = reader.consume(100, 0.002)
    done.fetched += len(fetched)
    if fetched and done.transactions % 10 == 0:
        reader.commit(asynchronous=False)  # stored by consume: there is something to commit


def _clean_up(admin: AdminClient, group: str) -> None:
    """Delete the scratch topic and group; a failure only leaves them behind."""
    try:
        admin.delete_topics([TOPIC], operation_timeout=10)[TOPIC].result(timeout=15)
        admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    except (KafkaException, TimeoutError) as exc:
        log.debug("broker warm-up: clean-up incomplete: %s", exc or "no answer within 15 s")
