"""`rendezvous registry run`: a local schema registry for --wire-format registry (services/localregistry)."""

from __future__ import annotations

import argparse
import sys
import threading
from dataclasses import dataclass
from typing import Any

from services.core.errors import ConfigError
from services.core.runtime import install_signal_handlers
from services.core.settings import from_namespace, setting


@dataclass(frozen=True)
class RegistrySettings:
    """Where the local registry listens."""

    port: int = setting(8090, "Port of the registry's HTTP API (the Confluent API is under /apis/ccompat/v7); "
                        "the default is not the usual 8081, which the gateway's gRPC port takes (give 8081 "
                        "where no gateway runs).",
                        env="RDV_REGISTRY_PORT", minimum=1, maximum=65535)


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")


def cmd_registry_run(args: argparse.Namespace) -> int:
    from services.localregistry import registry

    settings = from_namespace(RegistrySettings, args)
    running = registry.start(settings.port, progress=_say)
    sys.stdout.write(f"schema registry: {running.url} (schemas kept in memory; Ctrl-C stops it)\n"
                     f"use it: RDV_SCHEMA_REGISTRY={running.url} RDV_WIRE_FORMAT=registry rendezvous demo\n")
    sys.stdout.flush()
    stop = threading.Event()
    install_signal_handlers(stop)
    try:
        while not stop.wait(1.0) and running.process.poll() is None:
            pass
    finally:
        running.stop()
    if stop.is_set():
        return 0
    # It ended by itself (out of memory, killed): said, with where to look (it exited 1 silently).
    from services.localkafka.process import tail

    raise ConfigError(f"the schema registry exited (code {running.process.returncode}); its log: "
                      f"{running.log_file}\n{tail(running.log_file)}")


def register(commands: Any, selection: Any) -> None:
    parser = commands.add_parser("registry", help="run a local schema registry (Apicurio, from Maven Central)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser(
        "run", help="start Apicurio Registry in the foreground until Ctrl-C (needs Java 21+ and Maven)",
        description="Runs Apicurio Registry (fetched once from Maven Central into the cache directory) with its "
        "schemas in memory, for trying --wire-format registry locally.",
    )
    selection.arguments(run, ("registry", "run"), RegistrySettings)
    run.set_defaults(handler=cmd_registry_run)
