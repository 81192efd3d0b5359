"""What the benchmarks share: a broker, fresh topic names, child processes, the fixed-rate load
loop, the bare pass-through hop (the baseline), percentiles, a printed table and `--json`.

Measuring rules (docs/benchmarks.md): every figure is reported next to a baseline taken in the
same run on the same broker, because the machines are shared and noisy; latencies are reported
as p50 / p99 / p99.9, never as means.

A broker is started for the run (data in a temporary directory, stopped at the end) unless
KAFKA_BOOTSTRAP_SERVERS names one; topics get a uuid prefix, so runs never see each other's
records (and on a given broker they are deleted at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import gc
import importlib.metadata
import io
import json
import math
import os
import platform
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from bench.broker_threads import stat_fields, thread_times
from services.core import hostcpu
from services.core.errors import BrokerError
from services.core.kafka import (
    CONSUMER_DEFAULTS,
    PRODUCER_DEFAULTS,
    create_topics,
    delete_topics,
    wait_for_groups,
)
from services.core.runtime import stop_processes
from services.localkafka.broker import ephemeral_broker

REPO_ROOT = Path(__file__).resolve().parents[1]
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9))

T = TypeVar("T")
UNASSIGNED = -1  # librdkafka's RD_KAFKA_PARTITION_UA: let the partitioner choose
# The three models of the synthetic records (scores, comparison records): name and version.
MODEL_VERSIONS = (("champion", "logreg-1"), ("challenger", "forest-1"), ("canary", "stump-1"))
POLL_S = 0.01  # how often the throughput benches look at their progress


class BenchError(Exception):
    """The benchmark cannot go on (a child process died, a wait timed out, records went missing)."""


def interrupt_on_sigterm() -> None:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt), so every `finally` stops what we started."""

    def handle(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handle)


def note(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the figures."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----- broker and topics ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BrokerInfo:
    bootstrap: str
    external: bool  # given by KAFKA_BOOTSTRAP_SERVERS, not started by this run
    pid: int | None  # of the broker this run started (for its CPU time)
    # Of a broker this run started: what it did before the bench's first request (its start-up
    # warm-up, RDV_BROKER_WARMUP, and its class-data archive, RDV_BROKER_CDS; services/localkafka/).
    start: Mapping[str, Any] = field(default_factory=dict)


# A broker started with neither the local broker's warm-up traffic nor a class-data archive.
TRULY_COLD_ENV = {"RDV_BROKER_WARMUP": "off", "RDV_BROKER_CDS": "off"}


@contextmanager
def _environment(overrides: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `overrides` inside the block (the local broker reads its switches from it at
    start), as it was after it (so the services this run starts later do not inherit them)."""
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def broker_start(status: Mapping[str, Any]) -> dict[str, Any]:
    """How a local broker started, from its status: its warm-up, its class-data archive, and a label
    for the figures measured right after (a cold start)."""
    warm_up, archive = status.get("warm_up"), status.get("cds_archive") or ""
    # An archive is mapped only if it was there; else this start records one (cds_pending).
    mapped = bool(archive) and not status.get("cds_pending")
    # A warm-up that sent nothing (it failed at once) warmed nothing (a review).
    warmed = isinstance(warm_up, Mapping) and bool(warm_up.get("records")) and not warm_up.get("error")
    cds = mapped
    if not warmed and not cds:
        label = ("truly cold broker (no start-up warm-up, no class-data archive: "
                 "RDV_BROKER_WARMUP=off RDV_BROKER_CDS=off)")
    elif warmed:
        label = ("cold start after the local broker's warm-up (its start-up warm-up traffic, "
                 + ("and its class-data archive)" if cds else "no class-data archive yet)"))
    else:
        label = "cold start of a broker with no start-up warm-up (RDV_BROKER_WARMUP=off), on a class-data archive"
    return {"label": label, "warm_up": warm_up, "cds_archive": archive if mapped else "",
            "cds_recorded": str(status.get("cds_pending") or ""), "truly_cold": not warmed and not cds}


@contextmanager
def kafka_broker(env: Mapping[str, str] | None = None) -> Iterator[BrokerInfo]:
    """KAFKA_BOOTSTRAP_SERVERS if set, else a broker started for this run (stopped at the end), with
    `env` in the environment while it starts (e.g. TRULY_COLD_ENV)."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if given:
        note(f"using the broker at {given} (KAFKA_BOOTSTRAP_SERVERS)")
        yield BrokerInfo(given, True, None)
        return
    extra = dict(env or {})
    note("starting a Kafka broker for this run" + (f" ({' '.join(f'{k}={v}' for k, v in extra.items())})"
                                                   if extra else "") + " ...")
    with tempfile.TemporaryDirectory(prefix="rdv-bench-") as tmp, ExitStack() as stack:
        with _environment(extra):
            broker = stack.enter_context(ephemeral_broker(tmp))
        start = broker_start(broker.status())
        note(f"broker ready at {broker.bootstrap}; {start['label']}")
        yield BrokerInfo(broker.bootstrap, False, broker.pid, start)


def run_prefix(bench: str) -> str:
    """A topic/group prefix unique to this run, e.g. `bench.e2e.3f2a9c1b7d.`."""
    return f"bench.{bench}.{uuid.uuid4().hex[:10]}."


@contextmanager
def fresh_topics(broker: BrokerInfo, specs: Mapping[str, tuple[int, Mapping[str, str]]]) -> Iterator[None]:
    """Create the run's topics {name: (partitions, configs)}; delete them at the end on a broker this
    run did not start (ours goes anyway)."""
    config = {"bootstrap.servers": broker.bootstrap}
    try:
        create_topics(config, specs)
        yield
    finally:
        if broker.external and specs:
            delete_topics(config, list(specs))


def plain_topics(names: Sequence[str], partitions: int) -> dict[str, tuple[int, Mapping[str, str]]]:
    """Specs for `fresh_topics`: every topic with `partitions` partitions and the broker's defaults."""
    return {name: (partitions, {}) for name in names}


def release_clients() -> None:
    """Destroy unreferenced Kafka clients (e.g. admin clients) while the broker still runs.

    Otherwise they are collected after it stopped and log connection errors over the figures.
    """
    gc.collect()


def watermark_total(consumer: Consumer, topic: str, partitions: int) -> int:
    """Records on a fresh topic written without transactions (markers would count too)."""
    total = 0
    for p in range(partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5.0, cached=False)
        total += high - low
    return total


def read_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> list[Message]:
    """Every committed record on `topic` up to its current end (assigned directly, nothing committed).

    Reads with read_committed (librdkafka's default) and stops a partition at its high watermark
    or at partition EOF, which also covers transaction markers on the last offsets.
    """
    consumer = Consumer({**CONSUMER_DEFAULTS, "bootstrap.servers": bootstrap, "enable.partition.eof": True,
                         "group.id": f"bench-reader-{uuid.uuid4().hex}", "isolation.level": "read_committed"})
    try:
        ends, starts = {}, []
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5.0, cached=False)
            if high > low:
                ends[p] = high
                starts.append(TopicPartition(topic, p, low))
        consumer.assign(starts)
        records: list[Message] = []
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise BenchError(f"reading {topic}: partitions {sorted(ends)} did not reach their end")
            for msg in consumer.consume(1000, 0.5):
                part = msg.partition() or 0
                err = msg.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    ends.pop(part, None)
                    continue
                if err is not None:
                    raise BenchError(f"reading {topic} failed: {err}")
                records.append(msg)
                if (msg.offset() or 0) + 1 >= ends.get(part, 0):
                    ends.pop(part, None)
        return records
    finally:
        consumer.close()


class RecordCounter:
    """Counts the committed records on a topic as they appear (read_committed, from the start).

    Unlike the high watermarks, this is right for transactional writers too, whose commit markers
    take offsets but are no records.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        self._consumer = bare_consumer(bootstrap, f"bench-counter-{uuid.uuid4().hex}")
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.count = 0

    def update(self, timeout: float) -> int:
        """Count what arrives within `timeout` (returns as soon as something did); the new total."""
        self.count += len(take(self._consumer, 100_000, timeout))
        return self.count

    def close(self) -> None:
        self._consumer.close()


# ----- child processes -----------------------------------------------------------------------------
def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one if None, without its children: the
    services a bench starts are measured apart), or of process `pid` and every process it
    started, alive or ended (a model worker's rescue process, services/model_worker/rescue.py,
    went uncounted); NaN if `pid` is unknown or gone."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        own = _tree_ticks(pid)
    except (OSError, ValueError, IndexError):
        return math.nan
    return own / os.sysconf("SC_CLK_TCK")


def _tree_ticks(pid: int) -> int:
    """Clock ticks of `pid` and its descendants: each one's utime + stime, and cutime + cstime,
    its children that ended and were waited for (fields 14-17 of /proc/<pid>/stat, after
    "(comm)"): a child's ticks move from its own line to its parent's as it is reaped, so the sum
    goes on across its end. A descendant gone between the two reads counts nothing."""
    ticks = sum(int(field) for field in stat_fields(Path(f"/proc/{pid}/stat"))[11:15])
    for child in _children(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ticks += _tree_ticks(child)
    return ticks


def _children(pid: int) -> list[int]:
    """The processes `pid`'s threads started that are alive (or not yet reaped)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


LIBRDKAFKA_THREADS = "rdk:"  # librdkafka names its threads rdk:main, rdk:broker<id>, rdk:bg, ...


class LibrdkafkaCpu:
    """A reader of the CPU seconds a process' librdkafka threads have used (this process' if
    `pid` is None), from each thread's /proc stat (broker_threads.thread_times); NaN once the
    process is unknown or gone.

    A thread that ends keeps the time it had when last read (a process' own stat keeps its ended
    threads' time; a thread's is gone with it): read at a span's start and end, a client closed
    inside the span loses only what it used since the start, never its whole life. Threads are
    told apart by id and start time (an id the kernel hands out again is another thread)."""

    def __init__(self, pid: int | None = None, proc: Path = Path("/proc")):
        self.pid, self.proc = os.getpid() if pid is None else pid, proc
        self._seen: dict[tuple[int, int], float] = {}  # (thread id, start time) -> CPU seconds

    def __call__(self) -> float:
        threads = thread_times(self.pid, self.proc)
        if not threads:  # a live process has a thread at least
            return math.nan
        for tid, times in threads.items():
            if times.comm.startswith(LIBRDKAFKA_THREADS):
                self._seen[(tid, times.start)] = times.user_s + times.system_s
        return math.fsum(self._seen.values())


@dataclass
class Children:
    """Child processes of a run, logging to files; `stop_all` ends them (TERM, then KILL)."""

    log_dir: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        log_file = self.log_dir / f"{name}.log"
        with log_file.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self.env, cwd=REPO_ROOT,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise BenchError(
                    f"{name} exited with code {proc.returncode}; its log:\n{self.tail(name)}"
                )

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each child."""
        return {name: cpu_seconds(proc.pid) for name, proc in self.procs.items()}

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_groups(
        self, config: Mapping[str, Any], groups: Sequence[str], timeout: float = 90.0, members: int = 1
    ) -> None:
        """Block until every group is Stable with `members` members, failing fast if a child dies."""
        try:
            wait_for_groups(config, groups, timeout=timeout, members=members, check=self.check_alive)
        except BrokerError:
            raise BenchError(f"consumer groups {list(groups)} not ready within {timeout:.0f} s") from None

    def stop_all(self, timeout: float = 10.0) -> None:
        stop_processes(self.procs.values(), timeout)
        self.procs.clear()


# Where the services of a bench run log: a temporary directory (gone after the run), or this one.
KEEP_LOGS_ENV = "RDV_BENCH_LOGS"


@contextmanager
def children(env: Mapping[str, str]) -> Iterator[Children]:
    """Children whose logs live in a temporary directory, or in `$RDV_BENCH_LOGS` (kept, to read
    after a run that went wrong); all of them stopped on exit."""
    kept = os.environ.get(KEEP_LOGS_ENV, "").strip()
    with tempfile.TemporaryDirectory(prefix="rdv-bench-logs-") as tmp:
        log_dir = Path(kept) if kept else Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        if kept:
            note(f"services log to {log_dir} ({KEEP_LOGS_ENV})")
        kids = Children(log_dir, {**os.environ, **env})
        try:
            yield kids
        finally:
            kids.stop_all()


# ----- the bare pass-through hop (the baseline) ---------------------------------------------------
def bare_producer(bootstrap: str, overrides: Mapping[str, Any] | None = None) -> Producer:
    """A plain confluent-kafka producer with the services' client settings (same batching/acks),
    and `overrides` (those of the one producer it stands for, e.g. a linger.ms of its own)."""
    return Producer({**PRODUCER_DEFAULTS, **(overrides or {}), "bootstrap.servers": bootstrap})


def bare_consumer(bootstrap: str, group: str) -> Consumer:
    """A plain confluent-kafka consumer with the services' client settings (same fetch wait)."""
    return Consumer({**CONSUMER_DEFAULTS, "bootstrap.servers": bootstrap, "group.id": group})


def take(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """Wait up to `timeout` for one record, then drain what is queued (as the services do)."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    messages = [first]
    if max_messages > 1:
        messages.extend(consumer.consume(max_messages - 1, 0))
    for msg in messages:
        if msg.error() is not None:
            raise BenchError(f"consume from {msg.topic()} failed: {msg.error()}")
    return messages


def pass_through(
    consumer: Consumer,
    producer: Producer,
    out_topic: str,
    stop: threading.Event,
    *,
    keep_partition: bool,
    max_batch: int = 1000,
) -> int:
    """consume -> produce each value (and key) to `out_topic`, until `stop`; returns records forwarded.

    No decoding, no commits, no flush per batch: the floor any Kafka hop written in Python pays.
    """
    forwarded = 0
    while not stop.is_set():
        for msg in take(consumer, max_batch, 0.1):
            partition = (msg.partition() or 0) if keep_partition else UNASSIGNED
            while True:
                try:
                    producer.produce(out_topic, msg.value(), msg.key(), partition=partition)
                    break
                except BufferError:
                    producer.poll(0.05)  # local queue full: serve delivery reports, then retry
            forwarded += 1
        producer.poll(0)
    producer.flush(10)
    return forwarded


# ----- fixed-rate load -----------------------------------------------------------------------------
@dataclass
class Load:
    """What one pipeline was sent, summed over the slices it was driven in."""

    futures: list[Future[Any]] = field(default_factory=list)
    sending_s: float = 0.0
    behind_max_ms: float = 0.0

    @property
    def sent_rate(self) -> float:
        return len(self.futures) / self.sending_s if self.sending_s > 0 else math.nan


def drive(
    submit: Callable[[float], Future[Any]],
    rate: float,
    seconds: float,
    check: Callable[[], None] = lambda: None,
    into: Load | None = None,
) -> Load:
    """Call `submit(due)` on a fixed schedule (the i-th call i / rate seconds after the start);
    `due` is when it was due, on the wall clock (time.time()).

    Open loop: a send never waits for an answer, so a slow pipeline shows up as latency, not as a
    lower rate. When the sender itself falls behind, it catches up at once (the worst lag is kept
    in `behind_max_ms`), and each late request's latency counts from when it was due, not from
    when it went: timed from its send, a stall of this process (which shares the machine with
    everything it measures) would vanish from the latencies and the deadlines met ("coordinated
    omission"). `check` runs about once a second (e.g. "are the children alive").
    Futures, sending time and lag are added to `into` when given.
    """
    load = into if into is not None else Load()
    count = max(1, round(seconds * rate))
    start, wall_start = time.monotonic(), time.time()
    next_check = start + 1.0
    behind = 0.0
    for i in range(count):
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)  # pacing the open-loop sender, not waiting for readiness
        else:
            behind = max(behind, now - due)
        load.futures.append(submit(wall_start + i / rate))
        if now >= next_check:
            check()
            next_check = now + 1.0
    # The window of `count` sends is (last send - start) plus one interval.
    load.sending_s += time.monotonic() - start + 1.0 / rate
    load.behind_max_ms = max(load.behind_max_ms, behind * 1000.0)
    return load


# ----- CPU per request -----------------------------------------------------------------------------
def pid_cpu(pid: int | None) -> Callable[[], float]:
    """A reader of a process's CPU seconds; NaN when there is no pid (e.g. a broker this run did not start)."""
    return (lambda: math.nan) if pid is None else functools.partial(cpu_seconds, pid)


def bench_and_broker(broker: BrokerInfo) -> dict[str, Callable[[], float]]:
    """CPU readers of this process (all its threads, librdkafka's too) and of the broker."""
    return {"bench process": cpu_seconds, "broker": pid_cpu(broker.pid)}


class CpuMeter:
    """CPU seconds that named processes use inside `with meter.span():` blocks, summed over the blocks."""

    def __init__(self, sources: Mapping[str, Callable[[], float]]):
        self.sources = dict(sources)
        self.used: dict[str, float] = dict.fromkeys(self.sources, 0.0)
        self._host = hostcpu.CpuTimes(0, 0, 0)  # the whole machine's ticks inside the spans

    def read(self) -> dict[str, float]:
        return {name: read() for name, read in self.sources.items()}

    @contextmanager
    def span(self) -> Iterator[None]:
        before, host_before = self.read(), hostcpu.read()
        try:
            yield
        finally:
            for name, now in self.read().items():
                self.used[name] += now - before[name]
            host_after = hostcpu.read()
            if host_before is not None and host_after is not None:
                self._host = self._host.plus(host_after.minus(host_before))

    def host_share(self) -> dict[str, float] | None:
        """The whole host's CPU inside the spans: % busy and % stolen by the hypervisor."""
        share = hostcpu.share(self._host)
        return asdict(share) if share else None


def metered(
    meters: dict[str, CpuMeter], label: str, sources: Mapping[str, Callable[[], float]], run: Callable[[], T]
) -> T:
    """`run()` with a new meter `meters[label]` over it."""
    meters[label] = CpuMeter(sources)
    with meters[label].span():
        return run()


def cpu_per_request(
    meters: Mapping[str, CpuMeter], requests: Mapping[str, int]
) -> dict[str, dict[str, float]]:
    """CPU milliseconds per request, {column: {process: ms, ..., "total": ms}}.

    Each column is one thing measured (a pipeline, a run); its meter's spans cover exactly the
    time it ran, so every process's CPU in them (the broker's and the idle ones' too) is charged
    to the `requests[column]` requests it served.
    """
    figures: dict[str, dict[str, float]] = {}
    for column, meter in meters.items():
        n = max(1, requests[column])
        per = {name: 1000.0 * used / n for name, used in meter.used.items()}
        per["total"] = math.fsum(v for v in per.values() if not math.isnan(v))
        figures[column] = per
    return figures


def host_cpu(meters: Mapping[str, CpuMeter]) -> dict[str, dict[str, float] | None]:
    """{column: the host's % busy and % stolen during its spans} (None off Linux)."""
    return {column: meter.host_share() for column, meter in meters.items()}


def print_cpu_per_request(
    title: str, figures: Mapping[str, Mapping[str, float]], unit: str = "request", digits: int = 2,
    host: Mapping[str, Mapping[str, float] | None] | None = None,
) -> None:
    """The table of `cpu_per_request`: one row per process, one column per thing measured; then
    the host's CPU over the same time, stolen share included (a noisy neighbour shows there)."""
    columns = list(figures)
    processes = [p for p in dict.fromkeys(p for c in columns for p in figures[c]) if p != "total"]
    rows = [[p, *(figures[c].get(p, math.nan) for c in columns)] for p in [*processes, "total"]]
    print_table(f"CPU ms per {unit}: {title}", ["process", *columns], rows, digits=digits)
    shares = [f"{c} {s['busy_pct']:.0f}% / {s['steal_pct']:.0f}%" for c, s in (host or {}).items() if s]
    if shares:
        print("host CPU busy / stolen by the hypervisor meanwhile: " + ", ".join(shares))


def cpu_figures(
    meters: Mapping[str, CpuMeter], requests: Mapping[str, int], title: str, unit: str = "request", digits: int = 2
) -> dict[str, Any]:
    """Print the CPU per request table; return it with the raw CPU seconds, for the JSON."""
    figures, host = cpu_per_request(meters, requests), host_cpu(meters)
    print_cpu_per_request(title, figures, unit, digits, host)
    return {"cpu_ms_per_request": figures, "cpu_s": {c: m.used for c, m in meters.items()},
            "requests": dict(requests), "host_cpu_pct": host}


# ----- profiles ----------------------------------------------------------------------------------
@contextmanager
def profiling(path: str | None) -> Iterator[None]:
    """cProfile the block (in the calling thread) and dump the stats to `path`; nothing without a path."""
    if not path:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(path)


def steady_rate(left: float, took_s: float) -> float:
    """What was left after the first output seen, per second it took: NaN when nothing was left
    (every output came at the first look: nothing after it to time, not 0 a second)."""
    return left / took_s if left > 0 and took_s > 0 else math.nan


def judged(figure: float, target: float) -> str:
    """'met' / 'NOT met' of a figure at least `target`; a figure not measured (NaN: every output
    came at the first look, so there is nothing after it to time) is said so, not 'NOT met'."""
    if math.isnan(figure):
        return "not measured (every output came at the first look: give it more records)"
    return "met" if figure >= target else "NOT met"


THREAD_SAMPLE_S = 0.02  # how often MeasuredThread reads the CPU of the Python threads its service started


def thread_cpu_s(native_id: int) -> tuple[int, float] | None:
    """(start time in clock ticks, CPU seconds) of a thread of this process, from /proc; None once
    it is gone. The CPU comes from schedstat (nanoseconds) where the kernel has it, else from stat's
    utime + stime (clock ticks); the start time tells a thread id handed out again apart."""
    task = Path(f"/proc/self/task/{native_id}")
    try:
        fields = stat_fields(task / "stat")
        start = int(fields[19])
        try:
            return start, int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return start, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class MeasuredThread:
    """`target(stop)` of a service under test in a daemon thread of this process (cProfiled with
    `profile`). `ready` is set when it ends, so the main thread never waits on a dead thread; a
    failure is raised on the main thread by `raise_failure` and `finish`.

    `cpu_s` is the CPU time of every Python thread the service ran: the one that runs `target`
    (time.thread_time, its whole life) and each Python thread started while it ran (e.g. the
    exactly-once commit thread `rdv-commit` and its `rdv-send-offsets` helpers, services/core/
    commits.py), read from /proc every THREAD_SAMPLE_S by a sampler thread (a thread that ends
    loses what it used after its last reading, and one that lives less than THREAD_SAMPLE_S may be
    missed whole: the exactly-once commit's `rdv-send-offsets` helper, ≈ 0.1 ms a transaction, is
    mostly not counted). Not counted: librdkafka's own threads (rdk:*,
    not Python threads), the bench's threads (those alive before, the sampler). `run_thread_cpu_s`
    is the first thread's alone, `threads_cpu_s` the CPU by thread name."""

    COUNTED = ("every Python thread the service ran (the one running it, and those it started, e.g. "
               "the commit thread rdv-commit); librdkafka's own threads (rdk:*) excluded")

    def __init__(self, name: str, target: Callable[[threading.Event], object], ready: threading.Event,
                 profile: str | None = None) -> None:
        self.name = name
        self.stop = threading.Event()
        self.cpu_s = math.nan
        self.run_thread_cpu_s = math.nan
        self.threads_cpu_s: dict[str, float] = {}
        self._failures: list[BaseException] = []
        self._ready = ready
        # The bench's own, not counted: the objects, not their ids (an id is handed out again once
        # its thread ends, and a service thread given one was not counted: a review).
        self._bench_threads = set(threading.enumerate())
        self._others: dict[tuple[int, int], tuple[str, float]] = {}  # (thread id, start) -> (name, CPU s)
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._body, args=(target, profile), name=name, daemon=True)
        self._sampler = threading.Thread(target=self._sample_until_ended, name=f"{name}-cpu-sampler", daemon=True)
        self._thread.start()
        self._sampler.start()

    def _sample(self) -> None:
        """Read the CPU of the Python threads started since, other than the bench's and the runner."""
        skip = {*self._bench_threads, self._thread, self._sampler}
        for thread in threading.enumerate():
            if thread in skip or thread.native_id is None:
                continue
            read = thread_cpu_s(thread.native_id)
            if read is not None:
                with self._lock:
                    self._others[(thread.native_id, read[0])] = (thread.name, read[1])

    def _sample_until_ended(self) -> None:
        while not self._ended.wait(THREAD_SAMPLE_S):
            self._sample()

    def _body(self, target: Callable[[threading.Event], object], profile: str | None) -> None:
        started = time.thread_time()
        try:
            with profiling(profile):
                target(self.stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread and raised there
            self._failures.append(exc)
        finally:
            self.run_thread_cpu_s = time.thread_time() - started
            self._sample()  # threads still running (not stopped by the service) count up to now
            self._ended.set()
            if self._sampler.is_alive():
                self._sampler.join(5.0)
            by_name: dict[str, float] = {self.name: self.run_thread_cpu_s}
            with self._lock:
                for thread_name, cpu in self._others.values():
                    by_name[thread_name] = by_name.get(thread_name, 0.0) + cpu
            self.threads_cpu_s = by_name
            self.cpu_s = math.fsum(by_name.values())
            self._ready.set()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def raise_failure(self, when: str = "") -> None:
        if self._failures:
            first = self._failures[0]
            raise BenchError(f"{self.name} failed{when}: {type(first).__name__}: {first}") from first

    def finish(self, timeout: float = 30.0) -> None:
        """Stop the thread and wait for it (in a `finally`: raises nothing of its own)."""
        self.stop.set()
        self._thread.join(timeout)
        self._sampler.join(timeout)

    def check_finished(self) -> None:
        """After `finish`: raise the thread's failure, or that it did not stop."""
        self.raise_failure(" on stop")
        if self._thread.is_alive():
            raise BenchError(f"{self.name} did not stop when asked")


def print_profile(path: str, what: str, top: int = 25) -> None:
    """The `top` functions by own time of a `profiling` dump."""
    out = io.StringIO()
    stats = pstats.Stats(path, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    print(f"\ncProfile of {what} (by own time; full stats in {path}):")
    print("\n".join(line for line in out.getvalue().splitlines()[5:] if line.strip()))


# ----- figures -------------------------------------------------------------------------------------
def summarize(values: Sequence[float], missing: int = 0) -> dict[str, float]:
    """n, p50, p99, p99.9 and max of `values` and `missing` more that never came (NaN when there
    is nothing at all). A missing value is slower than any: a percentile that reaches one is
    infinite, so requests never answered cannot make a p99 look better by being left out."""
    if not values:
        worst = math.inf if missing else math.nan
        return {"n": 0, **{name: worst for name, _ in PERCENTILES}, "max": worst}
    data = np.sort(np.asarray(values, dtype=np.float64))
    out: dict[str, float] = {"n": len(data)}
    out.update({name: _percentile(data, q, missing) for name, q in PERCENTILES})
    out["max"] = math.inf if missing else float(data[-1])
    return out


def _percentile(ordered: np.ndarray, q: float, missing: int) -> float:
    """numpy's linear percentile of `ordered` followed by `missing` infinite values."""
    if not missing:
        return float(np.percentile(ordered, q))
    position = q / 100.0 * (len(ordered) + missing - 1)
    below = math.floor(position)
    fraction = position - below
    if below >= len(ordered) or (fraction > 0 and below + 1 >= len(ordered)):
        return math.inf
    upper = ordered[below + 1] if fraction > 0 else ordered[below]
    return float(ordered[below] + fraction * (upper - ordered[below]))


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> None:
    """A small aligned table on stdout: first column left-aligned, the others right-aligned."""
    cells = [[fmt(c, digits) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(items: Sequence[str]) -> str:
        first = items[0].ljust(widths[0])
        rest = [item.rjust(w) for item, w in zip(items[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    print(f"\n{title}")
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))


def new_parser(doc: str | None, json_default: str | None = None) -> argparse.ArgumentParser:
    """A bench's argument parser: its module docstring as help, and `--json FILE`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", default=json_default,
                        help="also write the results as JSON to FILE" + (f" (default {json_default})"
                                                                         if json_default else ""))
    return parser


def positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Exit with a usage error unless every named option is > 0."""
    bad = [f"--{n.replace('_', '-')}" for n in names if not getattr(args, n) > 0]
    if bad:
        parser.error(f"{', '.join(bad)} must be > 0")


def run_bench(
    bench: str, args: argparse.Namespace, body: Callable[[BrokerInfo], Mapping[str, Any]],
    broker_env: Mapping[str, str] | None = None,
) -> int:
    """Run `body` on the run's broker (see `kafka_broker`, started with `broker_env`); write its
    results to `--json`.

    Exit status 0, or 1 when the bench failed (BenchError) or its results list `problems`,
    130 when interrupted (Ctrl-C or SIGTERM; whatever was started is stopped either way).
    """
    interrupt_on_sigterm()
    try:
        with kafka_broker(broker_env) as broker:
            results = body(broker)
            release_clients()
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    write_json(args.json, bench, args, results)
    return 1 if results.get("problems") else 0


def write_json(path: str | None, bench: str, args: argparse.Namespace, results: Mapping[str, Any]) -> None:
    if not path:
        return
    document = {
        "bench": bench,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": machine(),
        "results": results,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(_strict(document), indent=2, allow_nan=False) + "\n")
    note(f"results written to {path}")


def machine() -> dict[str, Any]:
    """Where the figures were measured: CPUs, load, versions, the code's git commit."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "versions": _versions(),
        "git": _git_state(),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def _versions() -> dict[str, str | None]:
    import confluent_kafka

    librdkafka = confluent_kafka.libversion()  # (version string, version int)
    found: dict[str, str | None] = {"python": platform.python_version(), "librdkafka": str(librdkafka[0])}
    for dist in ("rendezvous-serving", "confluent-kafka", "numpy", "scikit-learn", "fastavro"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    from services.localkafka import config as local_kafka

    found["kafka (local broker)"] = getattr(local_kafka, "KAFKA_VERSION", None)
    found["java"] = _command_output(["java", "-version"])
    return found


def _git_state() -> dict[str, Any]:
    commit = _command_output(["git", "rev-parse", "HEAD"])
    status = _command_output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit, "dirty": bool(status) if commit else None}


def _command_output(command: Sequence[str]) -> str | None:
    """First line of a command's output (stdout, else stderr, as `java -version` writes there)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20, cwd=REPO_ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else ""


def _strict(value: Any) -> Any:
    """Plain JSON: NaN becomes null, numpy scalars become numbers, tuples become lists."""
    if isinstance(value, Mapping):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
