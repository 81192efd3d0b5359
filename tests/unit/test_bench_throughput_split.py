"""bench/rendezvous_throughput.py: the rendezvous' thread CPU split into its Kafka work and the rest."""

from __future__ import annotations

import pytest

from bench.rendezvous_throughput import TARGET_REQ_S, Timing, skeleton_split


def _timing(thread_cpu_s: float) -> Timing:
    return Timing(startup_s=0.1, processing_s=1.0, outputs=10_000, thread_cpu_s=thread_cpu_s)


def test_the_rest_is_what_the_rendezvous_spends_beyond_its_kafka_work() -> None:
    split = skeleton_split(10_000, rdv=_timing(1.1), skeleton=_timing(0.45))
    assert split["rendezvous_us"] == pytest.approx(110.0)
    assert split["skeleton_us"] == pytest.approx(45.0)
    assert split["rest_us"] == pytest.approx(65.0)


def test_the_room_left_by_the_target_goes_negative_when_kafka_alone_is_too_slow() -> None:
    budget_us = 1e6 / TARGET_REQ_S
    fits = skeleton_split(10_000, rdv=_timing(1.0), skeleton=_timing(0.3))
    too_slow = skeleton_split(10_000, rdv=_timing(1.0), skeleton=_timing(0.6))
    assert fits["room_us"] == pytest.approx(budget_us - 30.0)
    assert too_slow["room_us"] == pytest.approx(budget_us - 60.0)
    assert too_slow["room_us"] < 0 < fits["room_us"]
