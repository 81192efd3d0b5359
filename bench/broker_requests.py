"""Which Kafka requests one client request costs the broker, by kind and by the process that sent them.

    .venv/bin/python bench/broker_requests.py [--rate 200] [--duration 10] [--co-host] [--json FILE]

The broker's CPU goes per Kafka request, hardly per byte (docs/benchmarks.md, "The broker is half
of the CPU"): the number of requests a client request causes is the broker's cost as a count,
which does not move with the noise of a shared host as CPU times do. A broker started for this run
logs every request it completes (Kafka's request logger, `RDV_BROKER_REQUEST_LOG`); the bare 3-hop
floor and the rendezvous pipeline of bench/stack.py then carry `--rate` in turn, `--duration`
seconds each after a warm-up, and the requests completed meanwhile are counted by API and by the
process whose connection sent them: a service, "bench process" (the floor's sender and the
rendezvous' client both live here), or "broker" for its connections to itself (a transactional
write's check with its own transaction coordinator, the transaction markers).

A long-poll fetch counts when it completes. The request log costs the broker CPU: this bench
reports counts, not times (bench/e2e_latency.py does those).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/<name>.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.common import BrokerInfo, Load, new_parser, note, positive, print_table, run_bench
from bench.stack import ORDER, Stack, add_stack_arguments, describe, running_stack, stack_options
from services.localkafka.config import REQUEST_LOG_ENV

PREFIX = "Completed request:"
UNKNOWN = "(unknown)"  # a connection whose process was not found (closed before it was looked up)


@dataclass(frozen=True)
class Completed:
    at_ms: int  # when the broker completed it (epoch ms)
    api: str  # e.g. PRODUCE, FETCH, ADD_PARTITIONS_TO_TXN
    client_port: int  # the local port of the connection's client end


@dataclass(frozen=True)
class Window:
    """When one pipeline carried load, and how many client requests it was sent."""

    start_ms: int
    end_ms: int
    requests: int


def parse_line(line: str) -> Completed | None:
    """One line of the request log (`<epoch ms> Completed request:{json}`); None for any other line."""
    stamp, _, rest = line.partition(" ")
    if not stamp.isdigit() or not rest.startswith(PREFIX):
        return None
    try:
        entry = json.loads(rest[len(PREFIX):])
        api = entry["requestHeader"]["requestApiKeyName"]
        # "<server host>:<port>-<client host>:<port>-<processor>-<index>"
        client_end = entry["connection"].split("-")[1]
        port = int(client_end.rpartition(":")[2])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return Completed(int(stamp), str(api), port)


def count(
    lines: Iterable[str], windows: Mapping[str, Window], owner_of: Mapping[int, str]
) -> dict[str, Counter[tuple[str, str]]]:
    """Requests completed inside each window: {pipeline: Counter((api, process))}."""
    counts: dict[str, Counter[tuple[str, str]]] = {name: Counter() for name in windows}
    for line in lines:
        done = parse_line(line)
        if done is None:
            continue
        for name, window in windows.items():
            if window.start_ms <= done.at_ms < window.end_ms:
                counts[name][(done.api, owner_of.get(done.client_port, UNKNOWN))] += 1
    return counts


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process `pid` holds open ({} if it is gone)."""
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def tcp_ports_by_inode() -> dict[int, int]:
    """{socket inode: its local port} of every TCP socket of this host (IPv4 and IPv6)."""
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # sl local_address rem_address st ... uid timeout inode
            ports[int(fields[9])] = int(fields[1].rpartition(":")[2], 16)
    return ports


def socket_owners(pids: Mapping[str, int | None]) -> dict[int, str]:
    """{local TCP port: the name of the process (of `pids`) holding that socket}."""
    ports = tcp_ports_by_inode()
    owners = {}
    for name, pid in pids.items():
        if pid is None:
            continue
        for inode in socket_inodes(pid):
            if inode in ports:
                owners[ports[inode]] = name
    return owners


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    arg = parser.add_argument
    arg("--rate", type=float, default=200.0, help="requests per second (default 200)")
    arg("--duration", type=float, default=10.0, help="counted seconds per pipeline (default 10)")
    arg("--warmup", type=float, default=3.0, help="seconds of load per pipeline before counting (default 3)")
    add_stack_arguments(parser)
    args = parser.parse_args(argv)
    positive(parser, args, "rate", "duration", "budget_ms", "partitions")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        parser.error("this bench counts the requests of a broker it starts itself: unset KAFKA_BOOTSTRAP_SERVERS")
    return args


def _processes(stack: Stack) -> dict[str, int | None]:
    return {**{name: proc.pid for name, proc in stack.kids.procs.items()},
            "bench process": os.getpid(), "broker": stack.broker.pid}


def measure(broker: BrokerInfo, args: argparse.Namespace, request_log: Path) -> dict[str, Any]:
    windows: dict[str, Window] = {}
    with running_stack(broker, "requests", stack_options(args)) as stack:
        note(f"all processes ready; warming each pipeline up for {args.warmup:g} s at {args.rate:g} req/s")
        for name in ORDER:
            stack.run(name, args.rate, args.warmup, Load())
        owners = socket_owners(_processes(stack))
        for name in ORDER:
            note(f"counting the {name} pipeline's requests for {args.duration:g} s")
            load = Load()
            start = int(time.time() * 1000)
            stack.run(name, args.rate, args.duration, load)
            windows[name] = Window(start, int(time.time() * 1000), len(load.futures))
        owners.update(socket_owners(_processes(stack)))  # connections opened meanwhile
    with request_log.open(errors="replace") as lines:
        counts = count(lines, windows, owners)
    return {"options": describe(stack_options(args)), "rate": args.rate,
            "pipelines": {name: _figures(counts[name], windows[name]) for name in ORDER}}


def _figures(counted: Counter[tuple[str, str]], window: Window) -> dict[str, Any]:
    per = 1.0 / max(1, window.requests)
    by_api: Counter[str] = Counter()
    by_process: Counter[str] = Counter()
    for (api, process), n in counted.items():
        by_api[api] += n
        by_process[process] += n
    return {
        "client_requests": window.requests, "seconds": (window.end_ms - window.start_ms) / 1000.0,
        "kafka_requests": sum(counted.values()),
        "per_client_request": sum(counted.values()) * per,
        "by_api": {api: n * per for api, n in by_api.most_common()},
        "by_process": {process: n * per for process, n in by_process.most_common()},
        "by_api_and_process": {f"{api} {process}": n * per for (api, process), n in counted.most_common()},
    }


def report(results: dict[str, Any]) -> None:
    floor, rendezvous = (results["pipelines"][name] for name in ORDER)
    print(f"Kafka requests per client request at {results['rate']:g} req/s ({results['options']}); "
          f"client requests counted: floor {floor['client_requests']:,}, rendezvous {rendezvous['client_requests']:,}")
    for part, title in (("by_api", "request kind"), ("by_process", "sent by"), ("by_api_and_process", "kind, sent by")):
        keys = list(dict.fromkeys([*rendezvous[part], *floor[part]]))
        rows = [[key, floor[part].get(key, 0.0), rendezvous[part].get(key, 0.0)] for key in keys]
        rows.append(["all", floor["per_client_request"], rendezvous["per_client_request"]])
        print_table(f"By {title}", [title, "floor", "rendezvous"], rows, digits=2)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rdv-bench-requests-") as tmp:
        request_log = Path(tmp) / "requests.log"
        os.environ[REQUEST_LOG_ENV] = str(request_log)  # read by the broker this run starts

        def body(broker: BrokerInfo) -> dict[str, Any]:
            results = measure(broker, args, request_log)
            report(results)
            return results

        return run_bench("broker_requests", args, body)


if __name__ == "__main__":
    sys.exit(main())
