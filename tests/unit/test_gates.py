"""The promotion gate's defaults (services/control/gates.py)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from services.control.gates import evaluate, parse_requirements, with_defaults
from services.core.errors import ConfigError

VERSIONS_DEFAULT = "versions<=1 (default: one version's figures; a --window from after its rollout)"


def verdicts(require: str, figures: dict[str, float]) -> dict[str, bool]:
    requirements = with_defaults(parse_requirements(require), figures)
    return {v.requirement.text: v.passed for v in evaluate(requirements, figures)}


def test_a_candidate_failing_fast_does_not_pass_on_agreement_and_latency() -> None:
    """990 errors in 2 ms and 10 agreeing scores passed agreement>=0.95,p99<=50ms,n>=10 (a review)."""
    figures = {"n": 10, "agreement": 1.0, "p99": 6.0, "error_rate": 0.99, "champion_error_rate": 0.02}
    result = verdicts("agreement>=0.95,p99<=50ms,n>=10", figures)
    assert result["error_rate<=0.03 (default: champion's + 0.01)"] is False
    assert all(passed for text, passed in result.items() if "default" not in text)


def test_a_handful_of_requests_is_no_evidence_unless_the_operator_says_so() -> None:
    figures = {"n": 1, "agreement": 1.0, "labelled": 1, "error_rate": 0.0, "champion_error_rate": 0.0,
               "coverage": 1.0, "versions": 1}
    assert verdicts("agreement>=0.95", figures)["n>=100 (default)"] is False
    assert verdicts("agreement>=0.95,n>=1,labelled>=1", figures) == {
        "agreement>=0.95": True, "n>=1": True, "labelled>=1": True,
        "error_rate<=0.01 (default: champion's + 0.01)": True, "coverage>=0.95 (default)": True,
        VERSIONS_DEFAULT: True}


def test_agreement_on_a_handful_of_labelled_requests_is_no_evidence() -> None:
    """n counts score pairs: the champion labelling 3 of 10,000 requests, agreement was measured on
    those 3 and passed (a review)."""
    figures = {"n": 10_000, "agreement": 1.0, "labelled": 3, "error_rate": 0.0, "champion_error_rate": 0.0,
               "coverage": 1.0, "versions": 1}
    assert verdicts("agreement>=0.95", figures)["labelled>=100 (default with agreement)"] is False
    assert "labelled>=100 (default with agreement)" not in verdicts("p99<=50ms", {**figures, "p99": 5.0})


def test_a_candidate_answering_a_sliver_of_the_traffic_does_not_pass_on_that_sliver() -> None:
    """2% of 10,000 requests passed agreement>=0.95,p99<=50ms with the defaults n and error_rate (a review)."""
    figures = {"n": 200, "agreement": 1.0, "labelled": 200, "p99": 10.0, "error_rate": 0.0,
               "champion_error_rate": 0.0, "coverage": 0.02, "deadline_met": 0.02, "versions": 1}
    result = verdicts("agreement>=0.95,p99<=50ms", figures)
    assert result["coverage>=0.95 (default)"] is False
    assert all(passed for text, passed in result.items() if not text.startswith("coverage"))
    assert verdicts("coverage>=0.01", figures)["coverage>=0.01"] is True  # the operator's clause replaces it


def test_a_clause_on_a_figure_replaces_its_default() -> None:
    figures = {"n": 500, "error_rate": 0.2, "champion_error_rate": 0.0, "coverage": 0.97, "versions": 2}
    assert verdicts("error_rate<=0.25,versions<=2", figures) == {
        "error_rate<=0.25": True, "versions<=2": True, "n>=100 (default)": True, "coverage>=0.95 (default)": True}


@pytest.mark.parametrize(("clause", "said"), [
    ("agreement>=95", "agreement is between 0 and 1, not 95 (95% is 0.95)"),
    ("error_rate<=-0.1", "error_rate is between 0 and 1, not -0.1"),
    ("correlation>=1.5", "correlation is between -1 and 1, not 1.5"),
    ("p99<=1e999ms", "p99 is a finite number of at least 0, not inf"),
    ("n>=-5", "n is a finite number of at least 0, not -5"),
])  # fmt: skip
def test_a_bound_no_figure_can_reach_is_refused(clause: str, said: str) -> None:
    """`agreement>=95` (meaning 95%) was a gate that failed for good (the misconfiguration probe)."""
    with pytest.raises(ConfigError, match=f"^--require: {re.escape(said)}"):
        parse_requirements(f"p50<=10ms,{clause}")


@pytest.mark.parametrize("clause", ["agreement>1", "error_rate<0", "n<0", "p99<0ms", "correlation<-1"])
def test_a_strict_bound_at_a_figures_edge_is_refused(clause: str) -> None:
    with pytest.raises(ConfigError, match=f"{re.escape(repr(clause))} can never pass"):
        parse_requirements(clause)


def test_an_empty_clause_between_two_others_is_refused() -> None:
    """`agreement>=0.95,,n>=10` was read as the two, a clause meant between them dropped (the review)."""
    with pytest.raises(ConfigError, match=r"^--require: clause 2 of 3 is empty \(a doubled ','\?\)$"):
        parse_requirements("agreement>=0.95,,n>=10")
    assert [r.figure for r in parse_requirements("agreement>=0.95,n>=10,")] == ["agreement", "n"]


def test_the_edges_of_a_figure_are_bounds() -> None:
    assert [r.value for r in parse_requirements("agreement>=1,correlation>=-1,error_rate<=0,n>=0,p50<=0ms,"
                                                "agreement<1")] == [1, -1, 0, 0, 0, 1]
    with pytest.raises(ConfigError) as refused:
        parse_requirements("ks<=1.5")
    assert "95%" not in str(refused.value)  # the hint is for a share written as a percentage


@pytest.mark.parametrize("typo", ["agreement>=0.9.5", "n>=1e", "n>=1-2"])
def test_a_number_that_is_none_is_one_error_line(typo: str) -> None:
    with pytest.raises(ConfigError, match="is not a number"):  # it was a ValueError traceback
        parse_requirements(typo)


def test_a_schedule_set_notes_what_is_seldom_meant() -> None:
    from services.cli.lifecycle import _risky
    from services.control.schedule import Schedule

    risky = Schedule(models=("champion", "challenger"), waits_ms={"champion": 500}, default_deadline_ms=200,
                     traffic_model="challenger", traffic_fraction=0.05)
    notes = _risky(risky)
    assert any("--wait champion=500 is past the deadline" in n for n in notes)
    assert any("challenger answers its share first but has no --wait" in n for n in notes)
    assert _risky(Schedule(models=("champion",), waits_ms={"champion": 50})) == []


def test_a_traffic_split_naming_the_preferred_model_is_refused() -> None:
    """`schedule set --models champion,challenger --traffic champion=0.1` was published: a split
    that changes nothing, shown in `schedule show` as if it did (a newcomer review)."""
    from services.cli.lifecycle import ScheduleSetSettings, _draft_from_flags
    from services.control.schedule import Schedule

    def draft(traffic: str) -> Schedule:
        settings = ScheduleSetSettings(models=("champion", "challenger"), traffic=traffic)
        return _draft_from_flags(settings, None)

    with pytest.raises(ConfigError, match="traffic split: champion is the preferred model"):
        draft("champion=0.1")
    assert draft("challenger=0.1").traffic_model == "challenger"


def test_promoting_the_traffic_model_ends_its_split() -> None:
    from services.control.changes import promotion
    from services.control.schedule import Schedule

    current = Schedule(models=("champion", "challenger", "canary"), traffic_model="challenger",
                       traffic_fraction=0.05)
    promoted = promotion(current, "challenger", canary="canary")
    assert promoted.models == ("challenger", "champion", "canary")
    assert (promoted.traffic_model, promoted.traffic_fraction) == (None, 0.0)
    other = Schedule(models=("champion", "challenger", "next"), traffic_model="next", traffic_fraction=0.05)
    assert promotion(other, "challenger", canary="canary").traffic_model == "next"  # another model's split stays


def test_a_promotion_keeps_each_place_s_wait() -> None:
    """Kept by model, `--wait champion=50` left the new champion no wait: answered at the deadline,
    not a fallback at 50 ms; and a fallback's short wait put first gave the new champion up (a review)."""
    from services.control.changes import promotion
    from services.control.schedule import Schedule

    current = Schedule(models=("champion", "challenger", "next", "canary"), waits_ms={"champion": 50, "next": 120})
    promoted = promotion(current, "next", canary="canary")
    assert promoted.models == ("next", "champion", "challenger", "canary")
    assert promoted.waits_ms == {"next": 50, "challenger": 120}
    short = Schedule(models=("champion", "challenger"), waits_ms={"challenger": 10})
    assert promotion(short, "challenger", canary="canary").waits_ms == {"champion": 10}


def _gate_figures(records: list[dict[str, Any]]) -> dict[str, float]:
    """The gate's figures for 'cand' against 'champion' in the report of `records`."""
    from services.compare_report.summary import summarize_records
    from services.control.evidence import figures_of

    return figures_of(summarize_records(records, champion="champion"), "cand", "champion")


def _record(i: int, outputs: list[dict[str, Any]]) -> dict[str, Any]:
    created = 1_700_000_000_000 + i
    return {"request_id": f"r{i}", "created_at": created, "deadline": created + 200, "answered_at": created + 5,
            "status": "OK", "chosen_model": "champion", "outputs": outputs}


def _output(model: str, score: float, label: str | None, latency_ms: float = 10.0) -> dict[str, Any]:
    return {"model": model, "version": "1", "score": score, "label": label, "error": None,
            "latency_ms": latency_ms, "compute_ms": 1.0, "late": False}


def test_a_gates_agreement_counts_every_paired_request_a_missing_label_disagreeing() -> None:
    """A candidate that labels 1 request of 1,000 (agreeing there) must not measure agreement 1."""
    records = [_record(i, [_output("champion", 0.9, "pos"), _output("cand", 0.1, "pos" if i == 0 else None)])
               for i in range(1000)]
    figures = _gate_figures(records)
    assert figures["n"] == 1000 and figures["agreement"] == pytest.approx(0.001)
    unlabelled = [_record(i, [_output("champion", 0.9, None), _output("cand", 0.1, None)]) for i in range(10)]
    assert math.isnan(_gate_figures(unlabelled)["agreement"])  # no label at all: nothing to agree on


def test_a_gates_deadline_met_counts_the_requests_the_candidate_did_not_score() -> None:
    """Present on 1 request of 50 from its first output on (on time there), it met 2% of its deadlines;
    the requests before its first output (not deployed yet) do not count."""
    records = [_record(i, [_output("champion", 0.5, "pos")]) for i in range(100)]  # before the candidate
    records += [_record(100 + i, [_output("champion", 0.5, "pos")] + ([_output("cand", 0.5, "pos")] if i % 50 == 0
                                                                       else [])) for i in range(100)]
    figures = _gate_figures(records)
    assert figures["deadline_met"] == pytest.approx(2 / 100)
    assert figures["coverage"] == pytest.approx(2 / 100)
    assert figures["versions"] == 1


def test_a_candidate_redeployed_within_the_window_is_not_judged_on_its_earlier_version() -> None:
    """The figures of a window mix every version that scored in it: version 2, deployed minutes
    ago, passed on version 1's hours (a review)."""
    records = [_record(i, [_output("champion", 0.5, "pos"), {**_output("cand", 0.5, "pos"),
                                                            "version": "1" if i < 900 else "2"}]) for i in range(1000)]
    figures = _gate_figures(records)
    assert figures["versions"] == 2
    assert verdicts("agreement>=0.95", figures)[VERSIONS_DEFAULT] is False
    late = [_record(i, [_output("champion", 0.5, "pos"),
                        _output("cand", 0.5, "pos", latency_ms=500.0 if i % 2 else 5.0)]) for i in range(10)]
    assert _gate_figures(late)["deadline_met"] == pytest.approx(0.5)
    assert _gate_figures(late)["coverage"] == 1.0  # late, but an output for every request


def test_a_refused_figure_is_shown_with_the_digits_that_tell_its_verdict() -> None:
    """0.94996 was shown as 0.95 failing agreement>=0.95, 50.004 as 50 failing p99<=50ms, and a
    count of 99,999 as 1e+05 (a review)."""
    requirements = parse_requirements("agreement>=0.95,p99<=50ms,n>=100000,mad<=0.5")
    verdicts = evaluate(requirements, {"agreement": 0.94996, "p99": 50.004, "n": 99_999, "mad": 0.123456789})
    assert [v.measured for v in verdicts] == ["0.94996", "50.004", "99999", "0.1235"]
    assert [v.passed for v in verdicts] == [False, False, False, True]


def test_the_gate_reads_the_log_with_every_connection_setting_of_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built from four of them, the gate's read had no registry (registry-framed records were
    skipped: no evidence) and the default connect timeout."""
    from services.cli.lifecycle import PromoteSettings
    from services.control import evidence

    read: list[Any] = []

    def report_from_topic(compare: Any, **_kwargs: Any) -> Any:
        read.append(compare)
        raise evidence.ChampionNotInRange("none")

    monkeypatch.setattr(evidence, "report_from_topic", report_from_topic)
    settings = PromoteSettings(bootstrap="b:9092", topic_prefix="p.", schema_registry="http://registry:8081",
                               wire_format="registry", connect_timeout_s=3.0, kafka_config=("client.id=x",))
    with pytest.raises(ConfigError, match="has no output in the log"):
        evidence.gate_figures(settings, "5m", "challenger", "champion")
    compare = read[0]
    assert (compare.schema_registry, compare.wire_format, compare.connect_timeout_s, compare.bootstrap,
            compare.kafka_config, compare.since, compare.champion) == (
        "http://registry:8081", "registry", 3.0, "b:9092", ("client.id=x",), "5m", "champion")


def test_the_reports_p99_9_column_name_is_the_gates_p999() -> None:
    """`p99.9<=100ms`, as the table names it, was 'cannot read' (a review)."""
    [requirement] = parse_requirements("p99.9<=100ms")
    assert requirement.figure == "p999" and requirement.value == 100.0


def test_the_default_error_rate_limit_is_shown_with_the_digits_it_is_compared_with() -> None:
    """0.13346 was shown as 0.1335: 'FAIL error_rate<=0.1335 ... measured 0.1335' (a review)."""
    figures = {"n": 500, "error_rate": 0.13347, "champion_error_rate": 0.12346, "coverage": 1.0, "versions": 1}
    assert "error_rate<=0.13346 (default: champion's + 0.01)" in verdicts("n>=1", figures)


def test_an_output_without_a_score_or_an_error_is_no_coverage_and_labelled_is_counted() -> None:
    """A candidate giving only a label on every other request (no score: the schedule cannot answer
    with it) passed coverage 1.0 and error_rate 0: promoted on agreement and p99 (a review)."""
    records = [_record(i, [_output("champion", 0.9, "pos"),
                           {**_output("cand", 0.8, "pos"), "score": None} if i % 2 else _output("cand", 0.8, "pos")])
               for i in range(1000)]
    figures = _gate_figures(records)
    assert figures["coverage"] == pytest.approx(0.5) and figures["labelled"] == 1000
    assert verdicts("agreement>=0.95", figures)["coverage>=0.95 (default)"] is False


def test_ks_compares_the_distributions_on_the_requests_both_scored() -> None:
    """Against every champion score of the range, a candidate deployed halfway through a drifting
    traffic, scoring each of its requests as the champion did, read KS 0.44 (a review)."""
    records = [_record(i, [_output("champion", i / 1000, "pos"), *([_output("cand", i / 1000, "pos")] if i >= 500
                                                                   else [])]) for i in range(1000)]
    assert _gate_figures(records)["ks"] == 0.0


def test_a_candidate_missing_every_deadline_does_not_pass_the_defaults() -> None:
    """Every score at 5x its budget passed agreement>=0.95 and every default (a late score is still
    coverage); promoted, each request would wait for it to its deadline (a review)."""
    records = [_record(i, [_output("champion", 0.9, "pos"), _output("cand", 0.9, "pos", latency_ms=1000.0)])
               for i in range(1000)]
    figures = _gate_figures(records)
    result = verdicts("agreement>=0.95", figures)
    assert result["deadline_met>=0.99 (default: champion's - 0.01)"] is False
    assert all(passed for text, passed in result.items() if not text.startswith("deadline_met"))
    assert "deadline_met>=0.5" in verdicts("deadline_met>=0.5", figures)  # the operator's clause replaces it
    on_time = [_record(i, [_output("champion", 0.9, "pos"), _output("cand", 0.9, "pos")]) for i in range(1000)]
    assert all(verdicts("agreement>=0.95", _gate_figures(on_time)).values())


def test_a_share_is_shown_with_its_interval_and_whether_that_crosses_the_bound() -> None:
    """0 errors in 100 outputs passed error_rate<=0.01 with nothing to say it is as likely as not
    that the candidate errs more often (a candidate with 2% errors passes it 40% of the time)."""
    records = [_record(i, [_output("champion", 0.9, "pos"), _output("cand", 0.9, "pos")]) for i in range(100)]
    figures = _gate_figures(records)
    lines = {v.requirement.figure: v.line() for v in evaluate(with_defaults(parse_requirements("n>=1"), figures),
                                                                figures)}
    assert "measured 0 (95% interval 0-0.037 of 100; either side of the bound)" in lines["error_rate"]
    assert lines["coverage"].endswith("measured 1 (95% interval 0.963-1 of 100)")  # all of it above 0.95
    assert lines["n"].endswith("measured 100")  # a count: no interval


@pytest.mark.parametrize(("share", "of"), [(0.0, 100), (0.5, 10), (0.96, 100), (1.0, 1), (0.3, 7)])
def test_the_share_interval_holds_the_share_and_stays_within_0_and_1(share: float, of: int) -> None:
    from services.control.gates import share_interval

    low, high = share_interval(share, of)
    assert 0.0 <= low <= share <= high <= 1.0 and high - low > 0


def test_the_gate_summarizes_only_the_candidate_and_the_champion() -> None:
    """Every model named in the log got a full row: one forged record naming 40,000 made a gate
    take 21 s (a review)."""
    from services.compare_report.summary import summarize_records

    forged = _record(10, [_output(f"forged-{k}", 0.5, None) for k in range(50)])
    records = [*(_record(i, [_output("champion", 0.9, "pos"), _output("cand", 0.9, "pos")]) for i in range(10)),
               forged]
    report = summarize_records(records, champion="champion", only=("cand", "champion"))
    assert [m.name for m in report.models] == ["champion", "cand"]
    assert len(summarize_records(records, champion="champion").models) == 52


def test_a_range_surely_over_the_free_memory_is_refused_before_it_is_read() -> None:
    """The whole range is held while it is read: one too large for a pod ended in an OOM kill,
    exit 137 without a word (a review)."""
    from services.compare_report.report import PEAK_BYTES_PER_RECORD, check_fits

    with pytest.raises(ConfigError, match=r"the log holds 3,000,000 records in range: reading them takes at least "
                                          r"1\.1 GiB of memory, and 0\.5 GiB is free here; give a shorter range"):
        check_fits(3_000_000, "in range", available=2**29)
    check_fits(2**29 // PEAK_BYTES_PER_RECORD, "in range", available=2**29)  # fits: nothing said


def test_a_report_gives_at_most_max_rows_models_a_row_the_champion_always() -> None:
    """`compare` gave every name in the log a row, at 0.5 ms and more each (a review)."""
    from services.compare_report.summary import MAX_ROWS, summarize_records

    forged = [_record(1000 + k, [_output(f"forged-{k:03}", 0.5, None)]) for k in range(MAX_ROWS + 20)]
    busy = [_record(i, [_output("champion", 0.9, "pos"), _output("cand", 0.9, "pos"), _output("zz", 0.1, None)])
            for i in range(3)]
    one_output_champion = [_record(2000, [_output("aa-champion", 0.9, "pos")])]
    report = summarize_records([*forged, *busy, *one_output_champion], champion="aa-champion")
    names = [m.name for m in report.models]
    assert len(names) == MAX_ROWS and names[0] == "aa-champion" and {"cand", "zz", "champion"} <= set(names)
    assert f"24 models with the fewest outputs (24 in all) left out of the table: a report gives at most {MAX_ROWS}" \
        in " ".join(report.notes)


def test_the_default_deadline_clause_compares_the_champion_on_the_candidates_requests() -> None:
    """Over all its outputs, a champion on time before the candidate came failed an identical
    candidate: 'FAIL deadline_met>=0.965 ... measured 0.95' (a review)."""
    before = [_record(i, [_output("champion", 0.9, "pos")]) for i in range(500)]
    late = 1000.0
    shared = [_record(i, [_output("champion", 0.9, "pos", latency_ms=late if i % 2 else 10.0),
                          _output("cand", 0.9, "pos", latency_ms=late if i % 2 else 10.0)])
              for i in range(500, 1000)]
    figures = _gate_figures([*before, *shared])
    assert figures["deadline_met"] == figures["champion_deadline_met"] == pytest.approx(0.5)
    assert verdicts("agreement>=0.95", figures)["deadline_met>=0.49 (default: champion's - 0.01)"] is True


def test_the_default_error_clause_measures_the_champion_on_the_candidates_requests() -> None:
    """Over the whole window, a champion's outage before the candidate came loosened the bound: a
    candidate failing 8% of requests against a champion failing none passed 'error_rate<=0.21'
    (a review); errors the champion made only before it came tightened it the same way."""
    failed, failed_cand = ({**_output(model, 0.9, "pos"), "error": "boom"} for model in ("champion", "cand"))
    outage = [_record(i, [failed if i % 5 < 2 else _output("champion", 0.9, "pos")]) for i in range(1000)]
    shared = [_record(i, [_output("champion", 0.9, "pos"), failed_cand if i % 25 < 2 else _output("cand", 0.9, "pos")])
              for i in range(1000, 2000)]
    figures = _gate_figures([*outage, *shared])
    assert figures["champion_error_rate"] == 0.0 and figures["error_rate"] == pytest.approx(0.08)
    assert verdicts("n>=100", figures)["error_rate<=0.01 (default: champion's + 0.01)"] is False
    errors_later = [_record(i, [failed if i % 2 else _output("champion", 0.9, "pos"), _output("cand", 0.9, "pos")])
                    for i in range(2000, 2100)]
    assert _gate_figures([*outage[:100], *errors_later])["champion_error_rate"] == pytest.approx(0.5)
    # An outage while the candidate was away (no output of its on those requests) loosened it too.
    away = [_record(i, [failed]) for i in range(2000, 2100)]
    figures = _gate_figures([*shared, *away, *[_record(i, r["outputs"]) for i, r in enumerate(shared, 2100)]])
    assert figures["champion_error_rate"] == 0.0
    assert verdicts("deadline_met>=0.9", figures)["error_rate<=0.01 (default: champion's + 0.01)"] is False
