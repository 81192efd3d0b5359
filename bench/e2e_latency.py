"""End-to-end latency at a fixed request rate: client -> 3 models -> rendezvous -> client.

    .venv/bin/python bench/e2e_latency.py [--rate 1000] [--duration 20] [--budget-ms 200]
                                          [--slices 4] [--json FILE]
                                          [--rendezvous-args '--processing at-least-once']

Measured path (each box its own OS process, as in production):

    Client --requests--> demo:champion / demo:challenger / demo:canary --scores--> rendezvous
           <--replies--------------------------------------------------------------'

Latency is created_at -> received_at of each Answer (the client's clock on both ends). The path
crosses three topics, so the baseline ("floor") is a bare 3-hop pipeline on the same broker at the
same rate and message size: sender --hop0--> pass-through --hop1--> pass-through --hop2--> sender,
each pass-through a separate process running a plain confluent-kafka consume -> produce loop.

Both pipelines run side by side for the whole run but carry load in turns: after a warm-up of
each, the measured time is cut into `--slices` slices per pipeline, sent in the order
F R R F F R R F ..., each slice drained before the next starts. So noise from other work on the
machine falls on both alike. The ratio rendezvous / floor is the figure to watch
(targets: p50 <= 1.5x, p99 <= 2x).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/<name>.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import itertools
import os
import shlex
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TopicPartition

from bench.common import (
    BenchError,
    BrokerInfo,
    Children,
    Load,
    add_common_arguments,
    children,
    cpu_seconds,
    drive,
    dropped_topics,
    interrupt_on_sigterm,
    kafka_broker,
    note,
    print_table,
    ratio,
    read_topic,
    release_clients,
    run_prefix,
    summarize,
    write_json,
)
from services.cli.common import ensure_topics
from services.client.client import Answer, Client, make_request
from services.core.codec import codec
from services.core.kafka import Consumer, Producer, create_topics
from services.core.runtime import now_ms
from services.core.settings import TOPIC_ROLES, Topics
from services.model_worker.models import demo_rows

MODELS = ("champion", "challenger", "canary")
HOPS = 3  # topics crossed by the rendezvous path: requests, scores, replies
ORDER = ("floor", "rendezvous")
TARGETS = {"p50": 1.5, "p99": 2.0}
STATUSES = ("OK", "FALLBACK", "TIMEOUT", "ERROR")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    arg = parser.add_argument
    arg("--rate", type=float, default=1000.0, help="requests per second (default 1000)")
    arg("--duration", type=float, default=20.0, help="measured seconds (default 20)")
    arg("--warmup", type=float, default=2.0, help="seconds sent first and ignored (default 2)")
    arg("--budget-ms", type=int, default=200, help="deadline budget per request (default 200)")
    arg("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    arg("--slices", type=int, default=4, help="measured slices per pipeline, interleaved (default 4)")
    arg("--rendezvous-args", default="", metavar="ARGS",
        help="extra flags for `serve`, e.g. '--processing at-least-once --commit-interval-ms 20'")
    arg("--model-args", default="", metavar="ARGS", help="extra flags for each `model serve`")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if min(args.rate, args.duration, args.budget_ms, args.partitions, args.slices) <= 0 or args.warmup < 0:
        parser.error("--rate, --duration, --budget-ms, --partitions, --slices must be > 0, --warmup >= 0")
    return args


class HopSender:
    """The baseline's client: sends request records into the first hop, times them off the last.

    Mirrors `Client` on purpose (same producer/consumer wrappers, a Future per request, the same
    record built and encoded per send, created_at taken before encoding) minus the Avro decode of
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

    def submit(self, features: Mapping[str, float]) -> Future[int]:
        record = make_request(features, budget_ms=self.budget_ms, reply_topic=self.last, reply_partition=None)
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
    submit: Callable[[], Future[Any]]
    flush: Callable[[], None]
    drain_s: float  # wait this long for a slice's answers before the next slice
    load: Load


@dataclass
class Measured:
    floor: Load
    floor_latencies: list[int]
    rendezvous: Load
    answers: list[Answer]
    comparisons: list[dict[str, Any]]
    cpu: dict[str, float]  # CPU seconds per process from warm-up start to the last slice's drain
    sent: dict[str, int]  # requests per pipeline over the same time (warm-up included)


def spawn_all(
    kids: Children, bootstrap: str, prefix: str, args: argparse.Namespace, hop_topics: list[str]
) -> list[str]:
    """Start the floor's pass-through hops, the models and the rendezvous; returns their groups."""
    groups = []
    for i in range(HOPS - 1):
        group = f"{prefix}hop{i}"
        hop = ["-m", "bench.hop", "--bootstrap", bootstrap, "--group", group]
        kids.spawn(f"hop{i}", [*hop, "--source", hop_topics[i], "--dest", hop_topics[i + 1]])
        groups.append(group)
    cli = ["-m", "services.cli.main"]
    for name in MODELS:
        kids.spawn(name, [*cli, "model", "serve", "--model", f"demo:{name}", "--name", name,
                          *shlex.split(args.model_args)])
        groups.append(f"{prefix}model.{name}")
    kids.spawn("rendezvous", [*cli, "serve", "--models", ",".join(MODELS), "--deadline-ms", str(args.budget_ms),
                              *shlex.split(args.rendezvous_args)])
    groups.append(f"{prefix}rendezvous")
    return groups


def measure(
    broker: BrokerInfo, prefix: str, topics: Topics, hop_topics: list[str], args: argparse.Namespace
) -> Measured:
    bootstrap = broker.bootstrap
    config = {"bootstrap.servers": bootstrap}
    rows = demo_rows(10_000, seed=1)
    picks = itertools.cycle(rows)
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "RDV_TOPIC_PREFIX": prefix}
    with children(env) as kids, ExitStack() as clients:
        kids.wait_for_groups(config, spawn_all(kids, bootstrap, prefix, args, hop_topics))
        sender = HopSender(config, hop_topics[0], hop_topics[-1], args.partitions, args.budget_ms)
        clients.callback(sender.close)
        client = clients.enter_context(Client(config, topics, budget_ms=args.budget_ms))
        floor, rdv = Load(), Load()
        pipelines = {
            "floor": Pipeline(lambda: sender.submit(next(picks)), sender.flush, 5.0, floor),
            "rendezvous": Pipeline(lambda: client.submit(next(picks)), client.flush,
                                   args.budget_ms / 1000 + 5.0, rdv),
        }

        def run(pipeline: Pipeline, seconds: float, into: Load) -> None:
            sent = len(into.futures)
            drive(pipeline.submit, args.rate, seconds, kids.check_alive, into)
            pipeline.flush()
            wait(into.futures[sent:], timeout=pipeline.drain_s)  # drained before the other one sends

        def cpu_now() -> dict[str, float]:
            return {**kids.cpu(), "bench process": cpu_seconds(), "broker": cpu_seconds(broker.pid)}

        note(f"all processes ready; warming up each pipeline for {args.warmup:g} s at {args.rate:g} req/s")
        cpu_start = cpu_now()
        warm = {name: Load() for name in pipelines}
        if args.warmup > 0:
            for name, pipeline in pipelines.items():
                run(pipeline, args.warmup, warm[name])
        slice_s = args.duration / args.slices
        order = [name for k in range(args.slices) for name in (ORDER if k % 2 == 0 else ORDER[::-1])]
        note(f"measuring {args.slices} x {slice_s:g} s per pipeline: {' '.join(n[0].upper() for n in order)}")
        for name in order:
            run(pipelines[name], slice_s, pipelines[name].load)
        cpu = {name: used - cpu_start[name] for name, used in cpu_now().items()}
        sent = {name: len(warm[name].futures) + len(p.load.futures) for name, p in pipelines.items()}
    # Children are stopped (and flushed): the comparison records say where the time went.
    floor_latencies = [f.result() for f in floor.futures if f.done()]
    answers = [f.result() for f in rdv.futures if f.done() and f.exception() is None]
    measured = {a.request_id for a in answers}
    comparisons = codec("comparison")
    records = [comparisons.decode(m.value()) for m in read_topic(bootstrap, topics.log, args.partitions)]
    comparisons_measured = [r for r in records if r["request_id"] in measured]
    return Measured(floor, floor_latencies, rdv, answers, comparisons_measured, cpu, sent)


def stages(comparisons: list[dict[str, Any]], answers: list[Answer]) -> list[list[Any]]:
    """Where the time goes, from the comparison log: score arrival per model, answer decision."""
    per_model: dict[str, list[float]] = {}
    compute: dict[str, list[float]] = {}
    decided = []
    for record in comparisons:
        if record["answered_at"] is not None:
            decided.append(record["answered_at"] - record["created_at"])
        for out in record["outputs"]:
            per_model.setdefault(out["model"], []).append(out["latency_ms"])
            compute.setdefault(out["model"], []).append(out["compute_ms"])
    cols = ("n", "p50", "p99", "p99.9", "max")
    rows: list[list[Any]] = []
    for model in sorted(per_model):
        at = summarize(per_model[model])
        rows.append([f"score of {model} at rendezvous", *(at[c] for c in cols)])
    for model in sorted(compute):
        cs = summarize(compute[model])
        rows.append([f"  {model} compute per batch", *(cs[c] for c in cols)])
    dec = summarize(decided)
    rows.append(["answer decided (answered_at)", *(dec[c] for c in cols)])
    rec = summarize([a.latency_ms for a in answers])
    rows.append(["answer received by client", *(rec[c] for c in cols)])
    return rows


def cpu_table(measured: Measured, rate: float) -> tuple[list[list[Any]], str]:
    """CPU per process, per request of the pipeline it serves; and what the rate needs in cores."""
    cpu, sent = measured.cpu, measured.sent
    owners = {**{f"hop{i}": "floor" for i in range(HOPS - 1)},
              **dict.fromkeys([*MODELS, "rendezvous"], "rendezvous")}
    rows: list[list[Any]] = []
    per_request = {"floor": 0.0, "rendezvous": 0.0}
    for name, used in cpu.items():
        owner = owners.get(name)
        requests = sent[owner] if owner else sum(sent.values())
        ms = 1000.0 * used / max(1, requests)
        if owner:
            per_request[owner] += ms
        label = name if owner else f"{name} (both pipelines)"
        rows.append([label, used, ms])
    summary = (
        f"CPU per request, pipeline processes only: floor hops {per_request['floor']:.2f} ms, "
        f"models + rendezvous {per_request['rendezvous']:.2f} ms; at {rate:g} req/s that is "
        f"{per_request['floor'] * rate / 1000:.2f} vs {per_request['rendezvous'] * rate / 1000:.2f} cores "
        f"(+ broker and client) on a {os.cpu_count()}-CPU machine (load average now "
        f"{os.getloadavg()[0]:.1f})"
    )
    return rows, summary


def report(args: argparse.Namespace, measured: Measured) -> dict[str, Any]:
    floor_load, floor_lat = measured.floor, measured.floor_latencies
    rdv_load, answers, comparisons = measured.rendezvous, measured.answers, measured.comparisons
    floor_sum = summarize(floor_lat)
    rdv_sum = summarize([a.latency_ms for a in answers])
    ok_sum = summarize([a.latency_ms for a in answers if a.status == "OK"])
    cols = ["n", "p50", "p99", "p99.9", "max"]
    rows: list[list[Any]] = [
        [f"bare {HOPS}-hop floor", *(floor_sum[c] for c in cols), floor_load.sent_rate],
        ["rendezvous, all answers", *(rdv_sum[c] for c in cols), rdv_load.sent_rate],
        ["rendezvous, OK answers", *(ok_sum[c] for c in cols), ""],
    ]
    print_table(
        f"End-to-end latency, created -> received (ms): {args.rate:g} req/s, {args.duration:g} s per "
        f"pipeline in {args.slices} interleaved slices (+{args.warmup:g} s warm-up each), "
        f"budget {args.budget_ms} ms, {args.partitions} partitions"
        + "".join(f", {flag} {extra!r}" for flag, extra in
                  (("serve", args.rendezvous_args), ("model serve", args.model_args)) if extra),
        ["pipeline", *cols, "sent/s"], rows,
    )
    ratios = {c: ratio(rdv_sum[c], floor_sum[c]) for c in ("p50", "p99", "p99.9")}
    targets = [f"{c} <= {t:g}x: {'met' if ratios[c] <= t else 'NOT met'}" for c, t in TARGETS.items()]
    print_table("Ratio rendezvous / floor (all answers)", ["", "p50", "p99", "p99.9"],
                [["ratio", *ratios.values()]], digits=2)
    print("targets: " + "; ".join(targets))

    statuses = Counter(a.status for a in answers)
    by_model = Counter((a.status, a.model or "-") for a in answers)
    sent = len(rdv_load.futures)
    missing = sent - len(answers)
    status_rows = [[s, statuses.get(s, 0), 100.0 * statuses.get(s, 0) / max(1, sent)] for s in STATUSES]
    status_rows += [[s, n, 100.0 * n / max(1, sent)] for s, n in statuses.items() if s not in STATUSES]
    status_rows.append(["no answer", missing, 100.0 * missing / max(1, sent)])
    print_table(f"Answers by status ({sent:,} measured requests)", ["status", "answers", "%"], status_rows)
    print("by status/model: " + ", ".join(f"{s}/{model}={n}" for (s, model), n in sorted(by_model.items())))
    on_time = sum(a.received_at <= a.deadline for a in answers)
    print(f"deadline met (received <= deadline): {on_time:,} of {sent:,}; floor answers: "
          f"{len(floor_lat):,} of {len(floor_load.futures):,}; sender max lag behind schedule: "
          f"floor {floor_load.behind_max_ms:.1f} ms, rendezvous {rdv_load.behind_max_ms:.1f} ms")
    cpu_rows, cpu_summary = cpu_table(measured, args.rate)
    print_table("CPU used from warm-up to the end (both pipelines ran in turns; hops idle during R, "
                "models idle during F)", ["process", "CPU s", "CPU ms per request"], cpu_rows, digits=2)
    print(cpu_summary)
    stage_rows = stages(comparisons, answers)
    stage_cols = ["n", "p50", "p99", "p99.9", "max"]
    print_table("Rendezvous path by stage, ms after created_at (from the comparison log)",
                ["stage", *stage_cols], stage_rows)
    return {
        "floor": {**floor_sum, "sent_rate": floor_load.sent_rate, "sent": len(floor_load.futures)},
        "rendezvous": {**rdv_sum, "sent_rate": rdv_load.sent_rate, "sent": sent},
        "rendezvous_ok": ok_sum,
        "ratios": ratios,
        "statuses": {**dict(statuses), "no answer": missing},
        "by_status_model": {f"{s}/{model}": n for (s, model), n in by_model.items()},
        "deadline_met": on_time,
        "cpu_s": measured.cpu,
        "sent_incl_warmup": measured.sent,
        "stages": {row[0].strip(): dict(zip(stage_cols, row[1:], strict=True)) for row in stage_rows},
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    try:
        with kafka_broker() as broker:
            config = {"bootstrap.servers": broker.bootstrap}
            prefix = run_prefix("e2e")
            topics = Topics.from_prefix(prefix)
            hop_topics = [f"{prefix}hop{i}" for i in range(HOPS)]
            names = [*(getattr(topics, role) for role in TOPIC_ROLES), *hop_topics]
            with dropped_topics(config, names, broker.external):
                ensure_topics(config, topics, args.partitions)
                create_topics(config, {t: (args.partitions, {}) for t in hop_topics})
                results = report(args, measure(broker, prefix, topics, hop_topics, args))
            release_clients()
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    write_json(args.json, "e2e_latency", args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
