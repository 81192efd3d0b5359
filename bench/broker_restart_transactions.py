"""Does a restart of the local broker leave a transaction open for good? (docs/failover.md,
"A transaction left hanging by a broker restart")

    flock -x /work/heavy.lock .venv/bin/python bench/broker_restart_transactions.py
    flock -x /work/heavy.lock .venv/bin/python bench/broker_restart_transactions.py --stop kill --tries 6

Each try starts a fresh broker (in a temporary folder), lets `--producers` transactional producers
commit in a loop as the rendezvous does (records to 4 partitions, a pause, the group's offsets,
commit), stops the broker (`--stop term`: SIGTERM, Kafka's clean shutdown; `kill`: SIGKILL),
starts it again on its data, and then waits up to `--settle-s` for every partition's last stable
offset to reach its end. A transaction that was merely open at the stop is aborted at its
timeout (10 s) and the partition settles; one still open after `--settle-s` is hanging: only a
marker from its producer id, or `kafka-transactions.sh abort`, ends it.

Prints one line per try (commits made, written and stable ends right after the restart, which
partitions were still open at the end and after how long) and how many tries left one hanging.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from services.cli.common import ensure_topics
from services.core.kafka import end_offsets
from services.core.settings import Topics
from services.localkafka.broker import LocalBroker, ephemeral_broker

PARTITIONS = range(4)
GROUP = "restart-probe"


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tries", type=int, default=4, help="broker restarts, each on a fresh broker (default 4)")
    parser.add_argument("--producers", type=int, default=8, help="transactional producers committing (default 8)")
    parser.add_argument("--stop", choices=("term", "kill"), default="term",
                        help="how the broker is stopped: SIGTERM (clean shutdown) or SIGKILL (default term)")
    parser.add_argument("--controlled-shutdown", choices=("true", "false"), default="true",
                        help="the broker's controlled.shutdown.enable (default true, Kafka's default)")
    parser.add_argument("--load-s", type=float, default=3.0, help="seconds of commits before the stop (default 3)")
    parser.add_argument("--settle-s", type=float, default=45.0,
                        help="how long after the restart a partition may stay open before it counts as hanging")
    args = parser.parse_args(argv)
    if args.tries < 1 or args.producers < 1 or args.load_s <= 0 or args.settle_s <= 0:
        parser.error("--tries, --producers, --load-s and --settle-s must be positive")
    return args


def commit_loop(config: dict[str, str], topics: Topics, member: Consumer, k: int, stop: threading.Event,
                commits: list[int]) -> None:
    """Commit until stopped or the broker goes away: records, a pause, the offsets, commit."""
    txn = {"transactional.id": f"probe-{k}-{uuid.uuid4().hex}", "transaction.timeout.ms": 10000}
    producer = Producer({**config, **txn})
    producer.init_transactions(30)
    n = 0
    while not stop.is_set():
        try:
            producer.begin_transaction()
            for partition in PARTITIONS:
                producer.produce(topics.answers, b"x", partition=partition)
            producer.flush(5)
            time.sleep(0.05 + 0.03 * k)  # the rendezvous commits its outputs some 100 ms after producing them
            n += 1
            offsets = [TopicPartition(topics.requests, p, n) for p in PARTITIONS]
            producer.send_offsets_to_transaction(offsets, member.consumer_group_metadata(), 5)
            producer.commit_transaction(5)
            commits[0] += 1
        except KafkaException:
            return


def ends(config: dict[str, str], topic: str) -> tuple[list[int], list[int]]:
    """(written ends, stable ends) of the topic's partitions."""
    partitions = [(topic, p) for p in PARTITIONS]
    written = end_offsets(config, partitions, committed=False)
    stable = end_offsets(config, partitions, committed=True)
    return [written[tp] for tp in partitions], [stable[tp] for tp in partitions]


def one_try(args: argparse.Namespace, broker: LocalBroker) -> bool:
    config = {"bootstrap.servers": broker.bootstrap}
    topics = Topics.from_prefix("probe.")
    ensure_topics(config, topics, partitions=len(PARTITIONS))
    member = Consumer({**config, "group.id": GROUP, "enable.auto.commit": False})
    stop, commits = threading.Event(), [0]
    threads = [threading.Thread(target=commit_loop, args=(config, topics, member, k, stop, commits), daemon=True)
               for k in range(args.producers)]
    for thread in threads:
        thread.start()
    time.sleep(args.load_s)  # the load itself: commits run for this long before the stop
    if args.stop == "kill":
        broker.kill()
    else:
        broker.stop(keep_data=True)
    stop.set()
    for thread in threads:
        thread.join(30)
    member.close()
    broker.start(fresh=False)
    written, stable = first = ends(config, topics.answers)
    started = time.monotonic()
    while written != stable and time.monotonic() - started < args.settle_s:
        time.sleep(1.0)  # a broker-side timeout is what ends an open transaction: poll its effect
        written, stable = ends(config, topics.answers)
    still_open = [p for p in PARTITIONS if stable[p] < written[p]]
    print(f"  commits={commits[0]} after the restart: written={first[0]} stable={first[1]}; "
          f"after {time.monotonic() - started:.0f}s still open: {still_open or 'none'}", flush=True)
    return bool(still_open)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    hanging = 0
    with tempfile.TemporaryDirectory(prefix="rdv-restart-probe-") as folder:
        for n in range(args.tries):
            print(f"try {n + 1}/{args.tries} ({args.producers} producers, stop={args.stop}, "
                  f"controlled.shutdown.enable={args.controlled_shutdown})", flush=True)
            extra = {"controlled.shutdown.enable": args.controlled_shutdown}
            with ephemeral_broker(Path(folder) / f"try{n}", extra_properties=extra) as broker:
                hanging += one_try(args, broker)
    print(f"{hanging} of {args.tries} restarts left a transaction open after {args.settle_s:.0f}s")


if __name__ == "__main__":
    main()
