"""What a new owner of the rendezvous' partitions commits as its marks (recovery.py): where the
next owner starts scanning the answers and log topics for outputs of what it re-reads."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from services.client.client import Client
from services.core.kafka import committed_offsets, group_lag
from services.core.settings import Topics
from services.model_worker.models import demo_rows
from services.rendezvous.recovery import Mark
from services.rendezvous.service import Rendezvous
from services.rendezvous.settings import RendezvousSettings
from tests.integration.harness import Services, wait_until

pytestmark = pytest.mark.kafka

PARTITIONS = range(4)
# "absent" never scores: a request stays open for the comparison log until deadline + linger.
MODELS = ("champion", "absent")


def marks(config: dict[str, Any], prefix: str, topics: Topics) -> dict[int, tuple[int, Mark | None]]:
    partitions = [TopicPartition(topics.requests, p) for p in PARTITIONS]
    found = committed_offsets(config, f"{prefix}rendezvous", partitions, stable=True)
    return {tp.partition: (tp.offset, Mark.decode(tp.metadata)) for tp in found}


def all_committed(config: dict[str, Any], prefix: str, topics: Topics) -> bool:
    return group_lag(config, f"{prefix}rendezvous", topics.requests) == 0


def test_a_new_owner_that_delivers_no_answer_commits_the_mark_it_recovered_from_not_zero(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    services.worker(bootstrap, prefix, "demo:champion")
    first = Rendezvous(RendezvousSettings(bootstrap=bootstrap, topic_prefix=prefix, models=MODELS, instance="first",
                                          linger_ms=200, drain_timeout_s=0.5))
    stop_first = threading.Event()
    runner = threading.Thread(target=first.run, args=(stop_first,), daemon=True)
    runner.start()
    assert first.ready.wait(60)
    with Client(config, topics, budget_ms=200, answer_wait_s=30) as client:
        client.score_many(demo_rows(40, seed=71))  # finished within deadline + linger: answers to every partition
        wait_until(lambda: all_committed(config, prefix, topics), 30, "the first requests committed")
    with Client(config, topics, budget_ms=10_000, answer_wait_s=30) as client:  # OK even on a loaded host
        answered = client.score_many(demo_rows(40, seed=72))
    assert {a.status for a in answered} == {"OK"}
    stop_first.set()  # drains 0.5 s: the second requests stay open and are re-read by the next owner
    runner.join(30)
    before = marks(config, prefix, topics)
    assert all(mark is not None and mark.answers > 0 for _offset, mark in before.values()), before

    services.rendezvous(bootstrap, prefix, models=MODELS, instance="second", linger_ms=200)
    # It finds the re-read requests answered (it answers none again) and logs them after their deadline.
    wait_until(lambda: all_committed(config, prefix, topics), 30, "the re-read requests committed by the new owner")
    after = marks(config, prefix, topics)
    for partition, (_offset, mark) in after.items():
        previous = before[partition][1]
        assert mark is not None and previous is not None and mark.txn.endswith("second")
        assert mark.answers == previous.answers, f"partition {partition}: {mark} after {previous}"
        assert mark.log >= previous.log
