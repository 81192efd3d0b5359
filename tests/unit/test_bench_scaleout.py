"""bench/rendezvous_scaleout.py: its options, and the ratio and problems of its report."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from bench.rendezvous_scaleout import parse_args, report


@pytest.mark.parametrize("instances", ["0,1", "1,5", "one", ""])
def test_instance_counts_outside_one_to_the_partitions_are_refused(instances: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--instances", instances, "--partitions", "4"])
    assert exit_.value.code == 2
    assert "--instances must be" in capsys.readouterr().err


def test_instance_counts_are_read_in_order() -> None:
    assert parse_args(["--instances", "2,1,4"]).counts == [2, 1, 4]


def _run(round_: int, instances: int, req_s: float, logged: int) -> dict[str, Any]:
    return {"round": round_, "instances": instances, "seconds": 1.0, "req_s": req_s, "logged": logged,
            "cpu_s": {"bench process": 0.1, "broker": 0.2, "instances": 1.8}, "host_cpu_pct": None}


def test_each_run_is_compared_with_one_instance_of_its_own_round() -> None:
    args = argparse.Namespace(requests=10_000, partitions=4)
    runs = [_run(1, 1, 5_000.0, 10_000), _run(1, 2, 6_000.0, 10_000),
            _run(2, 1, 4_000.0, 10_000), _run(2, 2, 6_000.0, 10_000)]
    results = report(args, runs)
    assert [r["x_one_instance"] for r in results["runs"]] == pytest.approx([1.0, 1.2, 1.0, 1.5])
    assert results["runs"][1]["cpu_ms_per_request"]["instances"] == pytest.approx(0.18)
    assert results["problems"] == []


def test_a_request_logged_twice_or_not_at_all_is_a_problem() -> None:
    args = argparse.Namespace(requests=10_000, partitions=4)
    results = report(args, [_run(1, 1, 5_000.0, 10_001), _run(1, 2, 6_000.0, 9_999)])
    assert results["problems"] == [
        "1 instance(s), round 1: 10,001 comparison records for 10,000 requests",
        "2 instance(s), round 1: 9,999 comparison records for 10,000 requests",
    ]
