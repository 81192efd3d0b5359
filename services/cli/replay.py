"""`rendezvous replay`: run a model over recorded requests and compare it with the champion.

The requests come from the requests topic (a time or offset range) or from the decoy's
archive (a time range; it outlives the topic's retention). The model scores them in
batches in this process; the champion's outputs are what the rendezvous logged at the time
(rdv.log). The result is the same report as `rendezvous compare`, with the replayed model as
one more row. Nothing is written to Kafka: a replay can never touch production answers.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from services.compare_report import Report, summarize_records
from services.compare_report.table import print_report, print_report_json
from services.core.codec import codec
from services.core.errors import BadInput, ConfigError
from services.core.ranges import OffsetBound, TimeBound, parse_bounds
from services.core.requests import check_request
from services.core.runtime import now_ms
from services.core.settings import KafkaSettings, check_format, setting
from services.core.topic_range import read_spans
from services.model_worker.models import Model, load_model
from services.model_worker.settings import trust_model_file_setting
from services.model_worker.worker import score_batch

# How far before the earliest request's created_at the log is read (see `replay`): a client's
# clock up to a minute ahead of the rendezvous', and a minute more for what is logged late.
LOG_MARGIN_MS = 120_000


@dataclass(frozen=True)
class ReplaySettings(KafkaSettings):
    """Score recorded requests with a model; nothing is written to Kafka."""

    model: str = setting("", "Model spec to replay (demo:challenger, pkg.module:factory, model.joblib, ...).")
    name: str = setting("", "Name of the replayed model in the report (default: <model name>-replay).")
    source: str = setting("topic", "Where the requests come from: topic (the requests topic) or archive.")
    archive_dir: str = setting("", "The decoy's archive directory (with --source archive).")
    since: str = setting("", "Replay the last ... of requests, e.g. 10m (request record time).")
    from_: str = setting("", "Start: ISO time, epoch ms, or offset:N (topic only).", flag="--from", env="RDV_FROM")
    to: str = setting("", "End (exclusive): ISO time, epoch ms, or offset:N (topic only).")
    champion: str = setting("", "Champion to compare against (default: inferred from the log).")
    html: str = setting("", "Also write an HTML report with plots to this file.")
    batch: int = setting(1000, "Requests per model batch.")
    format: str = setting("table", "Output: table (for people) or json (for scripts).")
    trust_model_file: bool = trust_model_file_setting()

    def validate(self) -> None:
        check_format(self.format)
        if not self.model:
            raise ConfigError("replay needs --model SPEC")
        if self.source not in ("topic", "archive"):
            raise ConfigError(f"--source must be topic or archive, got {self.source!r}")
        if self.source == "archive" and not self.archive_dir:
            raise ConfigError("--source archive needs --archive-dir DIR")
        if self.batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {self.batch}")


@dataclass
class ReplayResult:
    report: Report
    requests: int
    undecodable: int
    without_log: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else float("nan")


def _requests_from_topic(settings: ReplaySettings) -> Iterator[bytes | None]:
    bounds = parse_bounds(settings.since, settings.from_, settings.to, now_ms())
    start, end = bounds.start, bounds.end
    for msg in read_spans(
        settings.librdkafka(), settings.topics().requests, timeout_s=600,
        start_ms=start.ms if isinstance(start, TimeBound) else None,
        end_ms=end.ms if isinstance(end, TimeBound) else None,
        start_offset=start.offset if isinstance(start, OffsetBound) else None,
        end_offset=end.offset if isinstance(end, OffsetBound) else None,
    ):
        yield msg.value()


def _requests_from_archive(settings: ReplaySettings) -> Iterator[bytes | None]:
    from services.decoy.archive import iter_archive

    bounds = parse_bounds(settings.since, settings.from_, settings.to, now_ms())
    if isinstance(bounds.start, OffsetBound) or isinstance(bounds.end, OffsetBound):
        raise ConfigError("--source archive takes time bounds only (offsets belong to the topic)")
    start = bounds.start.ms if isinstance(bounds.start, TimeBound) else None
    end = bounds.end.ms if isinstance(bounds.end, TimeBound) else None
    for record in iter_archive(Path(settings.archive_dir), from_ms=start, to_ms=end):
        yield record["value"]


def recorded_requests(settings: ReplaySettings) -> Iterator[bytes | None]:
    """The raw request values of the range, as every model saw them."""
    source = _requests_from_archive if settings.source == "archive" else _requests_from_topic
    return source(settings)


def _logged_outputs(settings: ReplaySettings, ids: set[str], start_ms: int) -> dict[str, dict[str, Any]]:
    """The comparison records the rendezvous wrote for these requests."""
    log_codec = codec("comparison")
    found: dict[str, dict[str, Any]] = {}
    for msg in read_spans(settings.librdkafka(), settings.topics().log, start_ms=start_ms, timeout_s=600):
        try:
            record = log_codec.decode(msg.value())
        except BadInput:
            continue
        if record["request_id"] in ids:
            found[record["request_id"]] = record
    return found


def _score(model: Model, requests: list[dict[str, Any]], batch: int) -> Iterator[dict[str, Any]]:
    """The replayed model's output per request, in Comparison ModelOutput form."""
    for start in range(0, len(requests), batch):
        chunk = requests[start:start + batch]
        for scored in score_batch(model, [r["features"] for r in chunk]):
            prediction = scored.prediction
            yield {
                "score": prediction.score if prediction else None,
                "label": prediction.label if prediction else None,
                "error": scored.error,
                # No network in a replay: the output's latency is the model's time per request.
                "latency_ms": scored.compute_ms / max(1, len(chunk)),
                "compute_ms": scored.compute_ms,
                "late": False,
            }


def replay(settings: ReplaySettings, requests: Iterable[bytes | None] | None = None) -> ReplayResult:
    """Score the recorded requests and build the report (the CLI prints it)."""
    started = time.perf_counter()
    model = load_model(settings.model, trust_model_file=settings.trust_model_file)
    name = settings.name or f"{model.name}-replay"
    decoded, undecodable = _decode(requests if requests is not None else recorded_requests(settings))
    if not decoded:
        raise ConfigError("no requests in that range: nothing to replay")
    # Each request once: a retry of an id (the same request again) is one request of the log.
    decoded = list({r["request_id"]: r for r in reversed(decoded)}.values())[::-1]
    # The log's records are stamped by the rendezvous' clock, a request's created_at by its client's,
    # which may run up to a minute ahead (the rendezvous accepts that much): read from before it.
    first_created = min(r["created_at"] for r in decoded) - LOG_MARGIN_MS
    logged = _logged_outputs(settings, {r["request_id"] for r in decoded}, max(0, first_created))
    records = []
    for request, output in zip(decoded, _score(model, decoded, settings.batch), strict=True):
        past = logged.get(request["request_id"])
        records.append(_comparison(request, past, {"model": name, "version": model.version, **output}))
    without_log = sum(r["request_id"] not in logged for r in decoded)
    notes = (f"{without_log:,} of these requests have no comparison record in the log: shown as TIMEOUT "
             "'not in the log', their real answers unknown",) if without_log else ()
    report = summarize_records(records, champion=settings.champion or None, notes=notes,
                               source=f"replay of {len(decoded):,} requests ({settings.source}) through {name}")
    return ReplayResult(report, len(decoded), undecodable, without_log, time.perf_counter() - started)


def _decode(values: Iterable[bytes | None]) -> tuple[list[dict[str, Any]], int]:
    request_codec = codec("request")
    decoded, bad = [], 0
    for value in values:
        try:
            request = request_codec.decode(value)
            check_request(request)  # the rule every worker applies: a created_at <= 0 is no request
            decoded.append(request)
        except BadInput:
            bad += 1
    return decoded, bad


def _comparison(request: dict[str, Any], past: dict[str, Any] | None, replayed: dict[str, Any]) -> dict[str, Any]:
    """The logged record with the replayed output added (or a record with only that output)."""
    if past is not None:
        return {**past, "outputs": [o for o in past["outputs"] if o["model"] != replayed["model"]] + [replayed]}
    return {
        "request_id": request["request_id"], "created_at": request["created_at"], "deadline": request["deadline"],
        "answered_at": None, "status": "TIMEOUT", "chosen_model": None, "reason": "not in the log",
        "schedule": "", "schedule_version": 0, "outputs": [replayed],
    }


def run_replay(settings: ReplaySettings, console: Console) -> int:
    err = Console(stderr=True)
    with err.status("replaying ..."):
        result = replay(settings)
    if settings.format == "json":
        print_report_json(result.report)
    else:
        print_report(result.report, console)
    err.print(f"{result.requests:,} requests replayed in {result.seconds:.1f}s ({result.rate:,.0f}/s); "
              f"{result.undecodable} undecodable skipped; {result.without_log} had no comparison record")
    if settings.html:
        from services.compare_report.html import write_html

        err.print(f"HTML report written to {write_html(dataclasses.replace(result.report), settings.html)}")
    return 0
