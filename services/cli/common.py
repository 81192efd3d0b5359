"""What every CLI command shares: finding the broker, creating topics, running a service."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from services.core import wire
from services.core.errors import ConfigError, StoppedStarting
from services.core.health import always_alive, serve_http
from services.core.kafka import create_topics, partition_counts, set_connect_timeout
from services.core.redaction import MaskingFormatter
from services.core.runtime import install_signal_handlers
from services.core.settings import KafkaSettings, ServiceSettings, Topics, redact, replaced
from services.localkafka.broker import read_bootstrap

if TYPE_CHECKING:
    from rich.console import Console

S = TypeVar("S", bound=KafkaSettings)

# Partitions a command may create a topic with, at most (`topics create`, the demo).
MAX_PARTITIONS = 10_000

log = logging.getLogger("rendezvous")


def with_bootstrap(settings: S, *, check_registry: bool = True) -> S:
    """Settings whose bootstrap is --bootstrap, KAFKA_BOOTSTRAP_SERVERS, or the local broker;
    every later wait for the broker in this command honours its --connect-timeout-s. The wire
    format is set up too, the schema registry's credentials checked unless `check_registry` is
    False (wire.configure)."""
    set_connect_timeout(settings.connect_timeout_s)
    wire.configure(settings, check_credentials=check_registry)
    if settings.bootstrap:
        return settings
    local = read_bootstrap()
    if local is None:
        raise ConfigError(
            "no Kafka broker given and no local broker running: run `rendezvous broker start`, "
            "or pass --bootstrap host:port (or set KAFKA_BOOTSTRAP_SERVERS)"
        )
    return replaced(settings, bootstrap=local)


def topic_specs(topics: Topics, partitions: int) -> dict[str, tuple[int, Mapping[str, str]]]:
    """Every topic of a deployment; requests and scores get equal partition counts (the join)."""
    # The broker stamps requests and scores with its own clock: the rendezvous decides by it.
    log_time = {"message.timestamp.type": "LogAppendTime"}
    return {
        topics.requests: (partitions, log_time),
        topics.scores: (partitions, log_time),
        topics.answers: (partitions, {}),
        topics.log: (partitions, {}),
        topics.deadletter: (1, {"retention.ms": str(14 * 24 * 3600 * 1000)}),
        topics.replies: (partitions, {"retention.ms": str(3600 * 1000)}),
        # The broker's clock too: a schedule may take effect at most a week after it was written,
        # and a writer's clock (or a forged timestamp) far ahead would let one through that every
        # later version inherits, so that none could be accepted again.
        topics.control: (1, {"cleanup.policy": "compact", **log_time}),
        topics.models: (1, {"cleanup.policy": "compact"}),
    }


def console(**options: Any) -> Any:
    """A rich Console whose print never fails on what a user typed: a comment, a model name or a
    path holding `[/]` is rich markup that does not close, and the command died with a traceback
    after it had done its work (`schedule set` after publishing: a retry published twice; a
    review). Such a line is printed as it is, markup and all."""
    from rich.console import Console
    from rich.errors import MarkupError

    class Forgiving(Console):
        def print(self, *objects: Any, **kwargs: Any) -> None:
            try:
                super().print(*objects, **kwargs)
            except MarkupError:
                super().print(*objects, **{**kwargs, "markup": False})

        def on_broken_pipe(self) -> None:
            """The reader of this console went away (`| head`, `| tee` ended by the same Ctrl-C):
            rich exits with status 1 there, whatever the command had still to do (publish, write
            its --html), and sends stdout to /dev/null whichever stream broke. This one goes
            quiet, sends its own stream to /dev/null, and lets the command finish (reviews)."""
            self.quiet = True
            quiet_stream(self.file)

    return Forgiving(**options)


def quiet_stream(stream: Any) -> None:
    """What is left to write to `stream` goes to /dev/null: its reader went away (the interpreter's
    own flush at exit would fail too, and make the exit status 120)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no file descriptor, or no stream (`>&-`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def write_output(write: Callable[[], None]) -> None:
    """`write` a command's output to stdout and flush it; a reader gone (`| head`) is no reason
    to skip what the command still has to do (its --html, its status): the rest goes nowhere."""
    try:
        write()
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_stream(sys.stdout)


def warn_of_history_loss(config: Mapping[str, Any], topic: str, notes: Console) -> None:
    """One line on `notes` (stderr) when the control topic will lose old schedule versions, for a
    command that reads it and changes nothing (publish and every service refuse such a topic)."""
    from rich.markup import escape

    from services.control.topic import history_note

    problem = history_note(config, topic)
    if problem:
        notes.print(f"[yellow]warning[/]: {escape(problem)}")


def messages() -> Any:
    """A rich Console for a command's messages, on stderr. Piped, its lines are not wrapped at 80
    columns (rich's guess without a terminal): a wrapped line split a command to copy in two."""
    return console(stderr=True, soft_wrap=not sys.stderr.isatty())


def ensure_topics(config: Mapping[str, Any], topics: Topics, partitions: int) -> list[str]:
    return create_topics(config, topic_specs(topics, partitions))


def kept_partition_counts(config: Mapping[str, Any], topics: Topics, partitions: int) -> str | None:
    """A note naming the existing topics whose partition count is not the one asked (they keep
    theirs: `topics create` said "all existed" and nothing else), or None."""
    specs = topic_specs(topics, partitions)
    counts = partition_counts(config, specs)
    differ = [f"{topic} has {counts[topic]}" for topic, (wanted, _) in specs.items() if counts[topic] != wanted]
    if not differ:
        return None
    return (f"note: {', '.join(differ)} partition(s), not {partitions}: topics that exist keep theirs "
            "(--partitions applies to new ones; `rendezvous broker reset` deletes a local broker's topics)")


class Runnable(Protocol):
    def run(self, stop: threading.Event) -> None: ...


def run_service(make: Callable[[], Runnable], settings: KafkaSettings, starting: str = "starting") -> None:
    """Run the service `make()` builds in the foreground until SIGINT/SIGTERM (a second one exits
    at once).

    Services with `ServiceSettings` get their metrics/health endpoint here, up while the service
    is built (a model loading: `starting` says so, not ready and alive; a worker loading a model
    for minutes refused every probe, and was restarted by its liveness probe: a review); the
    gateway serves its own beside its REST API."""
    log.info("starting with %s", settings.describe())
    log.debug("librdkafka config: %s", redact(settings.librdkafka()))
    built: list[Runnable] = []

    def readiness() -> tuple[bool, str]:
        probe = getattr(built[0], "readiness", None) if built else None
        return probe() if probe else (bool(built), "running" if built else starting)

    def liveness() -> tuple[bool, str]:
        probe = getattr(built[0], "liveness", None) if built else None
        return probe() if probe else always_alive()

    server = None
    if isinstance(settings, ServiceSettings):
        server = serve_http(settings.metrics_port, readiness, settings.metrics_host, liveness)
    stop = threading.Event()
    install_signal_handlers(stop)
    try:
        built.append(make())
        if stop.is_set():  # asked to stop while it was built: nothing was read yet
            log.info("stopping before the service started")
            return
        built[0].run(stop)
    except StoppedStarting as stopped:
        log.info("%s", stopped)  # stopping before the broker answered, or a model loaded, is no error
    finally:
        if server is not None:
            server.shutdown()


def setup_logging(level: str) -> None:
    """Log to stderr; every line is masked (no remembered secret ever reaches the output)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
