"""Closing the shared consumer right after a rewind's unsubscribe/subscribe, on a real broker.

librdkafka holds back a subscribe made while a rebalance is under way (the rewind's unsubscribe
starts one) and applies it once that rebalance is over, even while the consumer is closing; its
tear-down then finds a subscription and aborts the process (seen in a CI run: SIGTERM came
within a second of a rewind). Run in a child process, since the failure is an abort."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from services.core.settings import Topics

pytestmark = pytest.mark.kafka

CHILD = textwrap.dedent("""
    import sys, time, uuid
    from services.core.kafka import Consumer

    bootstrap, topic = sys.argv[1], sys.argv[2]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"close-{uuid.uuid4().hex}"})
    assigned = []
    consumer.subscribe([topic], on_assign=lambda _c, parts: assigned.extend(parts))
    until = time.monotonic() + 60
    while not assigned and time.monotonic() < until:
        consumer.consume(1, 0.1)
    assert assigned, "never assigned"
    # What the skeleton's rewind does, then a close before any poll serves the rebalance.
    consumer.native.unsubscribe()
    consumer.subscribe([topic])
    consumer.close()
    print("closed")
""")


def test_a_consumer_closed_right_after_a_rewind_exits_cleanly(bootstrap: str, topics: Topics) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD, bootstrap, topics.requests], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "closed"
