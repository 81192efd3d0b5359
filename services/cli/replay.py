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
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rich.console import Console

from services.cli.common import messages, write_output
from services.cli.shown import now_and_then
from services.compare_report import Report
from services.compare_report.columns import Columns
from services.compare_report.summary import Answers, ChampionNotInRange, answers, summarize
from services.compare_report.table import print_report, print_report_json
from services.control.schedule import DEFAULT_DEADLINE_MS, MAX_LONG, check_schedule_name
from services.control.topic import ScheduleBook, load_book
from services.core.codec import codec
from services.core.compiled_requests import decode_request
from services.core.errors import BadInput, ConfigError, RendezvousError, Stopped, interrupted_status
from services.core.id_lookup import decoded_when_readable
from services.core.kafka import partition_counts
from services.core.ranges import Bounds, OffsetBound, TimeBound, format_ms, parse_bounds
from services.core.requests import check_request
from services.core.runtime import WindUp, now_ms, wind_up_on_first_signal
from services.core.settings import KafkaSettings, check_format, check_writable_file, setting
from services.core.signatures import Signature
from services.core.terminal import printable
from services.core.topic_range import read_spans
from services.model_worker.models import Model, load_model
from services.model_worker.models.base import model_signature
from services.model_worker.models.loader import check_spec
from services.model_worker.settings import (
    extra_features_policy,
    ignore_extra_features_setting,
    trust_model_file_setting,
)
from services.model_worker.worker import score_batch

if TYPE_CHECKING:
    from services.decoy.archive import Gap

log = logging.getLogger(__name__)
# How far before the earliest request's append time the log is read (see `replay`): the broker's
# clock that stamped the request and the rendezvous' that stamped its record may differ that much.
LOG_MARGIN_MS = 120_000
# How long after the last request's append time the log is read for its records: a request is
# logged once its deadline (at most a minute, by default) and linger are past, or later if no
# rendezvous ran meanwhile; the read stops sooner once every request found its record.
LOG_TAIL_MS = 3_600_000


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
    schedule_name: str = setting("default", "The schedule whose default budget a request without a deadline of "
                                            "its own had, for the requests the log has no record of.")
    html: str = setting("", "Also write an HTML report with plots to this file.")
    batch: int = setting(1000, "Requests per model batch.", minimum=1)
    format: str = setting("table", "Output: table (for people) or json (for scripts).")
    trust_model_file: bool = trust_model_file_setting()
    ignore_extra_features: bool = ignore_extra_features_setting()

    def validate(self) -> None:
        check_format(self.format)
        check_schedule_name(self.schedule_name, "--schedule-name")
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
    stopped_by: int | None = None  # the signal that asked it to stop before the end, if one did

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else float("nan")


class Recorded(NamedTuple):
    """A record of the range as every model saw it: its bytes, and where and when the log took it."""

    value: bytes | None
    log_time: int  # its timestamp on the requests topic: the broker's append time (LogAppendTime)
    partition: int


@dataclass
class Skipped:
    """Archived records of the range left out: those of another topic than this deployment's
    requests; the gaps the archive names that may hold some of the range's requests; and its
    files left unread ("name: why": damaged, missing, still being written, not in the manifest)."""

    topics: Counter[str] = dataclasses.field(default_factory=Counter)
    gaps: list[Gap] = dataclasses.field(default_factory=list)
    files: list[str] = dataclasses.field(default_factory=list)
    retained_from: list[int] = dataclasses.field(default_factory=list)  # given by iter_archive

    def retention(self) -> int | None:
        """When the decoy's retention had deleted requests up to as the files were listed, if the
        range starts before then (files it deleted while they were read are named in `files`)."""
        return self.retained_from[0] if self.retained_from else None


def _requests_from_topic(settings: ReplaySettings, bounds: Bounds, _skipped: Skipped) -> Iterator[Recorded]:
    start, end = bounds.start, bounds.end
    for msg in read_spans(
        settings.librdkafka(), settings.topics().requests, timeout_s=600,
        start_ms=start.ms if isinstance(start, TimeBound) else None,
        end_ms=end.ms if isinstance(end, TimeBound) else None,
        start_offset=start.offset if isinstance(start, OffsetBound) else None,
        end_offset=end.offset if isinstance(end, OffsetBound) else None,
    ):
        yield Recorded(msg.value(), msg.timestamp()[1], msg.partition() or 0)


def _requests_from_archive(settings: ReplaySettings, bounds: Bounds, skipped: Skipped) -> Iterator[Recorded]:
    """The archive's records of the range that came from this deployment's requests topic: a decoy
    pointed at another prefix's topic may have archived into the same directory (they were
    replayed as this one's, and counted as having no comparison record; a review)."""
    from services.decoy.archive import iter_archive, read_gaps

    if isinstance(bounds.start, OffsetBound) or isinstance(bounds.end, OffsetBound):
        raise ConfigError("--source archive takes time bounds only (offsets belong to the topic)")
    start = bounds.start.ms if isinstance(bounds.start, TimeBound) else None
    end = bounds.end.ms if isinstance(bounds.end, TimeBound) else None
    topic = settings.topics().requests
    # A gap's records were appended before it was noticed: one noticed before the range holds none of it.
    skipped.gaps = [gap for gap in read_gaps(Path(settings.archive_dir))
                    if gap.topic == topic and (start is None or gap.noticed_at >= start)]
    for record in iter_archive(Path(settings.archive_dir), from_ms=start, to_ms=end, unread=skipped.files,
                               retained=skipped.retained_from):
        if record["topic"] != topic:
            skipped.topics[record["topic"]] += 1
            continue
        yield Recorded(record["value"], record["timestamp"], record["partition"])


def recorded_requests(settings: ReplaySettings, bounds: Bounds, skipped: Skipped) -> Iterator[Recorded]:
    """The request records of the range, as every model saw them."""
    source = _requests_from_archive if settings.source == "archive" else _requests_from_topic
    return source(settings, bounds, skipped)


class Replayed(NamedTuple):
    """What a replay keeps of one request once scored (its features are not kept: a range of
    millions of requests would not fit in memory otherwise)."""

    created_at: int
    deadline: int
    output: tuple[float | None, str | None, str | None, float, float]  # score, label, error, latency, compute ms


Progress = Callable[[str], None]


def _quiet(_what: str) -> None:
    return None


@dataclass
class Scored:
    """The requests of a range scored, and what the range held."""

    replayed: dict[str, Replayed] = dataclasses.field(default_factory=dict)
    undecodable: int = 0  # records that were no request
    first_at: int | None = None  # the earliest and latest append time of a request scored
    last_at: int | None = None
    partitions: set[int] = dataclasses.field(default_factory=set)  # of the requests topic, with a request
    stopped_at: int | None = None  # the append time of the last record read, when asked to stop before the end

    def took(self, record: Recorded) -> None:
        at = record.log_time
        self.first_at = at if self.first_at is None else min(self.first_at, at)
        self.last_at = at if self.last_at is None else max(self.last_at, at)
        self.partitions.add(record.partition)


def replayed_contract(model: Model, settings: ReplaySettings) -> Signature:
    """What rows are checked against, as the live worker checks them: a model run with
    --ignore-extra-features scores the requests that carry other models' features, which a replay
    without the flag failed, every one (a review)."""
    return model_signature(model, extra_features_policy(settings.ignore_extra_features))


def _scored_requests(
    model: Model, records: Iterable[Recorded], batch: int, progress: Progress = _quiet, wind_up: WindUp | None = None,
    signature: Signature | None = None,
) -> Scored:
    """Every request of `records` scored, in batches as they are read, each id once (a retry of an
    id is one request of the log: the first is kept), with how many records were no request. Asked
    to stop (`wind_up`), the requests read so far are scored and the rest of the range is not read.
    `signature`: the contract rows are checked against (default: the model's, extra features refused)."""
    request_codec = codec("request")
    scored = Scored()
    pending: dict[str, dict[str, Any]] = {}
    for record in records:
        if wind_up is not None:
            if wind_up.asked:
                scored.stopped_at, wind_up.cut = record.log_time, True
                break
            wind_up.armed = True  # a signal before the first record stops the command at once
        request = _request(request_codec, record.value)
        if request is None:
            scored.undecodable += 1
        elif request["request_id"] not in scored.replayed and request["request_id"] not in pending:
            scored.took(record)
            pending[request["request_id"]] = request
            if len(pending) >= batch:
                _score_into(scored.replayed, model, pending, signature)
                progress(f"{len(scored.replayed):,} requests scored")
    _score_into(scored.replayed, model, pending, signature)
    return scored


def _request(request_codec: Any, value: bytes | None) -> dict[str, Any] | None:
    try:
        # Refused where live workers refuse it; waited for while the registry cannot be read yet.
        request: dict[str, Any] = decoded_when_readable(lambda v: decode_request(request_codec, v), value)
        check_request(request)  # the rule every worker applies: a created_at <= 0 is no request
        return request
    except BadInput:
        return None


def _score_into(
    replayed: dict[str, Replayed], model: Model, pending: dict[str, dict[str, Any]], signature: Signature | None
) -> None:
    requests = list(pending.values())
    pending.clear()
    rows = [r["features"] for r in requests]
    for request, scored in zip(requests, score_batch(model, rows, signature), strict=True):
        prediction = scored.prediction
        # No network in a replay: the output's latency is the model's time per request.
        output = (prediction.score if prediction else None, prediction.label if prediction else None, scored.error,
                  scored.compute_ms / max(1, len(requests)), scored.compute_ms)
        replayed[request["request_id"]] = Replayed(request["created_at"], request["deadline"], output)


def _failure_note(name: str, replayed: Iterable[Replayed], total: int) -> list[str]:
    """What the replayed model's errors said, the most frequent first: its row counted them, and a
    model failing every request (features named otherwise than the requests') left no reason
    anywhere, in the table or the JSON (a review)."""
    errors = Counter(r.output[2] for r in replayed if r.output[2] is not None)
    if not errors:
        return []
    (first, count), others = errors.most_common(1)[0], len(errors) - 1
    more = f"; {others:,} other error text(s)" if others else ""
    return [f"{name} failed {sum(errors.values()):,} of {total:,} requests: {count:,} with {first[:300]!r}{more}"]


def _log_records(
    settings: ReplaySettings, start_ms: int, end_ms: int, progress: Progress = _quiet
) -> Generator[dict[str, Any], None, None]:
    """The comparison records the rendezvous wrote from `start_ms` to `end_ms`."""
    log_codec = codec("comparison")
    total = 0

    def read(count: int) -> None:  # told per fetch: the line says the running total
        nonlocal total
        total += count
        progress(f"log: {total:,} records read")

    for msg in read_spans(settings.librdkafka(), settings.topics().log, start_ms=start_ms, end_ms=end_ms,
                          timeout_s=600, progress=read):
        try:
            yield decoded_when_readable(log_codec.decode, msg.value())
        except BadInput:
            continue


def check_log_readable(settings: ReplaySettings) -> None:
    """The broker answers and the log topic is there: said in one line within --connect-timeout-s,
    before the model loads. An archive replay met the broker first after scoring every request
    (hours of a real model's work, for a `--since 7d`), and lost it all to a wrong --bootstrap."""
    partition_counts(settings.librdkafka(), [settings.topics().log], settings.connect_timeout_s)


def check_name_free(settings: ReplaySettings, live: frozenset[str] | None = None) -> None:
    """A --name of a live model (one that publishes its contract; `live`, read if not given) is
    refused before the scoring: found in the log only after it, it threw hours of a real model's
    work away. A name that is in the log but no longer published is still found there."""
    if settings.name and settings.name in (_live_models(settings) if live is None else live):
        raise ConfigError(f"--name {settings.name}: a live model has that name, and the log holds its outputs; give "
                          "the replayed model a name of its own")


def note_champion_not_live(settings: ReplaySettings, live: frozenset[str] | None = None) -> None:
    """Said before the scoring: a mistyped --champion was found only once every request was scored.
    Not refused: a champion undeployed since answered the range all the same."""
    if not settings.champion:
        return
    live = _live_models(settings) if live is None else live
    if live and settings.champion not in live:
        log.warning("--champion %s is no live model (live: %s); if it answered none of the range, the report "
                    "compares with the champion it infers", printable(settings.champion), ", ".join(sorted(live)))


def _live_models(settings: ReplaySettings) -> frozenset[str]:
    """The models that publish their contract now; none if the topic cannot be read (these checks
    come ahead of the one on the log: never a reason to stop)."""
    from services.core.model_info import read_model_infos

    try:
        return frozenset(read_model_infos(settings.librdkafka(), settings.topics().models,
                                          timeout_s=settings.connect_timeout_s))
    except RendezvousError as err:
        log.debug("models topic not read: %s", err)
        return frozenset()


def replay(
    settings: ReplaySettings, requests: Iterable[Recorded] | None = None, progress: Progress = _quiet,
    wind_up: WindUp | None = None,
) -> ReplayResult:
    """Score the recorded requests and build the report (the CLI prints it). Asked to stop
    (`wind_up`: Ctrl-C, SIGTERM), it reports on what it did by then, and says so."""
    started = time.perf_counter()
    wind_up = wind_up or WindUp()
    check_log_readable(settings)
    live = _live_models(settings) if settings.name or settings.champion else frozenset()  # one read for both
    check_name_free(settings, live)
    note_champion_not_live(settings, live)
    model = load_model(settings.model, trust_model_file=settings.trust_model_file)
    name = settings.name or f"{model.name}-replay"
    bounds = parse_bounds(settings.since, settings.from_, settings.to, now_ms())  # once: --since is relative
    skipped = Skipped()
    records = requests if requests is not None else recorded_requests(settings, bounds, skipped)
    scored = _scored_requests(model, records, settings.batch, progress, wind_up, replayed_contract(model, settings))
    replayed = scored.replayed
    if wind_up.signum is not None and not replayed:
        raise Stopped(wind_up.signum)  # nothing to report on
    if not replayed or scored.first_at is None or scored.last_at is None:
        if scored.undecodable:
            hint = "" if settings.schema_registry else " (registry-framed ones need --schema-registry)"
            raise ConfigError(f"none of the {scored.undecodable:,} records in that range is a request this command "
                              f"can read{hint}: nothing to replay")
        retained_from = skipped.retention()
        gone = (f" (the decoy's retention deleted the archive's requests appended before "
                f"{format_ms(retained_from)})" if retained_from is not None else "")
        raise ConfigError(f"no requests in that range{gone}: nothing to replay")
    total = len(replayed)
    failures = _failure_note(name, replayed.values(), total)  # before the pairing takes them out
    # The log's records are stamped by the rendezvous' clock when it closed each request: read from
    # a margin before the first request's append time (the broker's: a request's created_at is its
    # client's to set, and one stamped 1 had the whole retained log read; a review) to an hour after
    # the last one's, and no further once every request found its record (it was read to its end).
    log_from, log_to = scored.first_at - LOG_MARGIN_MS, scored.last_at + LOG_TAIL_MS
    version = model.version
    with closing(_log_records(settings, max(0, log_from), log_to, progress)) as past_records:
        columns = Columns()
        # Streamed: a dict each would double the peak. Checked between records: a stop inside
        # `add` would leave its columns of unequal lengths.
        # Asked to stop while scoring, the log is still read for what was scored (a second signal
        # ends the command at once); asked first while it is read, its read stops there.
        stopped_scoring = wind_up.asked
        columns.add(_paired(past_records, replayed, name, version, None if stopped_scoring else wind_up))
    stopped_reading_log = wind_up.cut and not stopped_scoring
    without_log = len(replayed)
    source = f"replay of {total:,} requests ({settings.source}) through {name}"
    # The answers line and the champion come from the logged requests alone: a request without a
    # record has no known answer, and counted as TIMEOUT it made the line read "answered by the
    # deadline: 0%" for a replay past the log's retention (a review). (frame() copies the columns.)
    notes = [f"{name}'s latency and deadline figures are its model's compute time per request in batches of "
             f"--batch {settings.batch} in this process (no Kafka, no queue): not comparable with the live "
             "models' end-to-end latency"]
    answered, champion_missing = _answers(columns, settings.champion)
    notes += champion_missing
    budgets = _default_budgets(settings, replayed)
    columns.add(_comparison(request_id, None, r, name, version, budgets) for request_id, r in replayed.items())
    notes += _stopped_notes(scored, total, without_log, stopped_reading_log)
    if without_log and not stopped_reading_log:
        notes.append(f"{without_log:,} of these requests have no comparison record in the log up to "
                     f"{format_ms(log_to)} (an hour after the last one): their real answers unknown, they count in "
                     "the models' figures only, not in the answers line")
    notes += budgets.notes + _skipped_notes(settings, skipped, scored) + failures
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
    return ReplayResult(report, total, scored.undecodable, without_log, time.perf_counter() - started,
                        wind_up.signum if wind_up.cut else None)


def _stopped_notes(scored: Scored, total: int, without_log: int, stopped_reading_log: bool) -> list[str]:
    """What a replay asked to stop left out, said in its report."""
    notes = []
    if scored.stopped_at is not None:
        # Not "up to" that time: partitions are read side by side, each at its own pace (a fetch
        # may bring one partition's records alone), so others may have been read less far (a review).
        notes.append(f"stopped after {total:,} requests, the last record read appended {format_ms(scored.stopped_at)}: "
                     "this report covers part of the range (partitions are read side by side, each at its own "
                     "pace, so not all of it up to that time)")
    if stopped_reading_log and without_log:
        notes.append(f"stopped while the log was read: {without_log:,} of these requests were not looked up in it, "
                     "their real answers unknown; they count in the models' figures only, not in the answers line")
    return notes


def _paired(
    past_records: Iterable[dict[str, Any]], replayed: dict[str, Replayed], name: str, version: str,
    wind_up: WindUp | None = None,
) -> Iterator[dict[str, Any]]:
    """Each logged record of a replayed request with the replayed output added, taking the request
    out of `replayed` (the first record of an id; a later one finds it gone); the read stops once
    none is left, or once asked to stop."""
    for past in past_records:
        if wind_up is not None and wind_up.asked:
            wind_up.cut = True
            return
        found = replayed.pop(past["request_id"], None)
        if found is not None:
            yield _comparison(past["request_id"], past, found, name, version)
            if not replayed:
                return


def _answers(columns: Columns, champion: str) -> tuple[Answers, list[str]]:
    """The answers line and the champion of the logged requests; a --champion that names no model
    of them is said in a note, not raised: it threw away all the scoring (hours of a real model's)."""
    frame = columns.frame()  # a copy of the columns: made once
    try:
        return answers(frame, champion=champion or None), []
    except ChampionNotInRange as err:
        return answers(frame, champion=None), [f"{err.message}: compared with the champion inferred instead"]


@dataclass
class Budgets:
    """The deadline a request without one of its own had: its created_at plus the default budget of
    the schedule version in force then (as the rendezvous gives it), for the requests the log has
    no record of (a deadline of 0, kept as sent, counted every one as a miss for the replayed model;
    a review)."""

    book: ScheduleBook | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def deadline(self, created_at: int, deadline: int) -> int:
        if deadline > 0:
            return deadline
        budget = self.book.for_request(created_at).default_deadline_ms if self.book else DEFAULT_DEADLINE_MS
        return min(created_at + budget, MAX_LONG)  # an Avro long, as the rendezvous caps it (2^63 - 1 was sent)


def _default_budgets(settings: ReplaySettings, unlogged: dict[str, Replayed]) -> Budgets:
    """The schedule's budgets, read only when a request without a record has no deadline of its own."""
    without = sum(r.deadline <= 0 for r in unlogged.values())
    if not without:
        return Budgets()
    try:
        book = load_book(settings.librdkafka(), settings.topics().control, settings.schedule_name)
    except RendezvousError as err:
        log.debug("control topic not read: %s", err)
        book = None
    if book is None or book.latest is None:
        return Budgets(None, [f"{without:,} requests without a comparison record ask for no deadline of their own, "
                              f"and no schedule {settings.schedule_name!r} could be read to give them its budget: "
                              f"their deadline figures take {DEFAULT_DEADLINE_MS} ms"])
    return Budgets(book)


def _skipped_notes(settings: ReplaySettings, skipped: Skipped, scored: Scored) -> list[str]:
    """What an archive replay left out or could not cover, said."""
    if settings.source != "archive":
        return []
    topic = settings.topics().requests
    notes = []
    if skipped.topics:
        others = ", ".join(f"{t} ({n:,})" for t, n in skipped.topics.most_common(5))
        notes.append(f"{sum(skipped.topics.values()):,} archived records of other topics left out: {others}; this "
                     f"deployment's requests are {topic}")
    if skipped.gaps:
        where = "; ".join(f"partition {g.partition}, offsets {g.first:,} to {g.last:,} (found gone at "
                          f"{format_ms(g.noticed_at)})" for g in skipped.gaps[:5])
        more = f"; and {len(skipped.gaps) - 5} more" if len(skipped.gaps) > 5 else ""
        notes.append(f"this range may lack requests the archive never held: {topic} deleted them (its retention) "
                     f"before the decoy archived them: {where}{more}")
    retained_from = skipped.retention()
    if retained_from is not None:
        notes.append(f"this range starts before {format_ms(retained_from)}, and the archive's requests "
                     "appended before then were deleted by the decoy's retention (--retain-hours): it covers the "
                     "range from then on")
    if skipped.files:
        more = f"; and {len(skipped.files) - 5} more" if len(skipped.files) > 5 else ""
        notes.append(f"this range may lack the requests of {len(skipped.files)} archive file(s) not read: "
                     f"{'; '.join(skipped.files[:5])}{more}")
    try:
        count = partition_counts(settings.librdkafka(), [topic], settings.connect_timeout_s).get(topic)
    except RendezvousError:  # the topic may be gone: the archive outlives it
        count = None
    # Cut short, it may not have reached every partition's requests: nothing to say of the archive.
    if count is not None and len(scored.partitions) < count and scored.stopped_at is None:
        held = ", ".join(map(str, sorted(scored.partitions)))
        notes.append(f"the archive holds requests of partition(s) {held} only, of the {count} of {topic}: a "
                     "decoy archives the partitions its group gives it, so if the others had requests then, "
                     "another decoy archived them in its own directory, and this replay covers these only")
    return notes


def _comparison(
    request_id: str, past: dict[str, Any] | None, replayed: Replayed, name: str, version: str,
    budgets: Budgets | None = None,
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
    deadline = (budgets or Budgets()).deadline(replayed.created_at, replayed.deadline)
    return {
        "request_id": request_id, "created_at": replayed.created_at, "deadline": deadline,
        "answered_at": None, "status": "TIMEOUT", "chosen_model": None, "reason": "not in the log",
        "schedule": "", "schedule_version": 0, "outputs": [output],
    }


def run_replay(settings: ReplaySettings, console: Console) -> int:
    err = messages()
    notice = "replay: asked to stop: reporting on the requests scored so far (again to stop at once)"
    with err.status("replaying ...") as status, wind_up_on_first_signal(notice) as wind_up:
        # The status line is drawn on a terminal only: in a job, under nohup or with 2>file, a replay
        # of hours said nothing until its end (a review). There, a plain line now and then.
        say = (lambda what: status.update(f"replaying: {what}")) if err.is_terminal else now_and_then(err, "replaying")
        result = replay(settings, progress=say, wind_up=wind_up)
    # Written and flushed before any line on stderr, and a reader gone (`| tee` ended by the Ctrl-C
    # that cut the replay) skips nothing after it: the --html, the status (reviews).
    write_output(lambda: print_report_json(result.report) if settings.format == "json"
                 else print_report(result.report, console))
    _print_summary(settings, result, err)
    # A script must not take a report on part of the range for the whole: the status a signal gives.
    return 0 if result.stopped_by is None else interrupted_status(Stopped(result.stopped_by))


def _print_summary(settings: ReplaySettings, result: ReplayResult, err: Console) -> None:
    stopped = "stopped before the end of the range: " if result.stopped_by is not None else ""
    err.print(f"{stopped}{result.requests:,} requests replayed in {result.seconds:.1f}s ({result.rate:,.0f}/s); "
              f"{result.undecodable} undecodable skipped; {result.without_log} had no comparison record")
    if settings.html:
        from services.compare_report.html import write_html

        err.print(f"HTML report written to {write_html(dataclasses.replace(result.report), settings.html)}")
