"""The RDV_* variables the project reads, and the warning for one that nothing reads (a typo)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from services.cli.main import build_parser
from services.core.variables import KNOWN, unknown_variables

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\bRDV_[A-Z0-9_]*[A-Z0-9]\b")


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _named_in(paths: list[Path]) -> set[str]:
    return {name for path in paths for name in NAME.findall(path.read_text(encoding="utf-8"))}


def test_the_list_is_every_variable_a_flag_or_the_code_reads() -> None:
    """Built from every command's flags (their help names the variable) and every RDV_* name in the
    services' and benches' source: a flag added without its variable in the list, or a name
    left in the list after its flag went, fails here."""
    flags = {name for parser in _parsers(build_parser()) for action in parser._actions
             for name in NAME.findall(action.help or "")}
    code = [p for p in [*ROOT.glob("services/**/*.py"), *ROOT.glob("bench/**/*.py")]
            if p.name != "variables.py"]
    read = flags | _named_in(code)
    assert sorted(KNOWN - read) == [] and sorted(read - KNOWN) == []


def test_what_the_chart_and_compose_set_is_read() -> None:
    files = [*ROOT.glob("deploy/helm/**/*.yaml"), *ROOT.glob("deploy/helm/**/*.tpl"), ROOT / "docker-compose.yml"]
    # Comments may name the image's build argument RDV_EXTRAS, which no command reads.
    deployed = {name for path in files for line in path.read_text(encoding="utf-8").splitlines()
                for name in NAME.findall(line.partition("#")[0])}
    assert deployed and sorted(deployed - KNOWN) == []


def test_a_misspelt_variable_is_said_with_the_nearest_name() -> None:
    lines = unknown_variables({"RDV_DEADLIN_MS": "500", "RDV_DEADLINE_MS": "500", "PATH": "/bin", "RDV_ZZZ": "1"})
    assert lines == [
        "RDV_DEADLIN_MS is set, but no rendezvous command reads it (did you mean RDV_DEADLINE_MS?): it changes nothing",
        "RDV_ZZZ is set, but no rendezvous command reads it: it changes nothing",
    ]


def test_known_and_other_variables_are_not_said() -> None:
    assert unknown_variables({name: "" for name in KNOWN} | {"KAFKA_BOOTSTRAP_SERVERS": "h:9092", "rdv_x": ""}) == []


def test_a_name_near_the_bootstrap_variable_is_said_and_other_tools_kafka_names_are_not() -> None:
    """KAFKA_BOOTSTRAP_SERVER=h:9092 had every command use the local broker (a review)."""
    lines = unknown_variables({"KAFKA_BOOTSTRAP_SERVER": "h:9092", "KAFKA_BOOTSTRAPSERVERS": "h",
                               "KAFKA_HEAP_OPTS": "-Xmx1g", "KAFKA_OPTS": ""})
    assert lines == [f"{name} is set, but no rendezvous command reads it (did you mean KAFKA_BOOTSTRAP_SERVERS?): "
                     "it changes nothing" for name in ("KAFKA_BOOTSTRAPSERVERS", "KAFKA_BOOTSTRAP_SERVER")]


def test_a_command_says_it_at_start() -> None:
    env = dict(os.environ, RDV_PARTITONS="8")
    done = subprocess.run([sys.executable, "-m", "services.cli.main", "acl", "show"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "RDV_PARTITONS is set, but no rendezvous command reads it (did you mean RDV_PARTITIONS?)" in done.stderr
