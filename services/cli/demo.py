"""`rendezvous demo`: broker + models + rendezvous + a load generator, with a live table.

Each model and the rendezvous run as their own processes (as in production, and so they
do not share one GIL); their logs go to files under the cache directory. The load
generator sends demo rows at a fixed rate through the `Client` and tallies the answers.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import subprocess
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from services.cli.common import MAX_PARTITIONS, ensure_topics
from services.cli.shown import shown
from services.cli.spawn import model_workers, output_of, service_env, spawn
from services.client.client import Answer, Client
from services.control import changes
from services.control.schedule import Schedule
from services.control.topic import MIN_EFFECTIVE_IN_MS, load_book, publish
from services.core import hostcpu, wire
from services.core.errors import BrokerError, ConfigError
from services.core.kafka import groups_with_members, set_connect_timeout, wait_for_broker, wait_for_groups
from services.core.ranges import format_ms
from services.core.runtime import now_ms, stop_processes
from services.core.settings import MAX_PORT, KafkaSettings, Topics, replaced, setting
from services.localkafka.broker import LocalBroker, read_bootstrap, start_background, stop_background
from services.localkafka.config import cache_dir
from services.localkafka.process import error_lines
from services.model_worker.models import demo_rows
from services.model_worker.models.loader import check_spec
from services.model_worker.settings import model_group
from services.rendezvous.settings import DEFAULT_SCHEDULE_NAME

# Below this many CPUs the demo co-hosts its models unless told otherwise: on 2 cores, three model
# processes beside the broker, the rendezvous and the load generator kept the machine 89-95% busy
# at 200 req/s and missed deadlines whenever it stalled; one worker scoring all three took 31-32%
# of a core against 52% for the three (docs/benchmarks.md).
SEPARATE_WORKERS_MIN_CPUS = 4


@dataclass(frozen=True)
class DemoSettings(KafkaSettings):
    """Run the whole stack on one machine and watch it answer."""

    duration: float = setting(0.0, "Stop after this many seconds (0 = until Ctrl-C).")
    rate: float = setting(200.0, "Requests per second sent by the load generator.", above=0)
    budget_ms: int = setting(200, "Deadline budget of each request (ms).", minimum=1)
    models: tuple[str, ...] = setting(
        ("champion=demo:champion", "challenger=demo:challenger", "canary=demo:canary"),
        "Models as name=spec, in schedule order (first = champion).",
    )
    partitions: int = setting(4, "Partitions of the demo topics when it creates them (kept topics keep theirs; "
                              "`broker reset` deletes them).", minimum=1, maximum=MAX_PARTITIONS)
    rendezvous: int = setting(1, "Rendezvous instances sharing the work (each takes some of the partitions).",
                                 minimum=1)
    metrics_base_port: int = setting(
        9100, "Rendezvous metrics on this port, models on the next ones (0 = no metrics endpoints).",
        maximum=MAX_PORT - 100,
    )
    co_host: bool | None = setting(
        None, "Score with every model in one worker process (`model serve --co-host`): fewer Kafka requests and "
        "processes, so less CPU per request; but a slow model then holds up the others. Unset: co-hosted "
        f"on a machine with fewer than {SEPARATE_WORKERS_MIN_CPUS} CPUs, one process per model otherwise."
    )

    def validate(self) -> None:
        for flag, value, least in (("--rate", self.rate, 0.0), ("--budget-ms", self.budget_ms, 0),
                                   ("--partitions", self.partitions, 0)):
            if value <= least:
                raise ConfigError(f"{flag} must be positive, got {value}")
        if self.duration < 0:
            raise ConfigError(f"--duration must be >= 0, got {self.duration}")
        if not 1 <= self.rendezvous <= self.partitions:
            raise ConfigError(f"--rendezvous must be within 1..--partitions ({self.partitions}), got {self.rendezvous}")
        for item in self.models:
            name, _, spec = item.partition("=")
            if not name.strip() or not spec.strip():
                raise ConfigError(f"--models expects name=spec, got {item!r}")
            # Here, not in a worker that the demo would wait 2 minutes for; a pickle's trust is the
            # workers' to judge (RDV_TRUST_MODEL_FILE reaches them), which refuse it in one line.
            check_spec(spec, trust_model_file=True)
        names = [name for name, _ in self.model_specs()]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ConfigError(f"--models names {', '.join(twice)} more than once")
        self._check_metrics_ports(len(names))

    def _check_metrics_ports(self, models: int) -> None:
        """A port past 65535 was found only once the broker ran, by a bind that raised OverflowError
        (a traceback; a review)."""
        last = self.metrics_base_port + self.rendezvous + models - 1
        if self.metrics_base_port and last > MAX_PORT:
            raise ConfigError(f"--metrics-base-port {self.metrics_base_port} leaves no room for the metrics ports of "
                              f"{self.rendezvous} rendezvous and {models} models (the last would be {last}): give a "
                              "lower one, or 0 for none")

    def co_hosted(self) -> bool:
        """--co-host / --no-co-host as given, else whether this machine is too small for a process per model."""
        if self.co_host is not None:
            return self.co_host
        return (os.cpu_count() or 1) < SEPARATE_WORKERS_MIN_CPUS

    def model_specs(self) -> list[tuple[str, str]]:
        """--models as (name, spec) pairs."""
        return [(name, spec) for name, spec in (item.split("=", 1) for item in self.models)]


USABLE = frozenset({"OK", "FALLBACK"})  # the statuses that answer with a model's score


class Tally:
    """Answers seen so far: by status and model, deadlines met, latencies (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.by_outcome: Counter[tuple[str, str]] = Counter()
        self.on_time = 0
        self.answered = 0
        self.latencies: deque[int] = deque(maxlen=20_000)
        # The whole machine's CPU since the load began: on a VM, time stolen by the hypervisor
        # for other guests makes deadlines slip that the same code meets on a quiet host.
        self.host_at_start = hostcpu.read()

    def add(self, future: Future[Answer]) -> None:
        if future.exception() is not None:
            with self.lock:
                self.failed += 1
            return
        answer = future.result()
        # Met as the project says it (stats/deadline.py): a usable score by the deadline. A TIMEOUT
        # or ERROR answer in time was counted as met (a review).
        met = answer.status in USABLE and answer.score is not None and answer.received_at <= answer.deadline
        with self.lock:
            self.answered += 1
            self.by_outcome[(answer.model or "-", answer.status)] += 1
            self.on_time += met
            self.latencies.append(answer.latency_ms)

    def gave_up(self, unanswered: int) -> None:
        """Requests still without an answer after their deadline and the demo's drain."""
        with self.lock:
            self.failed += unanswered

    def table(self, elapsed: float) -> Table:
        with self.lock:
            latency = "-"
            if self.latencies:
                p50, p99 = np.percentile(np.array(self.latencies), [50, 99])
                latency = f"{p50:.0f} / {p99:.0f} ms"
            table = Table(title=f"rendezvous demo - {elapsed:5.1f}s")
            table.add_column("answered by")
            table.add_column("status")
            table.add_column("answers", justify="right")
            table.add_column("share", justify="right")
            for (model, status), n in sorted(self.by_outcome.items()):
                # The model's name as the answers topic gave it: anyone's word (cli/shown.py).
                table.add_row(shown(model), shown(status), str(n), f"{100.0 * n / max(1, self.answered):.1f}%")
            table.add_section()
            # Of the requests settled (answered, failed or given up on): one never answered is a
            # deadline missed, not left out (11 answers of 1,000 sent showed 100% met: a review).
            settled = self.answered + self.failed
            met = f"{100.0 * self.on_time / settled:.1f}%" if settled else "-"
            table.add_row("sent / answered", "", f"{self.sent} / {self.answered}", "")
            table.add_row("deadlines met", "", str(self.on_time), met)
            table.add_row("latency p50 / p99 (last 20,000)", "", latency, "")
            host = hostcpu.between(self.host_at_start, hostcpu.read())
            if host:
                table.add_row("host CPU busy / stolen", "", f"{host.busy_pct:.0f}% / {host.steal_pct:.0f}%", "")
            if self.failed:
                table.add_row("no answer", "", str(self.failed), "")
            return table


def run_demo(settings: DemoSettings, console: Console) -> int:
    wire.configure(settings)
    set_connect_timeout(settings.connect_timeout_s)
    local = BrokerWatch(None if settings.bootstrap else LocalBroker())  # the machine's local broker, if it uses it
    with ExitStack() as stack:
        lease = None if local.broker is None else stack.enter_context(DemoLease(local.broker.root / DemoLease.NAME))
        if lease is not None and read_bootstrap() is None:
            console.print("starting a local Kafka broker (first run downloads it with Maven)...")
            broker: LocalBroker = start_background(progress=console.print)
            # Stopped like a database: the demo's topics stay for `compare`, `replay`, the next run.
            # Only one this demo launched: another command may have started it in the meantime
            # (two demos at once), and the first demo to end stopped it under the other (a review).
            settings = replaced(settings, bootstrap=broker.bootstrap)
            if broker.launched_here:
                stack.callback(stop_unless_in_use, settings.librdkafka(), settings.topic_prefix, console, lease)
        elif not settings.bootstrap:
            settings = replaced(settings, bootstrap=read_bootstrap() or "")
        console.print(f"broker: {settings.bootstrap}")
        config, topics = settings.librdkafka(), settings.topics()
        wait_for_broker(config)  # said as such within --connect-timeout-s, before the checks that need it
        _refuse_serving_topics(config, settings.topic_prefix, settings.bootstrap)
        ensure_topics(config, topics, settings.partitions)
        governs_at = _schedule_naming(settings.model_specs(), settings.budget_ms, config, topics, console)

        logs = cache_dir() / "demo"
        env = service_env(settings)
        env.pop("RDV_CO_HOST", None)  # the demo's true/false; a worker would read it as its co-host list
        names = [name for name, _ in settings.model_specs()]
        processes: list[subprocess.Popen[bytes]] = []
        stack.callback(stop_processes, processes)
        port = settings.metrics_base_port
        _check_ports_free(port, settings.rendezvous + len(names) if port else 0)
        for index in range(settings.rendezvous):
            rendezvous_port = port + len(names) + index if port and index else port
            processes.append(spawn(["serve", "--models", ",".join(names), "--deadline-ms", str(settings.budget_ms),
                                    "--metrics-port", str(rendezvous_port)], logs / f"rendezvous-{index}.log", env))
        workers = model_workers(settings.model_specs(), settings.co_hosted())
        for offset, (worker, args) in enumerate(workers.items(), start=1):
            model_port = port + offset if port else 0
            processes.append(spawn([*args, "--metrics-port", str(model_port)], logs / f"{worker}.log", env))
        console.print(f"started {settings.rendezvous} rendezvous + {len(names)} models in {len(workers)} "
                      f"worker process(es){_why_co_hosted(settings)} (logs in {logs}); waiting for them...")
        groups = [f"{settings.topic_prefix}rendezvous"] + [model_group(settings.topic_prefix, [w]) for w in workers]
        patience = Patience(console, lambda waited: (
            f"still waiting for them ({waited:.0f} s; a first start compiles their loops once, 5-15 s on 2 "
            f"cores; see the logs in {logs})..."), every_s=10.0)  # started from the cache, they take ~5 s

        def still_running() -> None:  # the demo's processes and the local broker it uses
            _check_alive(processes, logs, local)

        def alive() -> None:
            still_running()
            patience.tick()

        wait_for_groups(config, groups, timeout=120, check=alive)
        wait_for_groups(config, groups[:1], timeout=120, members=settings.rendezvous, check=alive)
        if port:
            console.print(f"metrics: http://127.0.0.1:{port}/metrics (rendezvous), models on the next ports")
        # Requests created before would name the kept models.
        _wait_until_governing(governs_at, console, still_running)
        client = stack.enter_context(Client(config, topics, budget_ms=settings.budget_ms))
        _first_answers(client, still_running, console, logs)
        _generate_load(settings, client, still_running, console)
    return 0


def _check_ports_free(first: int, count: int) -> None:
    """The metrics ports the demo's processes will serve on, tried first: a second demo's
    rendezvous met the first one's port and exited, naming neither the demo's flag nor a fix
    (a review)."""
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the services' servers: not TIME_WAIT
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                raise ConfigError(f"the demo's metrics port {port} is taken ({exc.strerror}; another demo?): give it "
                                  f"others with --metrics-base-port (e.g. {first + 200}), or 0 for none") from None


class DemoLease:
    """A shared lock every demo on the local broker holds for its whole run, from before it looks
    for the broker: the demo that started the broker stops it only if it can take the lock alone.
    A second demo still starting has joined no consumer group yet, and the first one to end
    stopped the broker under it (a review)."""

    NAME = "demos.lease"

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a")
        fcntl.flock(self._file, fcntl.LOCK_SH)

    def alone(self) -> bool:
        """Whether no other demo holds the lease (then this one holds it alone, exclusively)."""
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def __enter__(self) -> DemoLease:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._file.close()


def stop_unless_in_use(config: dict[str, Any], prefix: str, console: Console, lease: DemoLease | None = None) -> None:
    """Stop the local broker this demo started (its processes stopped first), unless another demo
    holds the lease or consumer groups other than its own have members: a second demo on topics
    of its own (as the README says to run one) lost its broker when the first one ended, its table
    70% by the deadline and 504 records undelivered (a review). A broker already gone is only
    tidied: "left running" was said of one that had died. The lease first: a broker gone and
    started again by another demo meanwhile was stopped as the one gone (a review)."""
    running = LocalBroker().is_running()
    why_kept = _why_kept(config, prefix, lease) if running else None
    if why_kept is not None:
        console.print(f"left the local broker running: {why_kept} (`rendezvous broker stop` stops it)")
    elif lease is None or running or lease.alone():  # gone: tidied, unless another demo holds the lease
        stop_background(keep_data=True)


def _why_kept(config: dict[str, Any], prefix: str, lease: DemoLease | None) -> str | None:
    """Why the running local broker must stay: another demo holds the lease, or consumer groups
    other than this demo's have members (None: nothing else uses it)."""
    if lease is not None and not lease.alone():
        return "another demo uses it"
    own = (f"{prefix}rendezvous", f"{prefix}model.")
    try:
        others = [group for group in groups_with_members(config, [""], timeout=5.0) if not group.startswith(own)]
    except BrokerError as exc:
        return f"could not tell whether anything else uses it ({exc})"
    more = f" and {len(others) - 3} more" if len(others) > 3 else ""
    return f"{', '.join(others[:3])}{more} still use it" if others else None


def _refuse_serving_topics(config: dict[str, Any], prefix: str, bootstrap: str) -> None:
    """The demo's processes join the groups of whatever already serves its topics (taking some of
    their partitions) and may publish a schedule naming its own models: on a cluster where a
    rendezvous or a model already runs under this prefix, it would change what they answer."""
    busy = groups_with_members(config, [f"{prefix}rendezvous", f"{prefix}model."])
    if busy:
        raise ConfigError(
            f"{', '.join(busy[:5])} already ha{'s' if len(busy) == 1 else 've'} members on {bootstrap}: something "
            f"serves the topics {prefix}* there, and the demo would join it and may change its schedule. Stop it, "
            "or run the demo on topics of its own: --topic-prefix demo. (members of a demo killed just now "
            "leave within their session timeout: then retry in a minute)")


def _schedule_naming(
    specs: list[tuple[str, str]], budget_ms: int, config: dict[str, Any], topics: Topics, console: Console
) -> int | None:
    """A kept control topic's schedule governs the demo's rendezvous (`serve --models` only seeds an
    empty topic): one naming other models (a run with other --models) would leave the demo's models
    unasked and every answer a TIMEOUT. Then the demo publishes one naming its own, and returns when
    it starts to govern (epoch ms, by the log: `ScheduleBook.add`); one naming the same models in
    another order (a promotion) stays (None: nothing to wait for)."""
    names = tuple(name for name, _ in specs)
    book = load_book(config, topics.control, DEFAULT_SCHEDULE_NAME)
    kept = book.latest
    if kept is None:
        return None
    now = now_ms()
    starts = book.latest_start or 0
    pending = starts > now + MIN_EFFECTIVE_IN_MS
    # The demo runs until stopped: every version in force from now on must name its models. Judged
    # by the latest and the one in force, a version naming others pending between them took over
    # mid-run, every answer a TIMEOUT from then (reviews).
    ahead = book.in_force_and_after(now)
    naming = [set(version.models) == set(names) for version, _start in ahead]
    if all(naming):
        governing = ahead[0][0]
        if governing.models != names or governing.traffic_model is not None:
            traffic = (f", {governing.traffic_fraction:.0%} of requests answered by {governing.traffic_model} first"
                       if governing.traffic_model else "")
            console.print(f"the kept schedule v{governing.version} is in force: {', '.join(governing.models)} in "
                          f"that order{traffic} "
                          "(`rendezvous schedule history`; `rendezvous broker reset` starts afresh)")
        return None
    if not pending and len(ahead) > 1 and all(naming[1:]):
        return ahead[1][1]  # naming the demo's models from within the lead time: waited for
    draft = Schedule(models=names, default_deadline_ms=budget_ms, comment="demo: its own models")
    # With the lead time every change takes (`--effective-in`, MIN_EFFECTIVE_IN_MS), not at once. The
    # demo's own rendezvous start after this and read it in the history, but the demo only checks
    # the groups `<prefix>rendezvous` and `<prefix>model.*` for members: a gateway on these topics, a
    # rendezvous under another --group, or one started since that check reads it up to a poll
    # later, and effective at once it decided the requests created in between under the kept
    # version, where an instance re-reading them after a failover decides them under this one.
    schedule = changes.next_version(book, draft, now, effective_in_ms=MIN_EFFECTIVE_IN_MS)
    if pending or schedule.effective_at > now + MIN_EFFECTIVE_IN_MS:
        # Its version could start only after the kept one (a version never starts before the one it
        # follows; a first one published for later governs until then all the same): the demo would
        # wait hours, or answer TIMEOUT until then.
        raise ConfigError(f"the kept schedule v{kept.version} ({', '.join(kept.models)}) holds every version after "
                          f"it back to {format_ms(max(starts, schedule.effective_at))}, and the demo's own version "
                          "could not start before then: `rendezvous broker reset` starts afresh, or run the demo on "
                          "topics of its own (--topic-prefix demo.)")
    publish(config, topics.control, schedule)
    console.print(f"the kept schedule named {', '.join(kept.models)}: published v{schedule.version} naming the "
                  f"demo's models {', '.join(names)}")
    # When it starts to govern: its effective_at, or later if the broker appended it later (its clock
    # ahead of this host's) or the version before starts later (ScheduleBook.add).
    start = load_book(config, topics.control, DEFAULT_SCHEDULE_NAME).latest_start
    return schedule.effective_at if start is None else start


# A wait for the demo's version longer than this is said (the broker's clock ahead of this host's).
GOVERNING_NOTE_S = 5.0


def _wait_until_governing(start_ms: int | None, console: Console, check: Callable[[], None] = lambda: None) -> None:
    """Until the schedule version the demo published governs the requests it creates (their
    created_at is this host's clock): one created before it named the kept version's models, which
    are not running, and would be answered TIMEOUT in the demo's table. Started processes take
    longer than the lead time, so this is seldom a wait at all."""
    if start_ms is None:
        return
    left_s = (start_ms - now_ms()) / 1000
    if left_s > GOVERNING_NOTE_S:
        console.print(f"waiting {left_s:.0f} s for the demo's schedule version to take effect (the broker "
                      "appended it that far ahead of this host's clock)...")
    while (left_ms := start_ms - now_ms()) > 0:
        check()  # a demo process that exits meanwhile is said at once
        time.sleep(min(left_ms, 1_000) / 1000)  # waiting for a time, not for a condition another thread sets


def _why_co_hosted(settings: DemoSettings) -> str:
    if settings.co_host is not None or not settings.co_hosted() or len(settings.models) < 2:
        return ""
    return f" (co-hosted: this machine has {os.cpu_count()} CPUs; --no-co-host runs one process per model)"


FIRST_ANSWERS_WAIT_S = 180.0
VIEWS_PER_S = 4  # the live table's redraws per second


class Patience:
    """A line every `every_s` seconds while the demo waits, so that a long wait never looks like a hang."""

    def __init__(self, console: Console, line: Callable[[float], str], every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._console, self._line, self._every_s, self._clock = console, line, every_s, clock
        self._started = self._last = clock()

    def waited(self) -> float:
        return self._clock() - self._started

    def tick(self) -> None:
        """Print the line (given the seconds waited so far) if the last one is `every_s` old."""
        now = self._clock()
        if now - self._last >= self._every_s:
            self._console.print(self._line(now - self._started))
            self._last = now


class BrokerWatch:
    """The local broker the demo uses, looked at about once a second (its process' command line
    is read from /proc): one that died mid-run, its disk full, left the demo sending into nothing
    until its end, the table saying 100% met (a review)."""

    def __init__(self, broker: LocalBroker | None, every_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.broker, self.every_s, self.clock = broker, every_s, clock
        self._next = 0.0

    def check(self) -> None:
        """`ConfigError` with the broker's last errors if it is gone."""
        if self.broker is None or self.clock() < self._next:
            return
        self._next = self.clock() + self.every_s
        if not self.broker.is_running():
            errors = error_lines(self.broker.log_file, lines=3)[-600:]
            raise ConfigError(f"the local Kafka broker stopped while the demo ran{': ' + errors if errors else ''}; "
                              f"its log is {self.broker.log_file}")


def _check_alive(processes: list[subprocess.Popen[bytes]], logs: Path, broker: BrokerWatch | None = None) -> None:
    """`ConfigError` naming the first of the demo's processes that exited, or the broker gone."""
    if broker is not None:
        broker.check()
    dead = [p for p in processes if p.poll() is not None]
    if dead:
        args = dead[0].args
        command = " ".join(map(str, args[3:5])) if isinstance(args, list) else str(args)  # after python -m ...
        raise ConfigError(f"a demo process ({command}) exited (code {dead[0].returncode}){_last_error(dead[0])}; "
                          f"its log is in {logs}")


def _last_error(process: subprocess.Popen[bytes]) -> str:
    """The last `error:` line the dead process wrote (a port another process holds, say), as ': ...'.
    Its own, of this run: the newest of any log named an earlier run's error, or another
    process's (a review)."""
    lines = [line for line in output_of(process).splitlines() if line.startswith("error:")]
    return f": {lines[-1].removeprefix('error: ')[:300]}" if lines else ""


def _first_answers(client: Client, check_alive: Callable[[], None], console: Console, logs: Path) -> None:
    """Warm-up, not counted: every producer's first send waits for its producer id, and a
    rendezvous answers only once it has recovered its partitions (on a broker kept from earlier
    runs it reads back the answers and log of requests it re-reads: seconds, or more)."""
    pending = {client.submit(row, budget_ms=30_000) for row in demo_rows(10, seed=2)}
    client.flush()
    patience = Patience(console, lambda waited: (
        f"waiting for the first answers ({waited:.0f} s; the rendezvous may still be recovering its partitions, "
        "see rendezvous-0.log)..."))
    while pending:
        _answered, pending = wait(pending, timeout=0.5)  # returns as soon as the last one is answered
        if pending and patience.waited() > FIRST_ANSWERS_WAIT_S:
            raise ConfigError(f"no answer within {FIRST_ANSWERS_WAIT_S:.0f} s; see the logs in {logs}")
        check_alive()
        if pending:
            patience.tick()


def _generate_load(settings: DemoSettings, client: Client, check_alive: Callable[[], None], console: Console) -> None:
    tally = Tally()
    rows = demo_rows(10_000, seed=1)
    started = time.monotonic()
    next_view = 0.0
    gone = False  # the table's reader (`demo | head`, `| less` then q): the demo ends as at its duration
    try:
        with Live(tally.table(0.0), console=console, refresh_per_second=VIEWS_PER_S) as live:
            while (not settings.duration or time.monotonic() - started < settings.duration) and not gone:
                elapsed = time.monotonic() - started
                due = int(elapsed * settings.rate) - tally.sent
                for _ in range(max(0, due)):
                    client.submit(rows[tally.sent % len(rows)]).add_done_callback(tally.add)
                    tally.sent += 1
                # The table only as often as it is drawn: built on every 10 ms turn (percentiles of
                # 20,000 latencies) it cost the demo process 22.5% of a core instead of 15.3%, CPU
                # the services on the same machine lack.
                if elapsed >= next_view:
                    live.update(tally.table(elapsed))
                    next_view = elapsed + 1.0 / VIEWS_PER_S
                    gone = reader_gone(console)
                check_alive()
                time.sleep(0.01)  # pacing the load generator at its fixed rate
            try:
                client.flush()
            finally:  # the requests never acknowledged count as unanswered in the last table, too
                _drain(client, settings.budget_ms)
                tally.gave_up(client.in_flight)
                live.update(tally.table(time.monotonic() - started))
        if not console.is_terminal:
            console.print()  # piped, rich ends the last frame without one: the next line joined the table's
    except KeyboardInterrupt:
        console.print("stopping...")


def reader_gone(console: Console) -> bool:
    """Whether the console's reader went away. Piped, rich draws the live table only when it
    stops, so no write met the broken pipe while the load ran, and `demo | less`, then q, ran on
    for good (a review): a pipe without a reader is asked (poll: POLLERR), and the console told."""
    if console.quiet:  # a write met it (services/cli/common.py `on_broken_pipe`)
        return True
    if console.is_terminal:
        return False
    try:
        fd = console.file.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    poller = select.poll()
    poller.register(fd, 0)  # no event asked for: an error or a hang-up is always said
    if not any(event & (select.POLLERR | select.POLLHUP) for _fd, event in poller.poll(0)):
        return False
    console.on_broken_pipe()
    return True


def _drain(client: Client, budget_ms: int) -> None:
    """Give in-flight requests their deadline plus a margin to be answered."""
    until = time.monotonic() + budget_ms / 1000.0 + 2.0
    while client.in_flight and time.monotonic() < until:
        time.sleep(0.05)
