"""The alert rules (deploy/prometheus/*.yml) on Prometheus' own tools, against the services' metrics.

- `promtool check rules` reads every rule file; `promtool test rules` runs operations_test.yml:
  a healthy deployment where no rule fires, then a failure per rule where it does (the rules on
  the comparison fire on a live stack in tests/integration/test_comparison_prometheus.py).
- Every rdv_* metric a rule names is one the services register (a renamed metric would leave
  its rule silent for good), every operations rule is shown firing and shown quiet, and its
  `runbook` annotation names a section of docs/runbook.md.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus"
RUNBOOK = REPO / "docs" / "runbook.md"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"  # Debian's prometheus package (make system-deps)
# Every module that registers metrics at import (grep Counter( / Gauge( / Histogram( under services/).
METRIC_MODULES = (
    "services.core.metrics", "services.core.health", "services.core.deadletter", "services.core.commits",
    "services.core.service",
    "services.rendezvous.metrics", "services.model_worker.worker", "services.comparison.metrics",
    "services.decoy.service", "services.gateway.metrics", "services.gateway.http_guard", "services.gateway.oip",
)


def _promtool(*args: str) -> str:
    done = subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _rules(name: str) -> list[dict[str, Any]]:
    groups = yaml.safe_load((RULES / name).read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.mark.parametrize("name", ["alerts.yml", "operations.yml"])
def test_prometheus_reads_every_rule_file(name: str) -> None:
    assert f"SUCCESS: {len(_rules(name))} rules found" in _promtool("check", "rules", name)


def test_each_operations_rule_fires_on_its_failure_and_not_on_a_healthy_deployment() -> None:
    _promtool("test", "rules", "operations_test.yml")
    tests = yaml.safe_load((RULES / "operations_test.yml").read_text())["tests"]
    quiet = {case["alertname"] for case in tests[0]["alert_rule_test"] if not case["exp_alerts"]}
    fired = {case["alertname"] for test in tests[1:] for case in test["alert_rule_test"] if case["exp_alerts"]}
    names = {rule["alert"] for rule in _rules("operations.yml")}
    assert quiet == names, "the healthy deployment must check every rule"
    assert fired == names, "every rule must be shown firing"


def test_agreement_pages_on_enough_pairs_the_champion_labelled_not_on_all_pairs() -> None:
    """Guarded by all pairs, 2 agreeing of 3 labelled among 200 paged (a review)."""
    _promtool("test", "rules", "alerts_test.yml")


# The series a family of each type exposes (a labelled one's samples appear only once a child exists).
SERIES_OF_TYPE = {
    "counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"), "info": ("_info",), "stateset": ("",), "enum": ("",),
}


def _registered() -> set[str]:
    """Every series name the services' metric families can expose, by each family's type."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    return {family.name + suffix for family in prometheus_client.REGISTRY.collect()
            for suffix in SERIES_OF_TYPE[family.type]}


@pytest.mark.parametrize("name", ["alerts.yml", "operations.yml"])
def test_every_metric_a_rule_reads_is_one_the_services_export(name: str) -> None:
    named = {m for rule in _rules(name) for m in re.findall(r"\b(rdv_[a-z0-9_]+)", rule["expr"])}
    assert named, name
    missing = sorted(named - _registered())
    assert not missing, f"{name} reads metrics no service registers: {missing}"


def test_the_series_of_a_family_are_those_of_its_type() -> None:
    """A counter's name with `_bucket`, a histogram's bare name: series no family exposes."""
    registered = _registered()
    assert "rdv_answers_total" in registered and "rdv_answers_bucket" not in registered
    assert "rdv_answer_latency_seconds_bucket" in registered and "rdv_answer_latency_seconds" not in registered


def test_every_runbook_annotation_names_a_section_of_the_runbook() -> None:
    headings = re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), flags=re.M)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    for rule in [*_rules("operations.yml"), *_rules("alerts.yml")]:
        runbook = rule["annotations"]["runbook"]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/runbook.md" and anchor in anchors, f"{rule['alert']}: {runbook}"
        assert anchor == rule["alert"].lower()
