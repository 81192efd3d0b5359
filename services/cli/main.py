"""`rendezvous`: the one command line; the only place that composes services.

Every flag also reads an environment variable (shown in --help); Kafka commands use
--bootstrap, else KAFKA_BOOTSTRAP_SERVERS, else the local broker of `rendezvous broker start`.
Errors print one line (`error: ...`) and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import json
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from confluent_kafka import KafkaException

from services.cli.common import (
    MAX_PARTITIONS,
    ensure_topics,
    kept_partition_counts,
    messages,
    quiet_stream,
    run_service,
    setup_logging,
    with_bootstrap,
)
from services.cli.examples import describe
from services.core.errors import ConfigError, RendezvousError, Stopped, interrupted_status
from services.core.redaction import mask
from services.core.runtime import signals_taken, stop_with_parent
from services.core.settings import KafkaSettings, add_arguments, from_namespace, setting
from services.core.terminal import printable
from services.core.variables import unknown_variables

EXIT_ERROR = 2

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class TopicSettings(KafkaSettings):
    """Create every topic of a deployment."""

    partitions: int = setting(
        4, "Partitions of requests/scores/answers/log/replies (requests and scores must match).",
        minimum=1, maximum=MAX_PARTITIONS,
    )


def cmd_broker(args: argparse.Namespace) -> int:
    from services.localkafka.broker import reset_background, start_background, status_background, stop_background

    _check_broker_flags(args)
    console = messages()
    if args.action == "start":
        broker = start_background(progress=console.print, fresh=True if args.fresh else None, tls=args.tls)
        print(broker.bootstrap)  # noqa: T201 - the command's output, for scripts
        status = broker.status()
        if "tls_ca" in status:
            console.print(f"TLS listener {broker.listener('SSL')}: clients use --kafka-config security.protocol=SSL "
                          f"--kafka-config ssl.ca.location={status['tls_ca']}")
    elif args.action == "stop":
        stopped = stop_background(progress=console.print)
        console.print("local broker stopped; its topics are kept (`rendezvous broker reset` deletes them)"
                      if stopped else "no local broker was running")
    elif args.action == "reset":
        if not args.yes and not _confirmed("delete every topic of the local broker (requests, log, control...)?"):
            raise ConfigError("broker reset deletes every topic: confirm, or pass --yes")
        console.print(f"local broker data deleted ({reset_background(progress=console.print):,} bytes)")
    else:
        status = status_background()
        print(json.dumps(status, indent=2, default=str))  # noqa: T201
        return 0 if status["running"] else 1
    return 0


# Which action each of `broker`'s flags is for: given to another, it was ignored without a word
# (`broker reset --fresh`, `broker status --tls`; the misconfiguration probe).
_BROKER_FLAGS = {"fresh": "start", "tls": "start", "yes": "reset"}


def _check_broker_flags(args: argparse.Namespace) -> None:
    for name, action in _BROKER_FLAGS.items():
        if getattr(args, name) and args.action != action:
            raise ConfigError(f"broker {args.action}: --{name} is for `broker {action}` only")


def _confirmed(question: str) -> bool:
    """Ask on a terminal; anything but yes (or no terminal at all) is a no."""
    if not sys.stdin.isatty():
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_topics(args: argparse.Namespace) -> int:
    settings = with_bootstrap(from_namespace(TopicSettings, args))
    config, topics = settings.librdkafka(), settings.topics()
    created = ensure_topics(config, topics, settings.partitions)
    sys.stderr.write(f"created {len(created)} topic(s): {', '.join(created) or 'all existed'}\n")
    note = kept_partition_counts(config, topics, settings.partitions)
    if note:
        sys.stderr.write(note + "\n")
    return 0


def cmd_model_serve(args: argparse.Namespace) -> int:
    from services.model_worker.settings import WorkerSettings
    from services.model_worker.worker import ModelWorker

    settings = with_bootstrap(from_namespace(WorkerSettings, args))
    run_service(lambda: ModelWorker(settings), settings, starting="loading the model(s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from services.rendezvous.service import Rendezvous
    from services.rendezvous.settings import RendezvousSettings

    settings = with_bootstrap(from_namespace(RendezvousSettings, args))
    run_service(lambda: Rendezvous(settings), settings)
    return 0


def cmd_comparison_serve(args: argparse.Namespace) -> int:
    from services.comparison.service import ComparisonService
    from services.comparison.settings import ComparisonSettings

    settings = with_bootstrap(from_namespace(ComparisonSettings, args))
    run_service(lambda: ComparisonService(settings), settings)
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from services.cli.send import SendSettings, send

    return send(with_bootstrap(from_namespace(SendSettings, args)))


def cmd_demo(args: argparse.Namespace) -> int:
    from services.cli.common import console
    from services.cli.demo import DemoSettings, run_demo

    return run_demo(from_namespace(DemoSettings, args), console())


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
    run_service(lambda: GatewayService(settings, DEMO_FEATURES), settings)
    return 0


# Each command's settings class, imported only when that command is being parsed: `serve`
# should not load numpy, matplotlib or the report code it never runs.
SETTINGS = {
    ("model", "serve"): "services.model_worker.settings:WorkerSettings",
    ("serve",): "services.rendezvous.settings:RendezvousSettings",
    ("rendezvous",): "services.rendezvous.settings:RendezvousSettings",
    ("send",): "services.cli.send:SendSettings",
    ("demo",): "services.cli.demo:DemoSettings",
    ("comparison", "serve"): "services.comparison.settings:ComparisonSettings",
    ("compare",): "services.compare_report.settings:CompareSettings",
}


class Selection:
    """Which command the arguments name, so only its flags (and imports) are built.
    Without arguments (the tests, documentation) every command is built."""

    def __init__(self, argv: Sequence[str] | None):
        self.words: list[str] | None = None
        if argv is None:
            return
        args = list(argv)
        while args and args[0].startswith("-"):  # top-level options and their values
            flag = args.pop(0)
            if flag == "--log-level" and args:
                args.pop(0)
        self.words = []
        for arg in args:
            if arg.startswith("-"):
                break
            self.words.append(arg)

    def wants(self, path: tuple[str, ...]) -> bool:
        return self.words is None or tuple(self.words[: len(path)]) == path

    def arguments(self, parser: argparse.ArgumentParser, path: tuple[str, ...], settings: str | type) -> None:
        """Add the settings' flags to `parser` if this command is the one being parsed."""
        if not self.wants(path):
            return
        if isinstance(settings, str):
            module, _sep, name = settings.partition(":")
            add_arguments(parser, getattr(importlib.import_module(module), name))
        else:
            add_arguments(parser, settings)


class Parser(argparse.ArgumentParser):
    """argparse, except that a mistake is one line and a stray argument is not echoed: it may be a
    secret typed without its flag (`rendezvous send sasl.password=...`). Subcommand parsers are of
    this class too."""

    # The command line being parsed: the hints below read what was typed. Set on a subclass made
    # per build_parser call (argparse makes subcommand parsers of the parent's own class), so two
    # parsers in one process never read each other's command line.
    given: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Every parser, the subcommands' too (argparse makes them with add_parser's arguments).
        # `--log debug` was taken for --log-level, but Selection reads the words as written and built
        # no command's flags: every flag after it was "unrecognized" (a probe); after the command
        # word, `demo --budget 2` was --budget-ms 2 (a TIMEOUT for every answer; a review).
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> NoReturn:
        message = _unechoed(message)
        # One line, not argparse's usage dump (20 lines for most commands) above it. The top-level
        # parser reports a subcommand's unknown flags: its help is the one that lists the flags.
        command = _command_prog(self, Selection(self.given).words or [])
        self.exit(2, f"{self.prog}: error: {_cut(message)}{_dash_value_hint(message, self.given)}"
                     f"{self._placement_hint(message)}; see `{command} --help`\n")

    def _placement_hint(self, message: str) -> str:
        """A flag of the top-level parser given after the command: its --help does not list it, and
        the error led nowhere (`rendezvous serve --log-level DEBUG`; a review). A flag given before
        the action word: taken for the action (`rendezvous schedule --format json show` said
        "invalid choice: 'json'")."""
        if message.startswith("argument ACTION: invalid choice"):
            command = self.prog.split()[-1]  # this parser's own word: what follows it is the action
            rest = list(self.given[self.given.index(command) + 1:]) if command in self.given else []
            return f" (the action comes before its flags: `{self.prog} ACTION --flag ...`)" if (
                rest and rest[0].startswith("-")) else ""
        _head, sep, items = message.partition("unrecognized arguments: ")
        own = [flag for flag in items.split(" ") if sep and flag in self._option_string_actions]
        if not own or self.prog != "rendezvous":
            return ""
        return f" ({own[0]} goes before the command: `rendezvous {own[0]} VALUE COMMAND ...`)"


_FLAG_ONLY = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*")
_WORD_ONLY = re.compile(r"[a-z][a-z0-9-]{0,39}")
_NOT_SHOWN = "<a value, not shown>"
_INVALID_CHOICE = re.compile(r"invalid choice: '(.*)' \(choose from")
_AMBIGUOUS = re.compile(r"ambiguous option: (\S+) could match")


def _unechoed(message: str) -> str:
    """argparse's message without what was typed, unless it is a flag or a command word: a stray
    argument may be a secret typed without its flag (`rendezvous --kafka-config sasl.password=x
    send`: the value is taken for the command), `--s=http://u:pw@host` for an abbreviation."""
    head, sep, items = message.partition("unrecognized arguments: ")
    if sep:
        return head + sep + " ".join(item if _FLAG_ONLY.fullmatch(item) else _NOT_SHOWN for item in items.split(" "))
    choice = _INVALID_CHOICE.search(message)
    if choice is not None and not _WORD_ONLY.fullmatch(choice.group(1)):
        return message[:choice.start(1) - 1] + _NOT_SHOWN + message[choice.end(1) + 1:]
    ambiguous = _AMBIGUOUS.search(message)
    if ambiguous is not None:
        flag, equals, _value = ambiguous.group(1).partition("=")
        typed = flag + (f"={_NOT_SHOWN}" if equals else "")
        return message[:ambiguous.start(1)] + typed + message[ambiguous.end(1):]
    return message


_EXPECTED_VALUE = re.compile(r"argument (--[a-z0-9-]+)(?:/-\w)?: expected one argument")


def _dash_value_hint(message: str, given: Sequence[str]) -> str:
    """argparse takes `--since -5m`'s value for a flag: say how to write a value that begins with '-'."""
    match = _EXPECTED_VALUE.match(message)
    if match is None:
        return ""
    flag = match.group(1)
    dashed = any(given[i + 1].startswith("-") for i, arg in enumerate(given[:-1]) if arg == flag)
    return f" (a value that begins with '-' is written {flag}=-VALUE)" if dashed else ""


def _command_prog(parser: argparse.ArgumentParser, words: Sequence[str]) -> str:
    """The prog of the deepest subcommand `words` name under `parser` (`rendezvous model serve`)."""
    for word in words:
        commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not commands or word not in commands[0].choices:
            break
        parser = commands[0].choices[word]
    return parser.prog


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the arguments, only the named command's flags are built."""
    selection = Selection(argv)
    parser_class = type("Parser", (Parser,), {"given": tuple(argv or ())})
    parser = parser_class(
        prog="rendezvous",
        description="Streaming model serving on Apache Kafka: several models score every request, "
        "the rendezvous answers by schedule under a deadline, and logs every output for comparison.",
    )
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="DEBUG, INFO, WARNING or ERROR [default: INFO]")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    broker = commands.add_parser(
        "broker", help="start/stop/status/reset of a local Kafka broker (no Docker)",
        description="A local single-node Kafka broker. `stop` keeps its topics and `start` resumes them "
        "(like a database); `reset` deletes them (asks first unless --yes); `status` says where the data "
        "lives and how big it is (exit 1 when not running). Before `start` reports ready, the broker gets "
        "about 1.5 s of serving-like traffic so its JIT has compiled the hot paths (RDV_BROKER_WARMUP=off "
        "skips it); RDV_BROKER_CDS=off, RDV_BROKER_JVM_OPTS, RDV_BROKER_PROPERTIES and RDV_BROKER_REQUEST_LOG (a file "
        "for a line per request the broker completes): see the README.",
    )
    broker.add_argument("action", choices=["start", "stop", "status", "reset"],
                        help="start (or reuse a running one), stop (topics kept), status, reset (delete every topic)")
    broker.add_argument("--fresh", action="store_true", help="start: begin empty even if data was kept (it is deleted)")
    broker.add_argument("--yes", action="store_true", help="reset: do not ask")
    broker.add_argument("--tls", action="store_true",
                        help="start: add a TLS listener, with a CA and certificate generated in the data directory")
    broker.set_defaults(handler=cmd_broker)

    topics = commands.add_parser("topics", help="create the topics of a deployment")
    topics_sub = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = topics_sub.add_parser("create", help="create every topic; an existing one keeps its partitions and "
                                   "retention, and gets the timestamp type and cleanup policy the deployment relies on")
    selection.arguments(create, ("topics", "create"), TopicSettings)
    create.set_defaults(handler=cmd_topics)

    model = commands.add_parser("model", help="run a model worker")
    model_sub = model.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve_model = model_sub.add_parser("serve", help="score every request with one model")
    selection.arguments(serve_model, ("model", "serve"), SETTINGS[("model", "serve")])
    serve_model.set_defaults(handler=cmd_model_serve)

    for name, what in (("serve", "run the rendezvous service (join, schedule, answer, log)"),
                       ("rendezvous", "the same as serve (the service's own name)")):
        serve = commands.add_parser(name, help=what)
        selection.arguments(serve, (name,), SETTINGS[(name,)])
        serve.set_defaults(handler=cmd_serve)

    comparison = commands.add_parser("comparison", help="run the live comparison service")
    comparison_sub = comparison.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve_comparison = comparison_sub.add_parser(
        "serve", help="read the comparison log; export per-model and champion-vs-challenger metrics"
    )
    selection.arguments(serve_comparison, ("comparison", "serve"), SETTINGS[("comparison", "serve")])
    serve_comparison.set_defaults(handler=cmd_comparison_serve)

    send = commands.add_parser("send", help="send requests, print their answers as JSON lines")
    selection.arguments(send, ("send",), SETTINGS[("send",)])
    send.set_defaults(handler=cmd_send)

    demo = commands.add_parser("demo", help="broker + models + rendezvous + load, with a live table")
    selection.arguments(demo, ("demo",), SETTINGS[("demo",)])
    demo.set_defaults(handler=cmd_demo)

    compare = commands.add_parser(
        "compare", help="report on the comparison log over a time or offset range: table, optional HTML plots"
    )
    selection.arguments(compare, ("compare",), SETTINGS[("compare",)])
    compare.set_defaults(handler=cmd_compare)

    gateway = commands.add_parser(
        "gateway", help="the Open Inference Protocol (REST + gRPC) in front of the rendezvous, and /ui"
    )
    selection.arguments(gateway, ("gateway",), "services.gateway.settings:GatewaySettings")
    gateway.set_defaults(handler=cmd_gateway)

    from services.cli import acl_command, lifecycle_commands, precompile, registry_command

    lifecycle_commands.register(commands, selection)
    acl_command.register(commands, selection)
    registry_command.register(commands, selection)
    precompile.register(commands, selection)
    describe(parser)
    return parser


def _stop_here(signum: int, _frame: object) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def _stopped_cleanly() -> Iterator[None]:
    """SIGTERM and SIGHUP end a command as Ctrl-C does, running its clean-up: by default they end
    the process at once, and the demo's broker, a registry still starting, a deploy's half-started
    replicas were left running (a review). A service installs its own handler (drain, commit) when
    it runs (services/core/runtime.py), replacing this one. The handlers before are put back after
    (a test calling `main` keeps its own)."""
    with signals_taken((signal.SIGTERM, signal.SIGHUP), _stop_here):  # SIGHUP ignored (nohup) stays so
        yield


def main(argv: Sequence[str] | None = None) -> int:
    # `kill -USR1 <pid>` prints every thread's stack: the first question about a stuck service.
    with contextlib.suppress(AttributeError, OSError, ValueError):  # stderr without a file descriptor
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    with _stopped_cleanly():
        return _run(argv)


ERROR_CHARS = 1_000


def _cut(message: str) -> str:
    """An error line of a sane length: a 100 KB value was quoted whole (a probe). Cut after the
    secrets are masked: a secret cut in two would not be found, and its first part shown. What a
    terminal would act on is escaped: an error can quote a log's model names, and one holding
    ESC sequences set the window title and cleared the screen (a review)."""
    message = printable(message, keep="\n\t")
    if len(message) <= ERROR_CHARS:
        return message
    return f"{message[:ERROR_CHARS]}... ({len(message) - ERROR_CHARS:,} characters more)"


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
    setup_logging(args.log_level)
    for line in unknown_variables(os.environ):
        logging.getLogger("rendezvous").warning("%s", line)
    stop_with_parent()  # a demo's service dies with the demo, even one killed with -9
    return _flushed(_handled(args.handler, args))


def _flushed(status: int) -> int:
    """`status`, once stdout is flushed. Here, not at exit: stdout buffered (no terminal), a reader
    gone met the last write only in the interpreter's own flush, exit status 120 and an
    "Exception ignored" line (a review). A reader gone leaves the command's status as it is (a
    failure stays one under `set -o pipefail`); a full disk is an error of its own."""
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        return status
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_stream(sys.stdout)
    except OSError as exc:
        quiet_stream(sys.stdout)
        sys.stderr.write(_cut(f"error: cannot write the output: {exc.strerror or exc}") + "\n")
        return EXIT_ERROR
    return status


def _handled(handler: Handler, args: argparse.Namespace) -> int:
    """The handler's status, or the one its failure gives, said in one line."""
    try:
        return handler(args)
    except RendezvousError as err:
        logging.getLogger("rendezvous").debug("failed", exc_info=True)
        sys.stderr.write(_cut(mask(f"error: {err}")) + "\n")
        return EXIT_ERROR
    except KafkaException as exc:
        # The Kafka client refused something our wrappers did not foresee: still one line.
        logging.getLogger("rendezvous").debug("failed", exc_info=True)
        from services.core.kafka import kafka_message

        sys.stderr.write(_cut(mask(f"error: Kafka client: {kafka_message(exc)}")) + "\n")
        return EXIT_ERROR
    except KeyboardInterrupt as stopped:
        return interrupted_status(stopped)
    except BrokenPipeError:
        # The reader of our output went away (`rendezvous ... | head`): nothing more to say. Later
        # writes (the interpreter's own flush at exit) go nowhere instead of failing again.
        quiet_stream(sys.stdout)
        return 0
    except OSError as exc:
        # The machine refused a file or socket operation (a full disk, a read-only or missing
        # directory): its words and the path, on one line.
        logging.getLogger("rendezvous").debug("failed", exc_info=True)
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(_cut(mask(f"error: {exc.strerror or exc}{where}")) + "\n")
        return EXIT_ERROR
    except Exception:  # noqa: BLE001 - printed (masked), not swallowed
        # A bug: the traceback is wanted, but masked like every other line of output.
        sys.stderr.write(printable(mask(traceback.format_exc()), keep="\n\t"))
        return 1


if __name__ == "__main__":
    sys.exit(main())
