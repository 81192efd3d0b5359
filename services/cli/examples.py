"""Examples shown at the end of each command's `--help` (the README's, where it has them)."""

from __future__ import annotations

import argparse
import textwrap

EXAMPLES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("topics", "create"): ("rendezvous topics create --partitions 4",),
    ("model", "serve"): (
        "rendezvous model serve --model demo:champion            # the name defaults to the model's",
        "rendezvous model serve --model model.skops --name challenger --predict-timeout-s 30",
    ),
    ("serve",): (
        "rendezvous serve --models champion,challenger,canary --deadline-ms 200 --metrics-port 9100",
        "rendezvous serve --models champion,challenger,canary --wait champion=50 --deadline-ms 200",
        "rendezvous serve --schedule-file schedule.json --schedule-name prod",
    ),
    ("send",): (
        "rendezvous send --demo-rows 5            # one JSON answer per line",
        "rendezvous send --file rows.csv          # header = feature names; or .jsonl, one object per line",
        "rendezvous send --features '{\"mean_radius\": 14.1}'",
    ),
    ("compare",): (
        "rendezvous compare --since 10m",
        "rendezvous compare --from 2024-05-01T12:00Z --to 2024-05-01T13:00Z   # ISO (no zone = UTC)",
        "rendezvous compare --since 1h --html report.html",
    ),
    ("comparison", "serve"): ("rendezvous comparison serve --metrics-port 9104",),
    ("models",): ("rendezvous models                 # who is scoring: rate, latency, errors, role",),
    ("deploy",): (
        "rendezvous deploy challenger2 --model my_pkg.models:v5 --replicas 2",
        "rendezvous deploy challenger3 --model model.skops --start-at 1h   # catching up on the last hour first",
        "rendezvous deploy challenger2 --replicas 4                        # rescale a running deployment",
    ),
    ("undeploy",): ("rendezvous undeploy challenger2",),
    ("precompile",): ("rendezvous precompile   # this machine's cache; an image's: NUMBA_CACHE_DIR=DIR "
                      "NUMBA_CPU_NAME=generic first",),
    ("promote",): ("rendezvous promote challenger2 --require 'agreement>=0.95,p99<=50ms,n>=10000'",),
    ("rollback",): ("rendezvous rollback            # the previous schedule, as a new version (--to N: version N)",),
    ("schedule", "set"): ("rendezvous schedule set --models champion,challenger --wait champion=50 "
                          "--traffic challenger=0.05",),
    ("replay",): ("rendezvous replay --model my_pkg.models:v5 --since 7d --source archive --archive-dir /data/decoy "
                  "--html r.html",),
    ("gateway",): ("rendezvous gateway --http-port 8080 --grpc-port 8081 "
                   "--comparison-url http://localhost:9104/metrics",),
    ("demo",): ("rendezvous demo --duration 30",
                "rendezvous demo --topic-prefix demo. --metrics-base-port 9300 --rate 500"),
}


def describe(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Give every subcommand its one-line help as a description (argparse shows a subcommand's
    description, not the help its parent lists) and its examples; recursively."""
    for action in parser._actions:  # argparse keeps subcommands only in these private fields
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            here = (*path, name)
            text = helps.get(name)
            if sub.description is None and text:
                sub.description = f"{text[0].upper()}{text[1:]}."
            examples = EXAMPLES.get(here)
            if examples:
                sub.formatter_class = argparse.RawDescriptionHelpFormatter
                sub.description = textwrap.fill(sub.description or "", 100)
                sub.epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
            describe(sub, here)
