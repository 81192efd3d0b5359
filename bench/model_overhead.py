"""Per-batch cost of the model worker's scoring path, without Kafka: a table by model and batch size.

    flock -x /work/heavy.lock .venv/bin/python bench/model_overhead.py
    flock -x /work/heavy.lock .venv/bin/python bench/model_overhead.py --baseline /tmp/rdv-baseline

Three parts are timed for each demo model (champion, challenger, canary) and batch size (1, 8, 64,
256 by default), on rows of the demo data set:

    read     the batch's Request records (bytes) -> the checked matrix the model is given: the
             request walk where the tree has one (services/model_worker/walked.py), else what the
             worker did before it, fastavro's decode, the request check and `Signature.prepare`
    score    `score_batch(model, rows)`: feature dicts -> checked matrix -> predict -> results
    encode   the Score records of that batch, built and Avro-encoded as the worker writes them

Each figure is the time of one whole batch (µs, p50 and p99 over the repetitions) and per row.
`--models` may also name `co-hosted`: the three models scored together as one worker scores them
(`score_co_hosted`, one check per distinct signature; read and score parts).

`--gap-ms G` sleeps G ms before each timed call. Back to back (0, the default) every call finds
the CPU's caches warm from the last; at 200 req/s a worker's batch comes every ~5 ms, after the
CPU ran other processes or sat idle, and on this machine that makes the same call several times
dearer (docs/benchmarks.md, "Every wake-up is paid").
`--baseline DIR` also measures a checkout of another version (e.g. `git archive <commit> | tar -x
-C DIR`) in the same run, in a child process whose imports come from DIR, alternating with the
current tree, and prints the ratio current / baseline (below 1 = faster now). With `--rounds N`
the two alternate N times and each figure is the median over the rounds (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
MODELS = ("champion", "challenger", "canary")
BATCHES = (1, 8, 64, 256)


# ----- the child: measures whatever `services` its sys.path resolves to -----------------------
def _timings(run: Callable[[], Any], min_reps: int, min_s: float, gap_s: float) -> list[float]:
    """Microseconds of each call; at least `min_reps` calls and `min_s` seconds, after a warm-up;
    `gap_s` asleep before each call."""
    for _ in range(5):
        run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - started < min_s:
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e6)
    return times


def _encoder() -> Callable[[list[dict[str, Any]], list[Any]], list[bytes]]:
    """The worker's Score encoder; for versions without one, the inline code it replaced."""
    import importlib.util

    if importlib.util.find_spec("services.model_worker.score_writer") is not None:
        from services.model_worker.score_writer import ScoreWriter

        writer = ScoreWriter("champion", "logreg-1", "bench-1")
        return lambda requests, results: writer.encode_batch(requests, results, 1, 2)[0]
    from services.core.codec import codec

    scores = codec("score")

    def inline(requests: list[dict[str, Any]], results: list[Any]) -> list[bytes]:
        out = []
        for request, result in zip(requests, results, strict=True):
            p = result.prediction
            out.append(scores.encode({
                "request_id": request["request_id"], "model": "champion", "version": "logreg-1",
                "instance": "bench-1", "score": p.score if p else None, "label": p.label if p else None,
                "error": result.error, "deadline": request["deadline"], "received_at": 1, "scored_at": 2,
                "compute_ms": result.compute_ms,
            }))
        return out

    return inline


def _reader(names: tuple[str, ...]) -> Callable[[list[bytes]], Any]:
    """A batch of Request values -> the checked matrix for models reading `names`, as the worker
    of this tree gets it."""
    import importlib.util

    from services.core.codec import codec
    from services.core.requests import check_request
    from services.core.signatures import Signature

    requests = codec("request")
    if importlib.util.find_spec("services.model_worker.walked") is not None:
        from services.model_worker.walked import RequestWalker

        walker = RequestWalker(requests, names)

        def walked(values: list[bytes]) -> Any:
            batch = walker.read(values)
            assert batch is not None, "the bench's requests are plain: the walk must take them"
            return batch.checked[0].matrix

        return walked
    signature = Signature.all_required(names)

    def decoded(values: list[bytes]) -> Any:
        records = [requests.decode(v) for v in values]
        for record in records:
            check_request(record)
        return signature.prepare([r["features"] for r in records]).matrix

    return decoded


def _co_hosted() -> Callable[[Sequence[dict[str, float]]], list[Any]]:
    """The three demo models scored as one co-hosting worker scores them."""
    from services.model_worker.settings import WorkerSettings
    from services.model_worker.worker import hosted_models, score_co_hosted

    settings = WorkerSettings(model="demo:champion", co_host=("challenger=demo:challenger", "canary=demo:canary"))
    settings.validate()
    hosted = hosted_models(settings, "bench-1")
    return lambda rows: [s for _h, scored in score_co_hosted(hosted, rows) for s in scored]


def _one_model(model: Any, score_batch: Callable[..., list[Any]]) -> Callable[[Sequence[dict[str, float]]], list[Any]]:
    return lambda rows: score_batch(model, rows)


def measure(models: Sequence[str], batches: Sequence[int], min_reps: int, min_s: float, gap_s: float) -> dict[str, Any]:
    import numpy as np

    import services
    from services.client.client import make_request
    from services.core.codec import codec
    from services.model_worker.models import demo_rows, load_model
    from services.model_worker.worker import score_batch

    encode = _encoder()
    read = _reader(tuple(demo_rows(1)[0]))  # the demo models all read the demo's features, in order
    request_codec = codec("request")
    results: dict[str, Any] = {"services": str(Path(services.__file__).parent), "rows": []}
    for name in models:
        score = _co_hosted() if name == "co-hosted" else _one_model(load_model(f"demo:{name}"), score_batch)
        for n in batches:
            rows = demo_rows(n, seed=n)
            requests = [{"request_id": f"r-{i}", "deadline": 1_700_000_000_000 + i, "features": r}
                        for i, r in enumerate(rows)]
            values = [request_codec.encode(make_request(r, budget_ms=200, reply_topic=None, reply_partition=None))
                      for r in rows]
            scored = score(rows)
            assert all(s.error is None for s in scored), scored[0].error
            parts = {"read": _timings(lambda v=values: read(v), min_reps, min_s, gap_s),
                     "score": _timings(lambda r=rows, f=score: f(r), min_reps, min_s, gap_s)}
            if name != "co-hosted":
                parts["encode"] = _timings(lambda q=requests, s=scored: encode(q, s), min_reps, min_s, gap_s)
            for part, times in parts.items():
                p50, p99 = np.percentile(times, [50, 99])
                results["rows"].append({"model": name, "batch": n, "part": part, "reps": len(times),
                                        "p50_us": float(p50), "p99_us": float(p99)})
    return results


# ----- the parent: runs the children and prints the table ------------------------------------
def _child(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "RDV_SCHEMA_DIR": str(tree / "schemas")}
    command = [sys.executable, str(HERE), "--child", "--models", ",".join(args.models),
               "--batches", ",".join(map(str, args.batches)), "--min-reps", str(args.min_reps),
               "--min-s", str(args.min_s), "--gap-ms", str(args.gap_ms)]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"measuring {tree} failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout)
    if Path(result["services"]).resolve() != (tree / "services").resolve():
        raise SystemExit(f"the child imported {result['services']}, not {tree}/services")
    return result


def _key(row: dict[str, Any]) -> tuple[str, int, str]:
    return row["model"], row["batch"], row["part"]


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over the runs (one run: itself)."""
    import statistics

    rows = []
    for first in runs[0]["rows"]:
        same = [next(r for r in run["rows"] if _key(r) == _key(first)) for run in runs]
        rows.append({**first, "p50_us": statistics.median(r["p50_us"] for r in same),
                     "p99_us": statistics.median(r["p99_us"] for r in same)})
    return {"services": runs[0]["services"], "rows": rows, "rounds": len(runs)}


def _print(current: dict[str, Any], baseline: dict[str, Any] | None, gap_ms: float) -> None:
    sys.path.insert(0, str(HERE.parents[1]))
    from bench.common import print_table, ratio

    base = {_key(r): r for r in baseline["rows"]} if baseline else {}
    headers = ["model", "batch", "part", "p50 µs", "p99 µs", "µs/row"]
    if baseline:
        headers += ["base p50", "base p99", "p50 ratio", "p99 ratio"]
    table = []
    for row in current["rows"]:
        line = [row["model"], row["batch"], row["part"], row["p50_us"], row["p99_us"], row["p50_us"] / row["batch"]]
        if baseline:
            b = base[_key(row)]
            line += [b["p50_us"], b["p99_us"], ratio(row["p50_us"], b["p50_us"]), ratio(row["p99_us"], b["p99_us"])]
        table.append(line)
    gap = f", {gap_ms:g} ms asleep before each call" if gap_ms else ", back to back"
    title = f"model worker scoring path, per batch{gap} (current / baseline ratio < 1 = faster now)"
    print_table(title, headers, table, digits=2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=list(BATCHES))
    parser.add_argument("--min-reps", type=int, default=200, help="repetitions per figure, at least")
    parser.add_argument("--min-s", type=float, default=0.5, help="seconds per figure, at least")
    parser.add_argument("--gap-ms", type=float, default=0.0,
                        help="sleep this long before each timed call (5 = the gap between requests at 200 req/s)")
    parser.add_argument("--baseline", type=Path, help="a checkout of the version to compare with")
    parser.add_argument("--rounds", type=int, default=1, help="alternate baseline and current this many times")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.gap_ms < 0:
        parser.error(f"--gap-ms must be >= 0, got {args.gap_ms:g}")
    if args.child:
        print(json.dumps(measure(args.models, args.batches, args.min_reps, args.min_s, args.gap_ms / 1000.0)))
        return 0
    tree = HERE.parents[1]
    baselines, currents = [], []
    for _ in range(args.rounds):
        if args.baseline:
            baselines.append(_child(args.baseline.resolve(), args))
        currents.append(_child(tree, args))
    current = _median(currents)
    baseline = _median(baselines) if baselines else None
    _print(current, baseline, args.gap_ms)
    if args.json:
        Path(args.json).write_text(json.dumps({"current": current, "baseline": baseline}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
