"""A real Prometheus for the metrics tests, the services as child processes, and the PromQL
expressions of the repository's dashboards and alert rules.

- `ChildProcesses` runs `python -m services.cli.main ...` children (each with its own
  --metrics-port, hence its own registry) and the `prometheus` binary, logging to files, and
  stops them all (TERM, then KILL) however the test ends.
- `start_prometheus` writes a config that scrapes the given targets every second and loads a
  rule file, starts the Debian `prometheus` binary on a free 127.0.0.1 port and waits for
  /-/ready (never a sleep).
- `dashboard_exprs` / `rule_exprs` read the expressions exactly as the repository holds them.
  Grafana template variables are replaced by `GRAFANA_VARIABLES` (documented there); the rule
  file is YAML, read by a small parser for the subset deploy/prometheus/alerts.yml is written in
  (its header says so), and the test cross-checks the result against the rules Prometheus loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.core.runtime import stop_processes
from services.localkafka.config import free_port
from tests.integration.harness import wait_until

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

# Grafana fills these in before a query reaches Prometheus. `$__rate_interval` is
# max(4 x scrape interval, query step + scrape interval); with the tests' 1 s scrapes and a
# short range, 1m is a value Grafana could choose and is long enough for rate() to see the run.
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}


@dataclass
class ChildProcesses:
    """Child processes logging to files in `log_dir`; `stop_all` ends every one of them."""

    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        with (self.log_dir / f"{name}.log").open("ab") as out:
            self.procs[name] = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})}, cwd=REPO,
            )  # fmt: skip

    def cli(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> None:
        """Run one `rendezvous` command (python -m services.cli.main ...) as a child."""
        self.spawn(name, [sys.executable, "-m", "services.cli.main", *args], env)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with code {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 25) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll a real condition, failing fast (with the log) if a child died meanwhile."""
        try:
            wait_until(condition, timeout, what, check=self.check_alive)
        except AssertionError as err:
            logs = "\n".join(f"--- {name}\n{self.tail(name, 8)}" for name in self.procs)
            raise AssertionError(f"{err}\n{logs}") from None

    def stop_all(self, timeout: float = 15.0) -> None:
        stop_processes(self.procs.values(), timeout)


# ----- Prometheus -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prometheus:
    """The HTTP API of a running Prometheus."""

    url: str

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            document = json.loads(response.read())
        if document.get("status") != "success":
            raise AssertionError(f"{path} {params}: {document}")
        return document["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (a scalar result comes back as one sample)."""
        data = self.get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(self, expr: str) -> dict[str, float]:
        """{label set as text: value} of an instant query."""
        return {_labels(s["metric"]): float(s["value"][1]) for s in self.query(expr)}

    def value(self, expr: str) -> float | None:
        """The value of a query expected to return at most one sample."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} returned {len(result)} samples"
        return float(result[0]["value"][1]) if result else None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def alerts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/alerts")["alerts"]
        return result

    def firing(self, alert: str) -> list[dict[str, str]]:
        """Label sets of the firing instances of one alert."""
        return [a["labels"] for a in self.alerts() if a["labels"]["alertname"] == alert and a["state"] == "firing"]

    def loaded_rules(self) -> dict[str, str]:
        """alert name -> the expression Prometheus loaded (in its own formatting)."""
        return {rule["name"]: rule["query"] for group in self.get("/api/v1/rules")["groups"]
                for rule in group["rules"]}

    def formatted(self, expr: str) -> str:
        """The expression in Prometheus' canonical formatting (/api/v1/format_query)."""
        data: str = self.get("/api/v1/format_query", query=expr)
        return data


def _labels(metric: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(metric.items()))


def start_prometheus(
    children: ChildProcesses, workdir: Path, targets: Mapping[str, int], rule_file: Path,
    timeout: float = 60.0,
) -> Prometheus:
    """Prometheus scraping `targets` ({service label: port on 127.0.0.1}) every second."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rule_file)],
        "scrape_configs": [{
            "job_name": "rendezvous-serving",
            "static_configs": [{"targets": [f"127.0.0.1:{p}"], "labels": {"service": name}}
                               for name, p in targets.items()],
        }],
    }  # fmt: skip
    config_file = workdir / "prometheus.yml"
    config_file.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    children.spawn("prometheus", [
        PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ])  # fmt: skip
    server = Prometheus(f"http://127.0.0.1:{port}")
    children.wait(server.ready, timeout, "Prometheus /-/ready")
    return server


# ----- the repository's expressions --------------------------------------------------------------
@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str  # as the dashboard holds it
    promql: str  # with Grafana's variables filled in


def dashboard_exprs(directory: Path = DASHBOARDS) -> list[PanelQuery]:
    """Every target expression of every panel (rows' nested panels included) of every dashboard."""
    queries = []
    for file in sorted(directory.glob("*.json")):
        document = json.loads(file.read_text())
        panels = list(document.get("panels", []))
        while panels:
            panel = panels.pop(0)
            panels.extend(panel.get("panels", []))
            for target in panel.get("targets", []):
                expr = target["expr"]
                promql = expr
                for variable, value in GRAFANA_VARIABLES.items():
                    promql = promql.replace(variable, value)
                queries.append(PanelQuery(file.name, panel["title"], target["refId"], expr, promql))
    return queries


_ALERT = re.compile(r"^\s*- alert:\s*(?P<name>\S+)\s*$")
_EXPR = re.compile(r"^(?P<indent>\s*)expr:\s*(?P<rest>.*)$")
_FOR = re.compile(r"^(?P<head>\s*for:\s*)(?P<duration>\S+)\s*$")


def rule_exprs(text: str) -> dict[str, str]:
    """alert name -> its `expr` value, for literal blocks (`expr: |`) and one-line plain scalars.

    YAML literal block semantics: the block's lines are those indented deeper than `expr:`,
    its indentation is removed, lines are kept as they are, and the value ends in one newline
    ("clip" chomping).
    """
    lines = text.splitlines()
    exprs: dict[str, str] = {}
    name = None
    i = 0
    while i < len(lines):
        alert, expr = _ALERT.match(lines[i]), _EXPR.match(lines[i])
        i += 1
        if alert:
            name = alert["name"]
        if not expr or name is None:
            continue
        rest, indent = expr["rest"].strip(), len(expr["indent"])
        if rest == "|":
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i])
                i += 1
            exprs[name] = textwrap.dedent("\n".join(block)).strip("\n") + "\n"
        elif rest and rest[0] not in "|>'\"&*!{[":
            exprs[name] = rest.split(" #", 1)[0].strip()
        else:
            raise AssertionError(f"alert {name}: write its expr as `expr: |` or a plain one-liner, not {rest!r}")
    return exprs


def with_for_durations(text: str, durations: Mapping[str, str]) -> str:
    """The rule file with the `for:` of the named alerts replaced; every other byte unchanged."""
    out, name = [], None
    for line in text.splitlines(keepends=True):
        alert, hold = _ALERT.match(line), _FOR.match(line.rstrip("\n"))
        if alert:
            name = alert["name"]
        if hold and name in durations:
            line = f"{hold['head']}{durations[name]}\n"
        out.append(line)
    return "".join(out)
