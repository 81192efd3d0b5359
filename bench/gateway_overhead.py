"""What the HTTP gateway adds to a call, and how many calls a second it serves.

    flock -x /work/heavy.lock .venv/bin/python bench/gateway_overhead.py [--rate 500] [--duration 20]
        [--slices 4] [--connections 64] [--wrk-seconds 15] [--json FILE]

The path behind both clients is the same and kept short, so the gateway's own cost is what
differs: an echo responder (a child process; it answers every Request on rdv.requests with an OK
Answer at the request's return address, as the rendezvous would, without models) on the run's
broker. Two ways to send the same request (30 demo features):

    client   the Python Kafka client (services/client) in this process: produce, await the reply
    gateway  `rendezvous gateway` (a child process): POST /v2/models/default/infer as OIP JSON (one
             FP64 tensor per feature) over keep-alive HTTP/1.1 from this process; the gateway
             runs the same Kafka client

1. Overhead at a fixed rate (`--rate`, open loop): the measured time is cut into `--slices`
   slices per client, in the order C G G C C G G C ..., so noise falls on both alike. Latency is
   taken in this process from send to answer (perf_counter) for both. Targets: gateway p50 at most
   1 ms and p99 at most 3 ms above the client's.
2. Highest rate: wrk (Debian's) with `--connections` keep-alive connections for `--wrk-seconds`
   against the gateway, once per body form (30 one-feature tensors, and one [1, 30] tensor with
   feature_names), and, as the baseline of the same run, the Kafka client with as many calls in
   flight (closed loop). Target: >= 3,000 calls/s through the gateway.

CPU per call is printed per process (bench process, gateway, echo, broker, wrk) for each part.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/<name>.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import orjson

from bench.common import (
    BenchError,
    BrokerInfo,
    CpuMeter,
    bench_and_broker,
    children,
    cpu_figures,
    drive,
    fresh_topics,
    new_parser,
    note,
    pid_cpu,
    positive,
    print_table,
    ratio,
    run_bench,
    run_prefix,
    summarize,
)
from services.cli.common import topic_specs
from services.client.client import Client
from services.control.schedule import Schedule
from services.control.topic import publish
from services.core.codec import codec
from services.core.kafka import Consumer, Producer
from services.core.runtime import now_ms
from services.core.settings import Topics
from services.localkafka.config import free_port
from services.model_worker.models import DEMO_FEATURES, demo_rows

BUDGET_MS = 1000
MAX_RATE_TARGET = 3000.0


# ----- the echo responder (a child process: `gateway_overhead.py --echo BOOTSTRAP PREFIX`) -----------
def echo(bootstrap: str, prefix: str) -> None:
    """Answer every request OK at its return address until SIGTERM."""
    topics = Topics.from_prefix(prefix)
    requests, answers = codec("request"), codec("answer")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}echo",
                         "auto.offset.reset": "latest"})
    consumer.subscribe([topics.requests])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        for msg in consumer.consume(1000, 0.1):
            request = requests.decode(msg.value())
            reply = request["reply_to"]
            answer = {"request_id": request["request_id"], "status": "OK", "model": "echo", "version": "1",
                      "score": 0.5, "label": "benign", "reason": "echo", "created_at": request["created_at"],
                      "deadline": request["deadline"], "answered_at": now_ms(), "schedule": "default",
                      "schedule_version": 1}
            producer.produce(reply["topic"], answers.encode(answer), key=msg.key(), partition=reply["partition"])
        producer.poll(0)
    producer.close()
    consumer.close()


# ----- a minimal keep-alive HTTP/1.1 client: pre-built request bytes, Content-Length responses ----
class Http:
    """Connections to the gateway on an asyncio loop in its own thread; `submit` is thread-safe."""

    def __init__(self, port: int, request: bytes, connections: int):
        self.port, self.request = port, request
        self.loop = asyncio.new_event_loop()
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None = None
        self.errors = 0
        threading.Thread(target=self.loop.run_forever, daemon=True, name="bench-http").start()
        asyncio.run_coroutine_threadsafe(self._open(connections), self.loop).result(30)

    async def _open(self, n: int) -> None:
        self.free = asyncio.Queue()
        for _ in range(n):
            self.free.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))

    def submit(self, due: float) -> Future[float]:
        """Send one call; the future resolves to its latency in ms (due -> whole response read)."""
        return asyncio.run_coroutine_threadsafe(self._call(_started(due)), self.loop)

    async def _call(self, started: float) -> float:
        assert self.free is not None
        reader, writer = await self.free.get()
        try:
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                self.errors += 1
            return (time.perf_counter() - started) * 1000.0
        finally:
            self.free.put_nowait((reader, writer))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def infer_body(row: Mapping[str, float], form: str = "columns") -> bytes:
    """One row as OIP JSON: one FP64 tensor per feature (`columns`), or one [1, 30] tensor (`matrix`)."""
    if form == "matrix":
        return orjson.dumps({"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, len(DEMO_FEATURES)],
                                         "parameters": {"feature_names": ",".join(DEMO_FEATURES)},
                                         "data": [row[n] for n in DEMO_FEATURES]}]})
    return orjson.dumps({"inputs": [{"name": n, "datatype": "FP64", "shape": [1], "data": [row[n]]}
                                    for n in DEMO_FEATURES]})


def http_request(port: int, body: bytes) -> bytes:
    return (f"POST /v2/models/default/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def _started(due: float) -> float:
    """When a call due at `due` (time.time()) started, on perf_counter's clock: its latency
    counts from when it was due (`common.drive` says why)."""
    return time.perf_counter() - max(0.0, time.time() - due)


def timed(submit: Callable[[], Future[Any]]) -> Callable[[float], Future[float]]:
    """Kafka client futures -> futures of the latency in ms (from when the call was due), taken
    when the answer is handed over."""
    def send(due: float) -> Future[float]:
        started = _started(due)
        out: Future[float] = Future()
        inner = submit()
        inner.add_done_callback(lambda f: out.set_exception(f.exception()) if f.exception()  # type: ignore[arg-type]
                                else out.set_result((time.perf_counter() - started) * 1000.0))
        return out
    return send


def latencies(futures: list[Future[float]], timeout: float = 30.0) -> list[float]:
    deadline = time.monotonic() + timeout
    return [f.result(timeout=max(0.1, deadline - time.monotonic())) for f in futures]


# ----- part 1: overhead at a fixed rate ----------------------------------------------------------
def overhead(args: argparse.Namespace, client: Client, http: Http, row: dict[str, float],
             meters: dict[str, CpuMeter], sources: Mapping[str, Callable[[], float]],
             check: Callable[[], None]) -> dict[str, Any]:
    senders = {"client": timed(lambda: client.submit(row, budget_ms=BUDGET_MS)), "gateway": http.submit}
    note(f"warm-up: {args.warmup:.0f} s each at {args.rate:.0f} calls/s")
    for send in senders.values():
        latencies(drive(send, args.rate, args.warmup, check).futures)
    order = [("client", "gateway", "gateway", "client")[i % 4] for i in range(args.slices * 2)]
    measured: dict[str, list[float]] = {"client": [], "gateway": []}
    sent: dict[str, float] = {"client": 0.0, "gateway": 0.0}
    for name in measured:
        meters[f"{name} @{args.rate:.0f}/s"] = CpuMeter(sources)
    slice_s = args.duration / args.slices
    note(f"measuring: {args.slices} slices of {slice_s:.1f} s per client, order {' '.join(order)}")
    for name in order:
        with meters[f"{name} @{args.rate:.0f}/s"].span():
            load = drive(senders[name], args.rate, slice_s, check)
            measured[name] += latencies(load.futures)
        sent[name] += load.sent_rate / len(order) * 2
    stats = {name: summarize(values) for name, values in measured.items()}
    rows = [[name, stats[name]["n"], sent[name], stats[name]["p50"], stats[name]["p99"], stats[name]["p99.9"]]
            for name in measured]
    delta = {q: stats["gateway"][q] - stats["client"][q] for q in ("p50", "p99", "p99.9")}
    rows.append(["gateway - client", "", "", delta["p50"], delta["p99"], delta["p99.9"]])
    print_table(f"Latency at {args.rate:.0f} calls/s (ms, send -> answer, echo path)",
                ["", "n", "sent/s", "p50", "p99", "p99.9"], rows, digits=2)
    verdict = {"p50_delta_ms": delta["p50"], "p99_delta_ms": delta["p99"],
               "p50_target_met": delta["p50"] <= 1.0, "p99_target_met": delta["p99"] <= 3.0}
    print(f"targets: p50 +{delta['p50']:.2f} ms (<= +1 ms: {verdict['p50_target_met']}), "
          f"p99 +{delta['p99']:.2f} ms (<= +3 ms: {verdict['p99_target_met']})")
    return {"latency_ms": stats, "delta_ms": delta, "targets": verdict, "http_errors": http.errors}


# ----- part 2: the highest rate ---------------------------------------------------------------------
WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}"):read("*a")
"""


def run_wrk(args: argparse.Namespace, port: int, body: bytes, workdir: Path) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk is not installed (deploy/ci/system-deps.sh installs it from Debian)")
    (workdir / "body.json").write_bytes(body)
    (workdir / "post.lua").write_text(WRK_SCRIPT.format(body=workdir / "body.json"))
    command = [wrk, "-t", str(args.wrk_threads), "-c", str(args.connections), "-d", f"{round(args.wrk_seconds)}s",
               "--latency", "-s", str(workdir / "post.lua"), f"http://127.0.0.1:{port}/v2/models/default/infer"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    _pid, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise BenchError(f"wrk failed:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)

    def quantile(q: str) -> float:
        found = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)", output, re.M)
        if not found:
            return float("nan")
        return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]

    return {"rate": rate, "requests": total, "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(1) if errors else "", "p50_ms": quantile("50"), "p99_ms": quantile("99"),
            "wrk_cpu_s": usage.ru_utime + usage.ru_stime, "command": " ".join(command[:-1])}


def closed_loop(client: Client, row: dict[str, float], in_flight: int, seconds: float) -> dict[str, Any]:
    """The Kafka client with `in_flight` calls outstanding for `seconds`: its highest rate here."""
    done = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def again(future: Future[Any]) -> None:
        if future.exception() is None:
            with lock:
                done[0] += 1
        if not stop.is_set():
            client.submit(row, budget_ms=BUDGET_MS).add_done_callback(again)

    started = time.perf_counter()
    for _ in range(in_flight):
        client.submit(row, budget_ms=BUDGET_MS).add_done_callback(again)
    client.flush()
    stop.wait(seconds)
    stop.set()
    elapsed = time.perf_counter() - started
    return {"rate": done[0] / elapsed, "requests": done[0]}


def highest_rate(args: argparse.Namespace, client: Client, port: int, body: bytes, row: dict[str, float],
                 meters: dict[str, CpuMeter], sources: Mapping[str, Callable[[], float]],
                 workdir: Path) -> dict[str, Any]:
    note(f"highest rate: Kafka client with {args.connections} in flight, {args.wrk_seconds:.0f} s")
    with meters.setdefault("client max", CpuMeter(sources)).span():
        baseline = closed_loop(client, row, args.connections, args.wrk_seconds)
    meters["client max"].used["wrk"] = 0.0
    rows = [["client (closed loop)", baseline["rate"], baseline["requests"], "", "", ""]]
    runs: dict[str, dict[str, Any]] = {}
    for form in ("columns", "matrix"):
        label = f"gateway max, {form} (wrk)"
        note(f"highest rate: wrk, {args.connections} keep-alive connections, {args.wrk_seconds:.0f} s, {form}")
        meters[label] = CpuMeter(sources)
        with meters[label].span():
            runs[form] = run_wrk(args, port, infer_body(row, form), workdir)
        meters[label].used["wrk"] = runs[form]["wrk_cpu_s"]
        rows.append([f"gateway (wrk), {form}", runs[form]["rate"], runs[form]["requests"],
                     runs[form]["p50_ms"], runs[form]["p99_ms"], ratio(runs[form]["rate"], baseline["rate"])])
    print_table(f"Highest rate with {args.connections} calls in flight (echo path)",
                ["", "calls/s", "calls", "p50 ms", "p99 ms", "x client"], rows, digits=2)
    best = max(r["rate"] for r in runs.values())
    print(f"target >= {MAX_RATE_TARGET:,.0f} calls/s: columns {runs['columns']['rate'] >= MAX_RATE_TARGET}, "
          f"matrix {runs['matrix']['rate'] >= MAX_RATE_TARGET}")
    return {"client": baseline, "gateway_wrk": runs, "target_met": best >= MAX_RATE_TARGET}


# ----- the run -------------------------------------------------------------------------------------
def wait_ready(port: int, check: Callable[[], None], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        check()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"the gateway was not ready within {timeout:.0f} s")
        time.sleep(0.2)  # polling an external condition (the gateway's readiness)


def body_of(args: argparse.Namespace, broker: BrokerInfo) -> dict[str, Any]:
    prefix = run_prefix("gateway")
    topics = Topics.from_prefix(prefix)
    config = {"bootstrap.servers": broker.bootstrap}
    specs = topic_specs(topics, args.partitions)
    client_replies = f"{prefix}replies.client"  # named after the replies topic: a return address by default
    specs[client_replies] = (args.partitions, {})
    row = demo_rows(1, seed=7)[0]
    body = infer_body(row)
    port = free_port()
    with fresh_topics(broker, specs), children({}) as kids, tempfile.TemporaryDirectory() as tmp:
        publish(config, topics.control, Schedule(models=("echo",), default_deadline_ms=BUDGET_MS))
        kids.spawn("echo", [str(Path(__file__).resolve()), "--echo", broker.bootstrap, prefix])
        kids.spawn("gateway", ["-m", "services.cli.main", "--log-level", "WARNING", "gateway", "--bootstrap",
                               broker.bootstrap, "--topic-prefix", prefix, "--http-addr", "127.0.0.1",
                               "--http-port", str(port), "--grpc-port", "0", "--instance", "bench"])
        kids.wait_for_groups(config, [f"{prefix}echo"])
        wait_ready(port, kids.check_alive)
        sources = {**bench_and_broker(broker), "gateway": pid_cpu(kids.procs["gateway"].pid),
                   "echo": pid_cpu(kids.procs["echo"].pid)}
        client_topics = Topics.from_prefix(prefix, {"replies": client_replies})
        meters: dict[str, CpuMeter] = {}
        with Client(config, client_topics, budget_ms=BUDGET_MS) as client:
            http = Http(port, http_request(port, body), args.http_connections)
            try:
                part1 = overhead(args, client, http, row, meters, sources, kids.check_alive)
            finally:
                http.close()
            part2 = highest_rate(args, client, port, body, row, meters, sources, Path(tmp))
        counts = {f"client @{args.rate:.0f}/s": part1["latency_ms"]["client"]["n"],
                  f"gateway @{args.rate:.0f}/s": part1["latency_ms"]["gateway"]["n"],
                  "client max": part2["client"]["requests"],
                  **{f"gateway max, {form} (wrk)": run["requests"] for form, run in part2["gateway_wrk"].items()}}
        cpu = cpu_figures(meters, counts, "each process's CPU in each part, per call", unit="call")
        problems = []
        bad = sum(run["non_2xx"] for run in part2["gateway_wrk"].values())
        if part1["http_errors"] or bad:
            problems.append(f"non-200 answers: {part1['http_errors']} at the fixed rate, {bad} under wrk")
    return {"overhead": part1, "highest_rate": part2, **cpu, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--echo":
        echo(sys.argv[2], sys.argv[3])
        return 0
    parser = new_parser(__doc__)
    parser.add_argument("--rate", type=float, default=500.0, help="calls/s of the overhead part (default 500)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per client (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per client (default 3)")
    parser.add_argument("--slices", type=int, default=4, help="slices per client, interleaved (default 4)")
    parser.add_argument("--http-connections", type=int, default=32,
                        help="keep-alive connections of the fixed-rate HTTP sender (default 32)")
    parser.add_argument("--connections", type=int, default=64, help="wrk's keep-alive connections (default 64)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk's threads (default 1: the CPUs serve the rest)")
    parser.add_argument("--wrk-seconds", type=float, default=15.0, help="seconds of each highest-rate run (default 15)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of every topic (default 4)")
    args = parser.parse_args(argv)
    positive(parser, args, "rate", "duration", "warmup", "slices", "connections", "wrk_seconds")
    return run_bench("gateway_overhead", args, lambda broker: body_of(args, broker))


if __name__ == "__main__":
    sys.exit(main())

