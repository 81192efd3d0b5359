"""`rendezvous`: the one command line; the only place that composes services.

Every flag also reads an environment variable (shown in --help); Kafka commands use
--bootstrap, else KAFKA_BOOTSTRAP_SERVERS, else the local broker of `rendezvous broker start`.
Errors print one line (`error: ...`) and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console

from services.cli.common import ensure_topics, run_service, setup_logging, with_bootstrap
from services.core.errors import RendezvousError
from services.core.settings import KafkaSettings, add_arguments, from_namespace, setting

EXIT_ERROR = 2

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class TopicSettings(KafkaSettings):
    """Create every topic of a deployment."""

    partitions: int = setting(
        4, "Partitions of requests/scores/answers/log (requests and scores must match)."
    )


def cmd_broker(args: argparse.Namespace) -> int:
    from services.localkafka.broker import start_background, status_background, stop_background

    console = Console(stderr=True)
    if args.action == "start":
        broker = start_background(progress=console.print)
        print(broker.bootstrap)  # noqa: T201 - the command's output, for scripts
    elif args.action == "stop":
        stopped = stop_background(progress=console.print)
        console.print("local broker stopped" if stopped else "no local broker was running")
    else:
        status = status_background()
        if status is None:
            console.print("no local broker running")
            return 1
        print(json.dumps(status, indent=2, default=str))  # noqa: T201
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    settings = with_bootstrap(from_namespace(TopicSettings, args))
    created = ensure_topics(settings.librdkafka(), settings.topics(), settings.partitions)
    Console(stderr=True).print(f"created {len(created)} topic(s): {', '.join(created) or 'all existed'}")
    return 0


def cmd_model_serve(args: argparse.Namespace) -> int:
    from services.model_worker.settings import WorkerSettings
    from services.model_worker.worker import ModelWorker

    settings = with_bootstrap(from_namespace(WorkerSettings, args))
    run_service(ModelWorker(settings), settings.metrics_port, settings)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from services.rendezvous.service import Rendezvous
    from services.rendezvous.settings import RendezvousSettings

    settings = with_bootstrap(from_namespace(RendezvousSettings, args))
    run_service(Rendezvous(settings), settings.metrics_port, settings)
    return 0


def cmd_comparison_serve(args: argparse.Namespace) -> int:
    from services.comparison.service import ComparisonService
    from services.comparison.settings import ComparisonSettings

    settings = with_bootstrap(from_namespace(ComparisonSettings, args))
    run_service(ComparisonService(settings), settings.metrics_port, settings)
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from services.cli.send import SendSettings, send

    return send(with_bootstrap(from_namespace(SendSettings, args)))


def cmd_demo(args: argparse.Namespace) -> int:
    from services.cli.demo import DemoSettings, run_demo

    return run_demo(from_namespace(DemoSettings, args), Console())


def cmd_compare(args: argparse.Namespace) -> int:
    from services.cli.compare import run_compare
    from services.compare_report.settings import CompareSettings

    return run_compare(with_bootstrap(from_namespace(CompareSettings, args)))


def cmd_gateway(args: argparse.Namespace) -> int:
    from services.gateway.service import GatewayService
    from services.gateway.settings import GatewaySettings
    from services.model_worker.models import DEMO_FEATURES

    settings = with_bootstrap(from_namespace(GatewaySettings, args))
    # The demo models' features describe the models until they publish their own signatures.
    run_service(GatewayService(settings, DEMO_FEATURES), 0, settings)
    return 0


def _settings_classes() -> dict[str, type]:
    from services.cli.demo import DemoSettings
    from services.cli.send import SendSettings
    from services.compare_report.settings import CompareSettings
    from services.comparison.settings import ComparisonSettings
    from services.model_worker.settings import WorkerSettings
    from services.rendezvous.settings import RendezvousSettings

    return {"model serve": WorkerSettings, "serve": RendezvousSettings, "send": SendSettings,
            "demo": DemoSettings, "topics create": TopicSettings,
            "comparison serve": ComparisonSettings, "compare": CompareSettings}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rendezvous",
        description="Streaming model serving on Apache Kafka: several models score every request, "
        "the rendezvous answers by schedule under a deadline, and logs every output for comparison.",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR [default: INFO]")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    classes = _settings_classes()

    broker = commands.add_parser("broker", help="start/stop/status of a local Kafka broker (no Docker)")
    broker.add_argument("action", choices=["start", "stop", "status"])
    broker.set_defaults(handler=cmd_broker)

    topics = commands.add_parser("topics", help="create the topics of a deployment")
    topics_sub = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = topics_sub.add_parser("create", help="create every topic (existing ones are left alone)")
    add_arguments(create, classes["topics create"])
    create.set_defaults(handler=cmd_topics)

    model = commands.add_parser("model", help="run a model worker")
    model_sub = model.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve_model = model_sub.add_parser("serve", help="score every request with one model")
    add_arguments(serve_model, classes["model serve"])
    serve_model.set_defaults(handler=cmd_model_serve)

    for name in ("serve", "rendezvous"):
        serve = commands.add_parser(name, help="run the rendezvous service (join, schedule, answer, log)")
        add_arguments(serve, classes["serve"])
        serve.set_defaults(handler=cmd_serve)

    comparison = commands.add_parser("comparison", help="run the live comparison service")
    comparison_sub = comparison.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve_comparison = comparison_sub.add_parser(
        "serve", help="read the comparison log; export per-model and champion-vs-challenger metrics"
    )
    add_arguments(serve_comparison, classes["comparison serve"])
    serve_comparison.set_defaults(handler=cmd_comparison_serve)

    send = commands.add_parser("send", help="send requests, print their answers as JSON lines")
    add_arguments(send, classes["send"])
    send.set_defaults(handler=cmd_send)

    demo = commands.add_parser("demo", help="broker + models + rendezvous + load, with a live table")
    add_arguments(demo, classes["demo"])
    demo.set_defaults(handler=cmd_demo)

    compare = commands.add_parser(
        "compare", help="report on the comparison log over a time or offset range: table, optional HTML plots"
    )
    add_arguments(compare, classes["compare"])
    compare.set_defaults(handler=cmd_compare)

    from services.gateway.settings import GatewaySettings

    gateway = commands.add_parser(
        "gateway", help="the Open Inference Protocol (REST + gRPC) in front of the rendezvous, and /ui"
    )
    add_arguments(gateway, GatewaySettings)
    gateway.set_defaults(handler=cmd_gateway)

    from services.cli import lifecycle_commands

    lifecycle_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # `kill -USR1 <pid>` prints every thread's stack: the first question about a stuck service.
    with contextlib.suppress(AttributeError, OSError, ValueError):  # stderr without a file descriptor
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    handler: Handler = args.handler
    try:
        return handler(args)
    except RendezvousError as err:
        logging.getLogger("rendezvous").debug("failed", exc_info=True)
        sys.stderr.write(f"error: {err}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
