"""The benches' verdicts and labels (a review of the bench fixes): a run too fast to time after its
first look is not measured, not 'NOT met'; a warm-up that sent nothing warmed nothing."""

from __future__ import annotations

import math

from bench.common import broker_start, judged
from bench.comparison_throughput import Timing as ComparisonTiming
from bench.rendezvous_throughput import Timing as RendezvousTiming


def test_a_run_whose_every_output_came_at_the_first_look_is_not_measured() -> None:
    every_at_once = ComparisonTiming(startup_s=0.1, processing_s=0.3, records=1_000, cpu_s=0.2, first_s=0.3,
                                     first_records=1_000)
    assert math.isnan(every_at_once.steady_records_s)  # it read 0 records/s: a ratio of 0, or a baseline pulled down
    one_look = RendezvousTiming(startup_s=0.1, processing_s=0.2, outputs=1_000, thread_cpu_s=0.1, first_s=0.2,
                                first_outputs=1_000)
    assert math.isnan(one_look.steady_req_s(1_000))
    assert judged(math.nan, 0.5).startswith("not measured") and judged(0.6, 0.5) == "met"
    assert judged(0.4, 0.5) == "NOT met"


def test_a_warm_up_that_sent_nothing_is_no_warm_up() -> None:
    failed = broker_start({"warm_up": {"records": 0, "error": "refused"}, "cds_archive": ""})
    assert failed["truly_cold"] and failed["label"].startswith("truly cold")
    warmed = broker_start({"warm_up": {"records": 510, "seconds": 2.2}, "cds_archive": "/a.jsa"})
    assert not warmed["truly_cold"] and warmed["label"].startswith("cold start after the local broker's warm-up")
