"""A fresh client's first request: how long after its `created_at` it reaches the broker.

    .venv/bin/python bench/client_first_request.py [--clients 40] [--rounds 2] [--json FILE]

The rendezvous counts a request's deadline from its `created_at`, stamped when the application
submits it; whatever the client spends before the record is appended is taken from the budget. A
one-shot client (`rendezvous send`, a script, a lambda) pays its connections on that first
request. This makes `--clients` Clients one after another (the client library, services/client/),
each submitting one request, then closing; the record's append time (the broker's, a topic of
LogAppendTime) minus its `created_at` is the figure, with the time `Client(...)` took to make.

Two configurations, alternated in rounds in the same run (the machine is noisy): the Client as
shipped, and the same with `reconnect.backoff.ms=100` (librdkafka's default, which the project
lowers to 10: services/core/kafka_config.py, CONNECTION_DEFAULTS). Prints p50/p90/max of each and
the ratio of the p50s. No target; the figure is what a one-shot client loses of its budget.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/<name>.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import time
from collections.abc import Mapping, Sequence
from typing import Any

from bench.common import BrokerInfo, fresh_topics, new_parser, note, positive, read_topic, run_bench, run_prefix
from services.client.client import Client
from services.core.codec import codec
from services.core.settings import Topics
from services.model_worker.models.demo import demo_rows

PARTITIONS = 4
CONFIGURATIONS: dict[str, Mapping[str, Any]] = {
    "as shipped (reconnect.backoff.ms=10)": {},
    "librdkafka's default (reconnect.backoff.ms=100)": {"reconnect.backoff.ms": 100},
}


def one_round(broker: BrokerInfo, extra: Mapping[str, Any], clients: int) -> tuple[list[int], list[float]]:
    """(created_at -> appended ms of each client's first request, Client() ms of each), on topics
    of the round's own."""
    topics = Topics.from_prefix(run_prefix("first"), {})
    specs = {name: (PARTITIONS, {"message.timestamp.type": "LogAppendTime"}) for name in
             (topics.requests, topics.replies)}
    config = {"bootstrap.servers": broker.bootstrap, **extra}
    row = demo_rows(1)[0]
    made_ms = []
    with fresh_topics(broker, specs):
        for _ in range(clients):
            started = time.monotonic()
            client = Client(config, topics, budget_ms=1000, answer_wait_s=1.0)
            made_ms.append(1000 * (time.monotonic() - started))
            try:
                client.submit(row)
                client.flush(10.0)
            finally:
                client.close(1.0)
        requests = codec("request")
        delays = [msg.timestamp()[1] - requests.decode(msg.value())["created_at"]
                  for msg in read_topic(broker.bootstrap, topics.requests, PARTITIONS)]
    return delays, made_ms


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(broker: BrokerInfo, clients: int, rounds: int) -> dict[str, Any]:
    delays: dict[str, list[int]] = {name: [] for name in CONFIGURATIONS}
    made: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    for number in range(rounds):
        order = list(CONFIGURATIONS) if number % 2 == 0 else list(reversed(CONFIGURATIONS))
        for name in order:
            note(f"round {number + 1}/{rounds}: {clients} fresh clients, {name} ...")
            got, took = one_round(broker, CONFIGURATIONS[name], clients)
            delays[name] += got
            made[name] += took
    results: dict[str, Any] = {}
    print(f"\nA fresh client's first request, {clients} clients x {rounds} rounds per configuration")
    print(f"{'configuration':<50} {'created->appended ms p50 / p90 / max':>38} {'Client() ms p50 / max':>24}")
    for name in CONFIGURATIONS:
        d, m = delays[name], made[name]
        figures = {"appended_ms_p50": quantile(d, .5), "appended_ms_p90": quantile(d, .9), "appended_ms_max": max(d),
                   "client_made_ms_p50": quantile(m, .5), "client_made_ms_max": max(m)}
        results[name] = figures
        print(f"{name:<50} {figures['appended_ms_p50']:>18.0f} / {figures['appended_ms_p90']:>4.0f} / "
              f"{figures['appended_ms_max']:>5.0f} {figures['client_made_ms_p50']:>15.0f} / "
              f"{figures['client_made_ms_max']:>5.0f}")
    shipped, default = (results[name]["appended_ms_p50"] for name in CONFIGURATIONS)
    results["ratio_p50"] = shipped / max(default, 1)
    print(f"ratio of the p50s, as shipped / librdkafka's default: {results['ratio_p50']:.2f}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--clients", type=int, default=40, help="fresh clients per configuration and round (40)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the configurations alternated (2)")
    args = parser.parse_args(argv)
    positive(parser, args, "clients", "rounds")
    return run_bench("client_first_request", args, lambda broker: measure(broker, args.clients, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
