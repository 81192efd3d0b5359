"""One bare pass-through hop as its own process (the baseline of bench/e2e_latency.py).

    python -m bench.hop --bootstrap HOST:PORT --source T1 --dest T2 --group G [--linger-ms N]

Reads `--source` in consumer group `--group` and writes every record's key and value to the same
partition of `--dest`, until SIGINT/SIGTERM. No decoding, no commits: a floor, not a service.
Its producer has the services' client settings (PRODUCER_DEFAULTS), with `--linger-ms` if given:
the floor's hops each take the linger of the rendezvous-path producer they stand for (bench/stack.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/<name>.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import threading
from collections.abc import Sequence

from bench.common import bare_consumer, bare_producer, pass_through
from services.core.runtime import install_signal_handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--linger-ms", type=int, default=None,
                        help="the producer's linger.ms (default: the services' PRODUCER_DEFAULTS)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    install_signal_handlers(stop)
    consumer = bare_consumer(args.bootstrap, args.group)
    producer = bare_producer(args.bootstrap, None if args.linger_ms is None else {"linger.ms": args.linger_ms})
    try:
        consumer.subscribe([args.source])
        forwarded = pass_through(consumer, producer, args.dest, stop, keep_partition=True, max_batch=500)
    finally:
        consumer.close()
    linger = "the default linger.ms" if args.linger_ms is None else f"linger.ms={args.linger_ms}"
    print(f"hop {args.source} -> {args.dest} ({linger}): forwarded {forwarded} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
