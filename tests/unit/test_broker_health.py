"""BrokerHealth's "blocked" mark, per thread (services/core/health.py)."""

from __future__ import annotations

import threading

import pytest

from services.core.health import BrokerHealth


def test_a_call_ending_on_one_thread_leaves_another_threads_call_blocked() -> None:
    """One slot for all threads: a background commit that ended cleared a takeover scan's mark,
    so a long scan read as a loop stuck with the broker up."""
    health = BrokerHealth()
    health.BLOCKED_AFTER_S = 1e-9  # any blocked call counts at once
    scanning, finish = threading.Event(), threading.Event()

    def scan() -> None:
        with health.blocking():
            scanning.set()
            finish.wait(30)

    thread = threading.Thread(target=scan)
    thread.start()
    assert scanning.wait(30)
    with health.blocking():  # a commit on this thread, begun and ended meanwhile
        pass
    assert not health.up and "waited" in health.describe()
    finish.set()
    thread.join(30)
    assert health.up


def test_the_wait_for_a_broker_says_the_time_it_waited_as_given() -> None:
    """`--connect-timeout-s 0.5` read 'within 0s' (a review)."""
    from services.core.errors import BrokerUnavailable
    from services.core.kafka import wait_for_broker

    with pytest.raises(BrokerUnavailable, match=r"no Kafka broker answered at '127.0.0.1:1' within 0.5s"):
        wait_for_broker({"bootstrap.servers": "127.0.0.1:1"}, timeout=0.5)  # nothing listens on port 1
