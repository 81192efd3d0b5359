"""The end-to-end stack of the latency benches and one measured round of it at a fixed rate.

Two pipelines on one broker, each box its own OS process (as in production), started with the
CLI (`rendezvous model serve`, `rendezvous serve`), so the benches measure whatever those are:

    rendezvous: client --requests--> demo:champion / demo:challenger / demo:canary --scores-->
                rendezvous --replies--> client
    floor:      sender --hop0--> pass-through --hop1--> pass-through --hop2--> sender

The rendezvous path crosses three topics, so the baseline ("floor") is a bare 3-hop pipeline at
the same rate and message size, each pass-through a plain confluent-kafka consume -> produce loop
(`bench/hop.py`) whose producer lingers as the one it stands for does (HOP_LINGER_MS): the first
pass-through stands for the model workers' score producer, the second for the rendezvous' reply
producer. Latency is created_at -> received_at of each request (the client's clock on both
ends), created_at being when the request was due on the sender's schedule (`common.drive`: a
stall of the sender counts against the pipeline it was sending into). A round warms each
pipeline up, then sends the measured time in slices, F R R F F R R F ..., each slice drained
before the next starts, so noise from other work falls on both alike; the CPU every process
uses during a pipeline's slices is charged to that pipeline's requests.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition

from bench.common import (
    BrokerInfo,
    Children,
    CpuMeter,
    LibrdkafkaCpu,
    Load,
    bench_and_broker,
    children,
    cpu_per_request,
    drive,
    fresh_topics,
    host_cpu,
    pid_cpu,
    plain_topics,
    ratio,
    read_topic,
    run_prefix,
    summarize,
)
from services.cli.common import topic_specs
from services.cli.spawn import model_workers
from services.client.client import Answer, Client, make_request
from services.core.codec import codec
from services.core.kafka import Consumer, Producer
from services.core.runtime import now_ms
from services.core.settings import Topics
from services.model_worker.models import demo_rows
from services.model_worker.settings import model_group

MODELS = ("champion", "challenger", "canary")
HOPS = 3  # topics crossed by the rendezvous path: requests, scores, replies
# linger.ms of each pass-through of the floor: that of the producer it stands for (None: the
# services' PRODUCER_DEFAULTS, services/core/kafka/client_config.py). Pass-through 0 (-> hop1) stands for the
# model workers' score producer (the defaults, services/model_worker/worker.py); pass-through 1
# (-> hop2) for the rendezvous' reply producer, which never lingers (services/rendezvous/service.py,
# `start`: "linger.ms": 0). The sender's producer is the client's (both the defaults).
HOP_LINGER_MS: tuple[int | None, ...] = (None, 0)
ORDER = ("floor", "rendezvous")
STATUSES = ("OK", "FALLBACK", "TIMEOUT", "ERROR")


@dataclass(frozen=True)
class StackOptions:
    budget_ms: int = 200
    partitions: int = 4
    rendezvous_args: str = ""  # extra flags for `rendezvous serve`
    model_args: str = ""  # extra flags for each `rendezvous model serve`
    models: int = len(MODELS)  # the first N of MODELS (fewer: what the other processes cost)
    co_host: bool = False  # all models in one worker process (`model serve --co-host`)


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    arg = parser.add_argument
    arg("--budget-ms", type=int, default=200, help="deadline budget per request (default 200)")
    arg("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    arg("--rendezvous-args", default="", metavar="ARGS",
        help="extra flags for `serve`, e.g. '--processing at-least-once --commit-interval-ms 20'")
    arg("--model-args", default="", metavar="ARGS", help="extra flags for each `model serve`")
    arg("--models", type=int, choices=range(1, len(MODELS) + 1), default=len(MODELS),
        help="how many model processes (champion, challenger, canary; default 3): with 1, what the path "
        "costs when the machine is not also running two more models")
    arg("--co-host", action="store_true",
        help="score with all models in one worker process (`model serve --co-host`): one fetch and one "
        "produce request for all their scores")


def stack_options(args: argparse.Namespace) -> StackOptions:
    return StackOptions(args.budget_ms, args.partitions, args.rendezvous_args, args.model_args, args.models,
                        args.co_host)


def describe(options: StackOptions) -> str:
    """The options for a table title, e.g. 'budget 200 ms, 4 partitions'."""
    extras = (("serve", options.rendezvous_args), ("model serve", options.model_args))
    models = "" if options.models == len(MODELS) else f", {options.models} model(s)"
    models += ", co-hosted" if options.co_host else ""
    return f"budget {options.budget_ms} ms, {options.partitions} partitions{models}" + "".join(
        f", {flag} {extra!r}" for flag, extra in extras if extra
    )


class HopSender:
    """The floor's client: sends request records into the first hop, times them off the last.

    Mirrors `Client` on purpose (same producer/consumer wrappers, a Future per request, the same
    record built and encoded per send, created_at the time it was due) minus the Avro decode of
    the answer, so the difference to the rendezvous is the pipeline, not the client.
    """

    def __init__(self, config: Mapping[str, Any], first: str, last: str, partitions: int, budget_ms: int):
        self.first, self.last, self.budget_ms = first, last, budget_ms
        self._requests = codec("request")
        self._producer = Producer(config)
        self._consumer = Consumer({**config, "group.id": f"bench-hop-sender-{uuid.uuid4().hex}"})
        start = []
        for p in range(partitions):
            _low, high = self._consumer.native.get_watermark_offsets(TopicPartition(last, p), timeout=10.0)
            start.append(TopicPartition(last, p, high))
        self._consumer.assign(start)
        self._pending: dict[bytes, tuple[int, Future[int]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name="hop-sender-reader", daemon=True)
        self._reader.start()

    def submit(self, features: Mapping[str, float], created_at: int | None = None) -> Future[int]:
        """Send one request; the Future resolves to its latency in ms (from `created_at`, now if None)."""
        record = make_request(features, budget_ms=self.budget_ms, reply_topic=self.last, reply_partition=None,
                              created_at=created_at)
        key = record["request_id"].encode()
        future: Future[int] = Future()
        with self._lock:
            self._pending[key] = (record["created_at"], future)
        self._producer.produce(self.first, self._requests.encode(record), key=key)
        self._producer.poll(0)
        return future

    def flush(self) -> None:
        self._producer.flush()

    def _read(self) -> None:
        while not self._stop.is_set():
            messages = self._consumer.consume(500, 0.1)
            if not messages:
                continue
            received = now_ms()
            for msg in messages:
                with self._lock:
                    pending = self._pending.pop(msg.key() or b"", None)
                if pending is not None:
                    pending[1].set_result(received - pending[0])

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=5)
        self._producer.close()
        self._consumer.close()


@dataclass(frozen=True)
class Pipeline:
    submit: Callable[[float], Future[Any]]  # given when the request was due (time.time())
    flush: Callable[[], None]
    drain_s: float  # wait this long for a slice's answers before the next slice


@dataclass
class Stack:
    """Both pipelines running: `run` sends load into one of them."""

    broker: BrokerInfo
    options: StackOptions
    topics: Topics
    kids: Children
    pipelines: dict[str, Pipeline] = field(default_factory=dict)

    def cpu_sources(self) -> dict[str, Callable[[], float]]:
        """CPU readers of every process: the children, this one (the clients), the broker."""
        kids = {name: pid_cpu(proc.pid) for name, proc in self.kids.procs.items()}
        return {**kids, **bench_and_broker(self.broker)}

    def librdkafka_sources(self) -> dict[str, Callable[[], float]]:
        """CPU readers of the librdkafka threads of every Python process (the children, this one)."""
        kids: dict[str, Callable[[], float]] = {name: LibrdkafkaCpu(proc.pid) for name, proc in self.kids.procs.items()}
        return {**kids, "bench process": LibrdkafkaCpu(None)}

    def run(self, name: str, rate: float, seconds: float, into: Load) -> None:
        """Send into pipeline `name` at `rate` for `seconds`, then wait for its answers (drained)."""
        pipeline = self.pipelines[name]
        sent = len(into.futures)
        drive(pipeline.submit, rate, seconds, self.kids.check_alive, into)
        pipeline.flush()
        wait(into.futures[sent:], timeout=pipeline.drain_s)

    def comparisons(self, request_ids: set[str]) -> list[dict[str, Any]]:
        """The comparison records of these requests; stops the services first (they flush)."""
        self.kids.stop_all()
        records = codec("comparison")
        log = read_topic(self.broker.bootstrap, self.topics.log, self.options.partitions)
        return [r for r in (records.decode(m.value()) for m in log) if r["request_id"] in request_ids]


def _spawn_all(kids: Children, bootstrap: str, prefix: str, options: StackOptions, hop_topics: list[str]) -> list[str]:
    """Start the floor's pass-through hops, the models and the rendezvous; returns their groups."""
    groups = []
    for i in range(HOPS - 1):
        group = f"{prefix}hop{i}"
        hop = ["-m", "bench.hop", "--bootstrap", bootstrap, "--group", group]
        if HOP_LINGER_MS[i] is not None:
            hop += ["--linger-ms", str(HOP_LINGER_MS[i])]
        kids.spawn(f"hop{i}", [*hop, "--source", hop_topics[i], "--dest", hop_topics[i + 1]])
        groups.append(group)
    cli = ["-m", "services.cli.main"]
    models = MODELS[: options.models]
    workers = model_workers([(name, f"demo:{name}") for name in models], options.co_host)
    for worker, args in workers.items():
        kids.spawn(worker, [*cli, *args, *shlex.split(options.model_args)])
        groups.append(model_group(prefix, [worker]))
    kids.spawn("rendezvous", [*cli, "serve", "--models", ",".join(models), "--deadline-ms", str(options.budget_ms),
                              *shlex.split(options.rendezvous_args)])
    groups.append(f"{prefix}rendezvous")
    return groups


@contextmanager
def running_stack(broker: BrokerInfo, bench: str, options: StackOptions) -> Iterator[Stack]:
    """Fresh topics, every process started and its consumer group stable; all stopped on exit."""
    prefix = run_prefix(bench)
    topics = Topics.from_prefix(prefix)
    hop_topics = [f"{prefix}hop{i}" for i in range(HOPS)]
    specs = {**topic_specs(topics, options.partitions), **plain_topics(hop_topics, options.partitions)}
    config = {"bootstrap.servers": broker.bootstrap}
    env = {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "RDV_TOPIC_PREFIX": prefix}
    picks = itertools.cycle(demo_rows(10_000, seed=1))
    with fresh_topics(broker, specs), children(env) as kids, ExitStack() as clients:
        kids.wait_for_groups(config, _spawn_all(kids, broker.bootstrap, prefix, options, hop_topics))
        sender = HopSender(config, hop_topics[0], hop_topics[-1], options.partitions, options.budget_ms)
        clients.callback(sender.close)
        client = clients.enter_context(Client(config, topics, budget_ms=options.budget_ms))
        pipelines = {
            "floor": Pipeline(lambda due: sender.submit(next(picks), created_at=int(due * 1000)), sender.flush, 5.0),
            "rendezvous": Pipeline(lambda due: client.submit(next(picks), created_at=int(due * 1000)), client.flush,
                                   options.budget_ms / 1000 + 5.0),
        }  # fmt: skip
        yield Stack(broker, options, topics, kids, pipelines)


# ----- one round at a fixed rate -----------------------------------------------------------------
@dataclass
class Round:
    """Both pipelines at one rate: what each was sent in its measured slices, and the CPU used."""

    rate: float
    budget_ms: int
    loads: dict[str, Load]
    meters: dict[str, CpuMeter]
    librdkafka: dict[str, CpuMeter]  # of the same spans: the Python processes' librdkafka threads

    def floor_latencies(self) -> list[int]:
        return [f.result() for f in self.loads["floor"].futures if f.done()]

    def answers(self) -> list[Answer]:
        return [f.result() for f in self.loads["rendezvous"].futures if f.done() and f.exception() is None]


def measure_round(stack: Stack, rate: float, warmup: float, duration: float, slices: int) -> Round:
    """Warm each pipeline up for `warmup` s, then `slices` interleaved slices per pipeline."""
    if warmup > 0:
        for name in ORDER:
            stack.run(name, rate, warmup, Load())
    loads = {name: Load() for name in ORDER}
    meters = {name: CpuMeter(stack.cpu_sources()) for name in ORDER}
    librdkafka = {name: CpuMeter(stack.librdkafka_sources()) for name in ORDER}
    for name in slice_order(slices):
        with meters[name].span(), librdkafka[name].span():
            stack.run(name, rate, duration / slices, loads[name])
    return Round(rate, stack.options.budget_ms, loads, meters, librdkafka)


def slice_order(slices: int) -> list[str]:
    """F R R F F R ...: each pipeline goes first as often as the other."""
    return [name for k in range(slices) for name in (ORDER if k % 2 == 0 else ORDER[::-1])]


def load_figures(load: Load) -> dict[str, float]:
    return {"sent": len(load.futures), "sent_rate": load.sent_rate, "behind_max_ms": load.behind_max_ms}


def answer_figures(answers: list[Answer], load: Load) -> dict[str, Any]:
    """Latency summary, answers by deadline (received <= deadline) and by status, of what was sent."""
    sent = len(load.futures)
    statuses = Counter(a.status for a in answers)
    on_time = sum(a.received_at <= a.deadline for a in answers)
    ok_on_time = sum(a.received_at <= a.deadline and a.status == "OK" for a in answers)
    return {
        **summarize([a.latency_ms for a in answers], missing=sent - len(answers)),
        **load_figures(load),
        "answered": len(answers),
        "by_deadline": on_time,
        "by_deadline_pct": 100.0 * on_time / max(1, sent),
        "ok_by_deadline_pct": 100.0 * ok_on_time / max(1, sent),
        "statuses": {**{s: statuses.get(s, 0) for s in STATUSES}, **statuses, "no answer": sent - len(answers)},
        "by_status_model": dict(Counter(f"{a.status}/{a.model or '-'}" for a in answers)),
        "ok": summarize([a.latency_ms for a in answers if a.status == "OK"]),
    }


def floor_figures(latencies: list[int], load: Load, budget_ms: int) -> dict[str, Any]:
    """The floor's latency summary; "by deadline" = within the rendezvous' budget."""
    sent = len(load.futures)
    on_time = sum(latency <= budget_ms for latency in latencies)
    return {**summarize(latencies, missing=sent - len(latencies)), **load_figures(load), "answered": len(latencies),
            "by_deadline": on_time, "by_deadline_pct": 100.0 * on_time / max(1, sent)}


def round_figures(measured: Round) -> dict[str, Any]:
    """Every figure of a round, for printing and the JSON."""
    floor = floor_figures(measured.floor_latencies(), measured.loads["floor"], measured.budget_ms)
    rendezvous = answer_figures(measured.answers(), measured.loads["rendezvous"])
    requests = {name: len(load.futures) for name, load in measured.loads.items()}
    return {
        "rate": measured.rate,
        "floor": floor,
        "rendezvous": rendezvous,
        "ratios": {p: ratio(rendezvous[p], floor[p]) for p in ("p50", "p99", "p99.9")},
        "cpu_ms_per_request": cpu_per_request(measured.meters, requests),
        "librdkafka_ms_per_request": cpu_per_request(measured.librdkafka, requests),
        "cpu_s": {name: meter.used for name, meter in measured.meters.items()},
        "host_cpu_pct": host_cpu(measured.meters),
    }
