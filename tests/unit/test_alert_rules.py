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


def _registered() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    return {sample.name for family in prometheus_client.REGISTRY.collect() for sample in family.samples} | {
        family.name for family in prometheus_client.REGISTRY.collect()}


@pytest.mark.parametrize("name", ["alerts.yml", "operations.yml"])
def test_every_metric_a_rule_reads_is_one_the_services_export(name: str) -> None:
    named = {m for rule in _rules(name) for m in re.findall(r"\b(rdv_[a-z0-9_]+)", rule["expr"])}
    assert named, name
    registered = _registered()
    # A histogram's or a labelled counter's samples appear once a child exists: match by family too.
    families = {n.removesuffix(s) for n in registered for s in ("_bucket", "_count", "_sum", "_total")}
    missing = sorted(m for m in named if m not in registered and m.removesuffix("_total") not in families
                     and m.removesuffix("_bucket").removesuffix("_count") not in families)
    assert not missing, f"{name} reads metrics no service registers: {missing}"


def test_every_runbook_annotation_names_a_section_of_the_runbook() -> None:
    headings = re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), flags=re.M)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    for rule in _rules("operations.yml"):
        runbook = rule["annotations"]["runbook"]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/runbook.md" and anchor in anchors, f"{rule['alert']}: {runbook}"
        assert anchor == rule["alert"].lower()
