"""Benchmarks: they print figures and are never part of the test pass/fail (docs/benchmarks.md).

Run them with the project's interpreter, as scripts or as modules from the repository root:

    .venv/bin/python bench/e2e_latency.py --rate 1000 --duration 20
    .venv/bin/python -m bench.rendezvous_throughput --requests 20000

Each starts its own broker unless KAFKA_BOOTSTRAP_SERVERS is set; `--json FILE` saves the figures.
"""
