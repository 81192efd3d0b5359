"""`rendezvous replay`: run a model over recorded requests and compare it with the champion.

The requests come from the requests topic (a time or offset range) or from the decoy's
archive (a time range; it outlives the topic's retention). The model scores them in
batches in this process; the champion's outputs are what the rendezvous logged at the time
(rdv.log). The result is the same report as `rendezvous compare`, with the replayed model as
one more row. Nothing is written to Kafka: a replay can never touch production answers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console

from services.cli.common import messages
from services.compare_report import Report
from services.compare_report.columns import Columns
from services.compare_report.summary import answers, summarize
from services.compare_report.table import print_report, print_report_json
from services.core.codec import codec
from services.core.compiled_requests import decode_request
from services.core.errors import BadInput, ConfigError
from services.core.kafka import partition_counts
from services.core.ranges import Bounds, OffsetBound, TimeBound, parse_bounds
from services.core.requests import check_request
from services.core.runtime import now_ms
from services.core.settings import KafkaSettings, check_format, check_writable_file, setting
from services.core.topic_range import read_spans
from services.model_worker.models import Model, load_model
from services.model_worker.models.loader import check_spec
from services.model_worker.settings import trust_model_file_setting
from services.model_worker.worker import score_batch

log = logging.getLogger(__name__)
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
    batch: int = setting(1000, "Requests per model batch.", minimum=1)
    format: str = setting("table", "Output: table (for people) or json (for scripts).")
    trust_model_file: bool = trust_model_file_setting()

    def validate(self) -> None:
        check_format(self.format)
        if not self.model:
            raise ConfigError("replay needs --model SPEC")
        # Said before the broker is asked for the range (a probe: 'demo:nope' ended with 'no Kafka broker answered').
        check_spec(self.model, trust_model_file=self.trust_model_file)
        if self.source not in ("topic", "archive"):
            raise ConfigError(f"--source must be topic or archive, got {self.source!r}")
        if self.source == "archive" and not self.archive_dir:
            raise ConfigError("--source archive needs --archive-dir DIR")
        if self.archive_dir and self.source != "archive":
            if not self.from_environment("archive_dir"):  # typed: the topic was replayed, it ignored (a probe)
                raise ConfigError("--archive-dir is read with --source archive only (the default source is the topic)")
            # The decoy's pod sets RDV_ARCHIVE_DIR for the decoy (deploy/helm): a replay of the topic
            # run there was refused for a flag nobody typed.
            log.info("RDV_ARCHIVE_DIR is set (%s) but read with --source archive only: replaying the requests "
                     "topic", self.archive_dir)
        if self.html:
            check_writable_file(self.html, "--html")
        # Said now, before the model loads (seconds, for some), not when the range is first read.
        bounds = parse_bounds(self.since, self.from_, self.to, now_ms())
        if self.source == "archive" and OffsetBound in (type(bounds.start), type(bounds.end)):
            raise ConfigError("--source archive takes time bounds only (offsets belong to the topic)")
        if self.source == "archive":
            from services.decoy.archive import check_archive

            try:  # said once the broker was reached and the model loaded, before
                check_archive(Path(self.archive_dir))
            except ConfigError as err:
                raise ConfigError(f"--archive-dir {err}") from None


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


def _requests_from_topic(settings: ReplaySettings, bounds: Bounds) -> Iterator[bytes | None]:
    start, end = bounds.start, bounds.end
    for msg in read_spans(
        settings.librdkafka(), settings.topics().requests, timeout_s=600,
        start_ms=start.ms if isinstance(start, TimeBound) else None,
        end_ms=end.ms if isinstance(end, TimeBound) else None,
        start_offset=start.offset if isinstance(start, OffsetBound) else None,
        end_offset=end.offset if isinstance(end, OffsetBound) else None,
    ):
        yield msg.value()


def _requests_from_archive(settings: ReplaySettings, bounds: Bounds) -> Iterator[bytes | None]:
    from services.decoy.archive import iter_archive

    if isinstance(bounds.start, OffsetBound) or isinstance(bounds.end, OffsetBound):
        raise ConfigError("--source archive takes time bounds only (offsets belong to the topic)")
    start = bounds.start.ms if isinstance(bounds.start, TimeBound) else None
    end = bounds.end.ms if isinstance(bounds.end, TimeBound) else None
    for record in iter_archive(Path(settings.archive_dir), from_ms=start, to_ms=end):
        yield record["value"]


def recorded_requests(settings: ReplaySettings, bounds: Bounds) -> Iterator[bytes | None]:
    """The raw request values of the range, as every model saw them."""
    source = _requests_from_archive if settings.source == "archive" else _requests_from_topic
    return source(settings, bounds)


class Replayed(NamedTuple):
    """What a replay keeps of one request once scored (its features are not kept: a range of
    millions of requests would not fit in memory otherwise)."""

    created_at: int
    deadline: int
    output: tuple[float | None, str | None, str | None, float, float]  # score, label, error, latency, compute ms


Progress = Callable[[str], None]


def _quiet(_what: str) -> None:
    return None


def _scored_requests(
    model: Model, values: Iterable[bytes | None], batch: int, progress: Progress = _quiet
) -> tuple[dict[str, Replayed], int]:
    """Every request of `values` scored, in batches as they are read, each id once (a retry of an
    id is one request of the log: the first is kept); and how many values were no request."""
    request_codec = codec("request")
    replayed: dict[str, Replayed] = {}
    pending: dict[str, dict[str, Any]] = {}
    bad = 0
    for value in values:
        request = _request(request_codec, value)
        if request is None:
            bad += 1
        elif request["request_id"] not in replayed and request["request_id"] not in pending:
            pending[request["request_id"]] = request
            if len(pending) >= batch:
                _score_into(replayed, model, pending)
                progress(f"{len(replayed):,} requests scored")
    _score_into(replayed, model, pending)
    return replayed, bad


def _request(request_codec: Any, value: bytes | None) -> dict[str, Any] | None:
    try:
        request: dict[str, Any] = decode_request(request_codec, value)  # refused where live workers refuse it
        check_request(request)  # the rule every worker applies: a created_at <= 0 is no request
        return request
    except BadInput:
        return None


def _score_into(replayed: dict[str, Replayed], model: Model, pending: dict[str, dict[str, Any]]) -> None:
    requests = list(pending.values())
    pending.clear()
    for request, scored in zip(requests, score_batch(model, [r["features"] for r in requests]), strict=True):
        prediction = scored.prediction
        # No network in a replay: the output's latency is the model's time per request.
        output = (prediction.score if prediction else None, prediction.label if prediction else None, scored.error,
                  scored.compute_ms / max(1, len(requests)), scored.compute_ms)
        replayed[request["request_id"]] = Replayed(request["created_at"], request["deadline"], output)


def _log_records(settings: ReplaySettings, start_ms: int, progress: Progress = _quiet) -> Iterator[dict[str, Any]]:
    """The comparison records the rendezvous wrote from `start_ms` on."""
    log_codec = codec("comparison")
    total = 0

    def read(count: int) -> None:  # told per fetch: the line says the running total
        nonlocal total
        total += count
        progress(f"log: {total:,} records read")

    for msg in read_spans(settings.librdkafka(), settings.topics().log, start_ms=start_ms, timeout_s=600,
                          progress=read):
        try:
            yield log_codec.decode(msg.value())
        except BadInput:
            continue


def check_log_readable(settings: ReplaySettings) -> None:
    """The broker answers and the log topic is there: said in one line within --connect-timeout-s,
    before the model loads. An archive replay met the broker first after scoring every request
    (hours of a real model's work, for a `--since 7d`), and lost it all to a wrong --bootstrap."""
    partition_counts(settings.librdkafka(), [settings.topics().log], settings.connect_timeout_s)


def check_name_free(settings: ReplaySettings) -> None:
    """A --name of a live model (one that publishes its contract) is refused before the scoring:
    found in the log only after it, it threw hours of a real model's work away. A name that is in
    the log but no longer published is still found there."""
    from services.core.errors import RendezvousError
    from services.core.model_info import read_model_infos

    if not settings.name:
        return
    try:
        live = read_model_infos(settings.librdkafka(), settings.topics().models, timeout_s=settings.connect_timeout_s)
    except RendezvousError as err:  # a check ahead of the one on the log: never a reason to stop
        log.debug("models topic not read: %s", err)
        return
    if settings.name in live:
        raise ConfigError(f"--name {settings.name}: a live model has that name, and the log holds its outputs; give "
                          "the replayed model a name of its own")


def replay(
    settings: ReplaySettings, requests: Iterable[bytes | None] | None = None, progress: Progress = _quiet
) -> ReplayResult:
    """Score the recorded requests and build the report (the CLI prints it)."""
    started = time.perf_counter()
    check_log_readable(settings)
    check_name_free(settings)
    model = load_model(settings.model, trust_model_file=settings.trust_model_file)
    name = settings.name or f"{model.name}-replay"
    bounds = parse_bounds(settings.since, settings.from_, settings.to, now_ms())  # once: --since is relative
    values = requests if requests is not None else recorded_requests(settings, bounds)
    replayed, undecodable = _scored_requests(model, values, settings.batch, progress)
    if not replayed:
        if undecodable:
            raise ConfigError(f"none of the {undecodable:,} records in that range is a request this command can "
                              "read (registry-framed ones need --schema-registry): nothing to replay")
        raise ConfigError("no requests in that range: nothing to replay")
    total = len(replayed)
    # The log's records are stamped by the rendezvous' clock, a request's created_at by its client's,
    # which may run up to a minute ahead (the rendezvous accepts that much): read from before it.
    # Not from before the range's own start: a request's created_at is the client's to set, and one
    # stamped 1 had the whole retained log read and decoded (a review).
    first_created = min(r.created_at for r in replayed.values())
    if isinstance(bounds.start, TimeBound):
        first_created = max(first_created, bounds.start.ms)
    first_created -= LOG_MARGIN_MS
    version = model.version
    logged = (_comparison(past["request_id"], past, replayed.pop(past["request_id"]), name, version)
              for past in _log_records(settings, max(0, first_created), progress)
              if past["request_id"] in replayed)  # the first record of an id; a later one finds it gone
    columns = Columns()
    columns.add(logged)  # streamed into columns: a record dict each would double the peak memory
    without_log = len(replayed)
    source = f"replay of {total:,} requests ({settings.source}) through {name}"
    # The answers line and the champion come from the logged requests alone: a request without a
    # record has no known answer, and counted as TIMEOUT it made the line read "answered by the
    # deadline: 0%" for a replay past the log's retention (a review). (frame() copies the columns.)
    answered = answers(columns.frame(), champion=settings.champion or None)
    columns.add(_comparison(request_id, None, r, name, version) for request_id, r in replayed.items())
    notes = [f"{name}'s latency and deadline figures are its model's compute time per request in batches of "
             f"--batch {settings.batch} in this process (no Kafka, no queue): not comparable with the live "
             "models' end-to-end latency"]
    if without_log:
        notes.append(f"{without_log:,} of these requests have no comparison record in the log: their real answers "
                     "unknown, they count in the models' figures only, not in the answers line")
    champion = answered.champion
    if not answered.records and settings.champion:
        # Nothing logged to measure against: said, after the scoring, not raised (it threw the
        # scoring away, blaming the name), and the replayed model itself may be named.
        champion = settings.champion if settings.champion == name else None
        if champion is None:
            notes.append(f"--champion {settings.champion}: none of the replayed requests has a record in the log "
                         f"(past its retention?), so only {name} is in the range: nothing to compare with")
    report = summarize(columns.frame(), champion=champion, notes=tuple(notes), source=source)
    source_of_champion = answered.champion_source if answered.records else report.champion_source
    report = dataclasses.replace(report, statuses=answered.statuses, answered_by_deadline=answered.answered_by_deadline,
                                 champion_source=source_of_champion)
    return ReplayResult(report, total, undecodable, without_log, time.perf_counter() - started)


def _comparison(
    request_id: str, past: dict[str, Any] | None, replayed: Replayed, name: str, version: str
) -> dict[str, Any]:
    """The logged record with the replayed output added (or a record with only that output)."""
    score, label, error, latency_ms, compute_ms = replayed.output
    output = {"model": name, "version": version, "score": score, "label": label, "error": error,
              "latency_ms": latency_ms, "compute_ms": compute_ms, "late": False}
    if past is not None:
        if any(o["model"] == name for o in past["outputs"]):
            # Its figures would be the replay's, the live model's left out: "champion" compared
            # every challenger with the replayed model, silently.
            raise ConfigError(f"--name {name}: the log already holds outputs of a model of that name; give the "
                              "replayed model a name of its own")
        return {**past, "outputs": [*past["outputs"], output]}
    return {
        "request_id": request_id, "created_at": replayed.created_at, "deadline": replayed.deadline,
        "answered_at": None, "status": "TIMEOUT", "chosen_model": None, "reason": "not in the log",
        "schedule": "", "schedule_version": 0, "outputs": [output],
    }


def run_replay(settings: ReplaySettings, console: Console) -> int:
    err = messages()
    with err.status("replaying ...") as status:
        result = replay(settings, progress=lambda what: status.update(f"replaying: {what}"))
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
