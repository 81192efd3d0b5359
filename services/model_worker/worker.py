"""The model worker: read every request, score it in micro-batches, write Score records.

A worker scores with one model, or with several co-hosted ones (`--co-host`): those share its
consumer group, its micro-batches and its commits, so one fetch brings a batch to all of them and
one produce request carries all their scores (fewer Kafka requests, which is what the broker's
CPU follows), at the cost of isolation: a slow model holds up the scores of the others.

Scoring path: a batch of plain requests — each naming exactly the models' features, in order,
all finite — is read by a compiled walk straight into the models' matrix (walked.py); any other
batch is decoded by fastavro and checked against each signature, where a record that is not a
request at all (`services/core/requests.py`: no id, no features and no payload, ...) is skipped
and counted like an undecodable one (the rendezvous dead-letters it). Every other request gets
exactly one Score: the model's output, or an error saying why there is none: the request breaks
the model's input contract (unknown, missing or non-finite features: `services/core/signatures.py`),
or the model raised for it.

Commit order (at-least-once; the rendezvous de-duplicates by model + request):
  1. produce one Score per request of the batch,
  2. flush: wait until the broker acknowledged every Score,
  3. commit the request offsets of the batch (2 and 3 run off the poll loop, in the shared
     service skeleton, at most every commit interval).
A crash between 2 and 3 re-scores that batch after restart; no request is ever skipped.
"""

from __future__ import annotations

import itertools
import logging
import math
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_INVALID, KafkaException, Message, TopicPartition
from prometheus_client import Counter, Histogram

from services.core.codec import codec
from services.core.deadletter import DeadLetters
from services.core.errors import BadInput, ConfigError, DecodeFailed, RecordTooLarge, Stopped
from services.core.kafka import SERVING_DELIVERY_TIMEOUT_MS, Producer, delivery_timeout, partition_counts, partition_end
from services.core.metrics import DECODE_ERRORS, LATENCY_BUCKETS, child
from services.core.model_info import ModelInfo, publish_model_info
from services.core.redaction import mask
from services.core.requests import check_request
from services.core.runtime import interruptible, now_ms
from services.core.score_limits import MAX_VERSION_CHARS
from services.core.service import STALLED_AFTER_S, Context, Probed, SimpleHandler, StreamService, StreamSpec
from services.core.signatures import Prepared, Signature
from services.model_worker.models import Model, Prediction, load_model
from services.model_worker.models.base import model_signature
from services.model_worker.rescue import Model as RescuedModel
from services.model_worker.rescue import Rescue
from services.model_worker.score_writer import Result, ScoreWriter, unscored
from services.model_worker.settings import WorkerSettings, check_co_hosted_names, check_model_name, worker_name
from services.model_worker.walked import RequestWalker
from services.model_worker.watchdog import ScoringWatchdog, Watched

log = logging.getLogger(__name__)

CATCH_UP_TRIES = 3  # of finding where --start-at begins (each waits up to 15 s for the broker)
CATCH_UP_PAUSE_S = 0.5  # before the next try of a partition's lookup that failed, times the tries so far
EARLIEST_BACKLOG_SAID = 1000  # requests a new group scores first from the earliest, above which that is said
# How long a failed batch is tried again in parts before its other rows get its error: a quarter of
# the default --predict-timeout-s (the worker passes a quarter of its own: `retry_budget_s`).
RETRY_S = 15.0

SERVICE = "model_worker"
REQUESTS = Counter("rdv_model_requests_total", "Requests read by a model worker.", ["model", "version"])
SCORES = Counter(
    "rdv_model_scores_total", "Scores written, by outcome (ok | error).", ["model", "version", "outcome"]
)
COMPUTE = Histogram(
    "rdv_model_compute_seconds", "Model time per micro-batch.", ["model", "version"], buckets=LATENCY_BUCKETS
)
BATCH = Histogram(
    "rdv_model_batch_size", "Requests per micro-batch.", ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)


class Scored(NamedTuple):
    """Outputs of one request: a prediction, or why there is none (its input or the model's error)."""

    prediction: Prediction | None
    error: str | None
    compute_ms: float


_Output = tuple[Prediction | None, str | None]


def score_batch(
    model: Model, rows: Sequence[Mapping[str, float]], signature: Signature | None = None
) -> list[Scored]:
    """Check every row against the model's signature, score the valid ones in one call.

    A row that breaks the contract gets its reason and never reaches the model; if the model
    raises, the batch is re-scored row by row so only the guilty rows fail.
    """
    started = time.perf_counter()
    prepared = (signature or model_signature(model)).prepare(rows)
    return score_prepared(model, prepared, len(rows), _ms_since(started))


def score_prepared(
    model: Model, prepared: Prepared, rows: int, prepare_ms: float, retry_s: float = RETRY_S
) -> list[Scored]:
    """`score_batch` for a batch of `rows` already checked (in `prepare_ms`, counted in each
    result's compute time): co-hosted models that read the same features share one check.
    `retry_s`: how long a failed batch may be tried again in parts (`_Retries`)."""
    started = time.perf_counter()
    outputs = _predict(model, prepared.matrix, retry_s) if prepared.valid else []
    elapsed = prepare_ms + _ms_since(started)
    if not prepared.errors:
        return [Scored(p, e, elapsed) for p, e in outputs]
    results = [Scored(None, prepared.errors.get(i), elapsed) for i in range(rows)]
    for i, (p, e) in zip(prepared.valid, outputs, strict=True):
        results[i] = Scored(p, e, elapsed)
    return results


class _Retries:
    """The time a failed batch has to be tried again in parts, from its first failure on, and that
    failure's text: a row not tried alone when it is out gets it. A model failing every call after
    a while (a remote feature store timing out) was called once a row: 257 calls of 0.23 s made a
    batch of 256 outlast the 60 s timeout, and the watchdog ended the worker at every batch, co-hosted
    models with it, for a model that answered every call (a review). Made on a failure only."""

    clock = staticmethod(time.perf_counter)

    def __init__(self, seconds: float, failure: BaseException, called_at: float) -> None:
        # Out at once when the failed call alone took the time (begun at `called_at`): one more
        # call of as long would carry the turn past the watchdog's timeout (a review of the mend).
        now = self.clock()
        self.until = now + seconds if now - called_at < seconds else now
        self.reason = (f"{_described(failure)} (the batch's error: this row was not tried alone, the model's "
                       f"failures took over {seconds:g} s)")

    def out(self) -> bool:
        return self.clock() >= self.until


def _predict(model: Model, matrix: Any, retries: float | _Retries, probe: bool = True) -> list[_Output]:
    """The outputs of `matrix`'s rows; `retries`: how long to try the batch again in parts once it
    failed (its first call), or the time left for that (a retry: checked before the model is called)."""
    if type(retries) is _Retries:
        if retries.out():
            return [(None, retries.reason)] * len(matrix)
        called_at = 0.0
    else:
        called_at = _Retries.clock()  # the batch's call: how long it took decides whether to retry
    # A model may scale its input in place before it raises: the rows retried one by one must be
    # the rows it was given.
    given = matrix.copy() if len(matrix) > 1 else matrix
    try:
        # What the outputs iterate as, counted: a pandas DataFrame's len() counts its rows and it
        # iterates its columns (fewer outputs than rows ended the worker at every restart; a review).
        # One more than the rows at most: an endless iterable filled memory before the count (4 GB in 30 s).
        given_back: Iterable[Any] = model.predict(matrix)
        if type(given_back) is not list:  # a list ends: anything else is counted one past the rows at most
            _check_one_per_row(given_back)
            given_back = itertools.islice(given_back, len(matrix) + 1)
        outputs = [_checked(p) for p in given_back]
        if len(outputs) != len(matrix):
            count = f"over {len(matrix)}" if len(outputs) > len(matrix) else len(outputs)  # not counted further
            raise ValueError(f"model returned {count} outputs for {len(matrix)} inputs")
    # A model may raise anything; it is that request's error, never the worker's end. Several rows
    # are tried again in halves down to single rows, so only the guilty ones fail: one hostile row
    # in 256 costs ~16 calls, not 257. Any BaseException too: SystemExit (a model's sys.exit() or
    # argparse), asyncio's CancelledError or GeneratorExit from a model's own machinery ended the
    # worker, and its restart read the batch again, for good (a review).
    except BaseException as exc:
        if isinstance(exc, Stopped) or (isinstance(exc, KeyboardInterrupt) and _interrupts_are_stops()):
            raise  # Ctrl-C, SIGTERM or SIGHUP of a command scoring in this process (replay)
        if len(matrix) == 1:
            return [(None, _described(exc))]
        # Timed from the first failure: a healthy model's long batch call is none of the retries' time,
        # unless it took the whole of it.
        if not isinstance(retries, _Retries):
            retries = _Retries(retries, exc, called_at)
        if probe:
            return _probed(model, given, retries)
        half = len(given) // 2
        return [*_predict(model, given[:half], retries, probe=False),
                *_predict(model, given[half:], retries, probe=False)]
    return outputs


def _check_one_per_row(given_back: Any) -> None:
    """A table or a mapping iterates its column labels or keys, not its rows: a one-column
    DataFrame's `0` was each row's confident score of 0.0, a dict by row index 0, 1, 2 (a review)."""
    if isinstance(given_back, Mapping) or hasattr(given_back, "columns"):
        raise TypeError(f"the model returned a {type(given_back).__name__}, a table or a mapping: a model returns "
                        "one prediction per row (a list, or an array of one value a row)")
    # A set iterates in hash order, not the rows'; bytes iterate as integers, a string as its letters (a review).
    if isinstance(given_back, set | frozenset | bytes | bytearray | str):
        raise TypeError(f"the model returned a {type(given_back).__name__}: a model returns one prediction per row, "
                        "in the rows' order (a list, or an array of one value a row)")


def _interrupts_are_stops() -> bool:
    """A KeyboardInterrupt can only be this process being stopped while SIGINT raises it. A service
    turns SIGINT into a stop flag (`run_service`): there it came from the model itself, and ended
    the worker at every restart, its batch read again (a review)."""
    return signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _probed(model: Model, given: Any, retries: _Retries) -> list[_Output]:
    """A failed batch of several rows: its first row alone, and if that fails its middle row. Both
    failing, most likely every row does (a broken model): one call a row, not the 2n - 1 of halving.
    The middle row too, not the first only: a hostile request at the head of a batch sent every
    row of it through the model alone (257 calls for a batch of 256)."""
    first = _predict(model, given[:1], retries, probe=False)
    if first[0][1] is None:
        return [*first, *_predict(model, given[1:], retries, probe=False)]
    mid = len(given) // 2
    middle = _predict(model, given[mid : mid + 1], retries, probe=False)
    if middle[0][1] is not None:
        return [*first, *(out for i in range(1, len(given))
                          for out in (middle if i == mid else _predict(model, given[i : i + 1], retries)))]
    return [*first, *_rows(model, given[1:mid], retries), *middle, *_rows(model, given[mid + 1 :], retries)]


def _rows(model: Model, matrix: Any, retries: _Retries) -> list[_Output]:
    return _predict(model, matrix, retries, probe=False) if len(matrix) else []


def _checked(prediction: Any) -> _Output:
    """A prediction whose score is not a finite number (inputs near the float range overflow a
    model's arithmetic) is that request's error: NaN is no answer to give with confidence. So is
    one with neither a score nor a label (None, an ONNX classifier's empty map). Read here, once,
    inside the guard of the model's call: the Score writer reads a plain Prediction only (a
    result whose `label` property raised ended the worker there, at every restart; a review)."""
    if type(prediction) is Prediction and type(prediction[0]) is float:  # what most models return: 80 ns less a row
        score = prediction[0]
        return (prediction, None) if score - score == 0.0 else (None, f"the model's score is not a finite number "
                                                                      f"({score})")  # inf - inf, nan - nan: nan
    return _checked_slowly(prediction)


def _checked_slowly(prediction: Any) -> _Output:
    """`_checked` of any output."""
    if type(prediction) is Prediction:
        score, label = prediction
    else:
        score = getattr(prediction, "score", prediction)  # a plain float too
        label = getattr(prediction, "label", None)
    if score is None and label is None:  # a Score saying nothing, and "ok"
        return None, "the model gave neither a score nor a label"
    try:
        finite = score is None or math.isfinite(score)
    except TypeError:
        finite = True  # not a number at all: the Score writer says so
    except (ValueError, OverflowError):  # e.g. an int past the float range
        finite = False
    if not finite:
        return None, f"the model's score is not a finite number ({score})"
    return (prediction if type(prediction) is Prediction else Prediction(score, label)), None


def _described(exc: BaseException) -> str:
    """An exception as one line of text, whatever its message holds (a lone surrogate, a __str__
    that raises): the text goes into a Score, never into the worker's end. Masked: the Score goes
    on to the answer and a gateway's caller, and a model's text may quote this process' secrets."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except BaseException as unshown:  # a __str__ raising SystemExit ended the worker (a review)
        if isinstance(unshown, Stopped):
            raise
        text = f"{type(exc).__name__} (its message cannot be shown)"
    return mask(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _batch_bound_s(predict_timeout_s: float, models: int) -> float:
    """The longest one batch may hold the loop before the watchdog has acted: each hosted model has
    its own turn of the timeout, and a minute more for the watchdog's flush and commit."""
    return models * predict_timeout_s + 60.0


def stalled_after_s(predict_timeout_s: float, models: int) -> float | None:
    """When the worker's /healthz says its loop is stuck: never before the watchdog has acted on a
    stuck model (it exits the process), never at all when models may take as long as they like."""
    return None if predict_timeout_s <= 0 else max(STALLED_AFTER_S, _batch_bound_s(predict_timeout_s, models))


def max_poll_interval_ms(predict_timeout_s: float, models: int) -> int:
    """The consumer's max.poll.interval.ms: past it librdkafka leaves the group, and the watchdog's
    commit would be refused. At least librdkafka's default; more when one batch may take longer."""
    return max(300_000, int(_batch_bound_s(predict_timeout_s, models) * 1000))


def max_poll_interval(predict_timeout_s: float, models: int) -> dict[str, int]:
    """The worker's max.poll.interval.ms, or none with no limit (0): librdkafka's 300 s then, or what
    --kafka-config gives (refused before, as a key the worker sets). Not its largest: in the classic
    protocol it is also how long a rebalance waits for a member, and a hung model held every replica
    of its group that long (a review)."""
    if predict_timeout_s <= 0:
        return {}
    return {"max.poll.interval.ms": max_poll_interval_ms(predict_timeout_s, models)}


class Hosted:
    """One model a worker scores with, under the name and version written on its scores."""

    def __init__(self, model: Model, name: str, version: str, instance: str, extra_features: str,
                 version_set_by: str = "--version sets it"):
        self.model = model
        self.name = name or model.name
        self.version = version or model.version
        _check_written_as(self.name, self.version, version_set_by)
        self.signature = model_signature(model, extra_features)
        self.writer = ScoreWriter(self.name, self.version, instance)
        self.labels = (self.name, self.version)


def _check_written_as(name: Any, version: Any, version_set_by: str) -> None:
    """The name and version on every score must be ones the rendezvous joins: a worker whose
    model (or --version) gave an empty name or a version over MAX_VERSION_CHARS ran, and every
    score it wrote was refused (a review). A one-line error at start instead."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"the model has no name to write on its scores ({name!r}): give it one, or --name")
    check_model_name(name, "the model's name (--name sets another)")
    if not isinstance(version, str) or len(version) > MAX_VERSION_CHARS:
        shown = f"{len(version)} characters" if isinstance(version, str) else repr(version)[:40]
        raise ConfigError(f"model {name}: its version must be text of at most {MAX_VERSION_CHARS} characters, "
                          f"got {shown} ({version_set_by})")


def shared_names(hosted: Sequence[Hosted]) -> tuple[str, ...] | None:
    """The feature names every hosted model reads, in one order, or None. A request naming exactly
    those, in that order, all finite, is valid for each of their signatures whatever they require
    or default, and gives each the same matrix: one walk serves them all (walked.py)."""
    names = {h.signature.names for h in hosted}
    return next(iter(names)) if len(names) == 1 else None


def hosted_models(settings: WorkerSettings, instance: str, model: Model | None = None) -> list[Hosted]:
    """The worker's own model (`--model`), then its co-hosted ones (`--co-host`); names unique."""
    def load(spec: str) -> Model:
        log.info("loading model from %s", spec)  # before a load that may take minutes, said (a review)
        started = time.monotonic()
        with interruptible(f"loading the model from {spec}"):
            loaded = load_model(spec, trust_model_file=settings.trust_model_file)
        log.info("loaded model from %s in %.1fs", spec, time.monotonic() - started)
        return loaded

    extra = settings.extra_features()
    hosted = [Hosted(model or load(settings.model), settings.name, settings.version, instance, extra)]
    # --version is the --model's: a co-hosted model writes its own (a review: told to use --version).
    hosted += [Hosted(load(spec), name, "", instance, extra, "a co-hosted model writes the version it gives itself: "
                      "mend it in the model, or serve it with --model and --version")
               for name, spec in settings.co_hosted()]
    check_co_hosted_names([h.name for h in hosted])
    # Equal signatures become one object, so a batch is checked once per distinct signature
    # (`score_co_hosted` keys its checks by identity: hashing 30 feature specs per batch costs too).
    shared: dict[Signature, Signature] = {}
    for h in hosted:
        h.signature = shared.setdefault(h.signature, h.signature)
    return hosted


def retry_budget_s(predict_timeout_s: float) -> float:
    """How long a failed batch is tried again in parts: a quarter of each model's turn of the
    timeout, so that a model failing slowly leaves its rows an error before the watchdog's end."""
    return predict_timeout_s / 4 if predict_timeout_s > 0 else RETRY_S


def score_co_hosted(
    hosted: Sequence[Hosted], rows: Sequence[Mapping[str, Any]], walked: tuple[Prepared, float] | None = None,
    retry_s: float = RETRY_S,
) -> Iterator[tuple[Hosted, list[Scored]]]:
    """Each model's results for one batch, model after model. Models with the same signature share
    one check of the batch (`Signature.prepare`: one row ≈ 15 µs back to back, ≈ 190 µs on a cold
    CPU, docs/benchmarks.md), each with its own copy of the checked matrix: a model may scale its
    input in place, and the next must not see that. `walked`: the batch already checked by the
    request walk against the feature names all of `hosted` read (walked.py), and the ms it took;
    `rows` are then only counted; a model whose contract declares ranges has the walked batch
    checked against them too (the walk checks names and finiteness only)."""
    if walked is None:
        ids = [id(h.signature) for h in hosted]
    else:  # one walk for all, and one range check per distinct signature with ranges
        ids = [id(h.signature) if h.signature.bounded else 0 for h in hosted]
    # Walked, a model's batch may be the walk's own object under another key: copy for each.
    shared = set(ids) if walked is not None and len(hosted) > 1 else {key for key in ids if ids.count(key) > 1}
    checked: dict[int, tuple[Prepared, float]] = {} if walked is None else {0: walked}  # key -> batch checked, ms
    for h, key in zip(hosted, ids, strict=True):
        check = checked.get(key)
        if check is None:
            started = time.perf_counter()
            if walked is None:
                check = checked[key] = (h.signature.prepare(rows), _ms_since(started))
            else:
                check = checked[key] = (h.signature.refuse_out_of_range(walked[0]), walked[1] + _ms_since(started))
        prepared = check[0]
        if key in shared:
            prepared = Prepared(prepared.matrix.copy(), prepared.valid, prepared.errors)
        yield h, score_prepared(h.model, prepared, len(rows), check[1], retry_s)


class ModelWorker(SimpleHandler, Probed):
    """One model (or several co-hosted), one consumer group; `run(stop)` until the flag is set."""

    def __init__(self, settings: WorkerSettings, model: Model | None = None):
        super().__init__()
        self.settings = settings
        self.instance = settings.instance_id()
        self.hosted = hosted_models(settings, self.instance, model)
        names = [h.name for h in self.hosted]
        self.name = worker_name(names)
        self.topics = settings.topics()
        self.scored = 0
        self._requests = codec("request")
        self._walker = RequestWalker(self._requests, shared_names(self.hosted))
        self._scorer: _BatchScorer | None = None
        self._watchdog: ScoringWatchdog[Hosted] | None = None
        self._rescue: Rescue | None = None
        self._group_id = settings.group_id(names)
        self._start_said = False  # `_say_earliest_start`, once
        self.service = StreamService(StreamSpec(
            name=f"model {self.name}", config=settings.librdkafka(), subscription=[self.topics.requests],
            group_id=self._group_id, processing="at-least-once",
            commit_interval_ms=settings.commit_interval_ms, max_batch=settings.max_batch,
            connect_timeout_s=settings.connect_timeout_s,
            consumer_config={
                "client.id": f"{self.name}-{self.instance}",
                "auto.offset.reset": settings.start_from,  # a dead replica's partitions move on: GROUP_DEFAULTS
                **max_poll_interval(settings.predict_timeout_s, len(self.hosted)),
            },
            # A score is of use until its request's deadline (and the rendezvous' linger after it);
            # librdkafka's 300 s would also leave a client stuck after a broker restart (#5430)
            # holding a partition's scores, and every commit, that long before it is replaced.
            producer_config=delivery_timeout(settings.librdkafka(), SERVING_DELIVERY_TIMEOUT_MS),
            outputs=(self.topics.scores, self.topics.deadletter),
            records={self.topics.requests: "request"},
            stalled_after_s=stalled_after_s(settings.predict_timeout_s, len(self.hosted)),
        ), self)
        self.ready = self.service.ready

    def run(self, stop: threading.Event) -> None:
        dead_letters = [self.topics.deadletter] if self.settings.dead_letter else []
        counts = partition_counts(self.settings.librdkafka(), [self.topics.requests, self.topics.scores, *dead_letters],
                                  timeout=self.settings.connect_timeout_s)
        if counts[self.topics.requests] != counts[self.topics.scores]:
            raise ConfigError(
                f"{self.topics.scores} has {counts[self.topics.scores]} partitions but "
                f"{self.topics.requests} has {counts[self.topics.requests]}: "
                "scores are written to the request's partition"
            )
        for info in self.infos():
            publish_model_info(self.settings.librdkafka(), self.topics.models, info,
                               timeout_s=self.settings.connect_timeout_s)
        # After the checks, which say at once when no broker answers (compiled first, with a
        # cold cache, 5 s later).
        self._walker.warm_up()
        scoring = ", ".join(f"{h.name} {h.version}" for h in self.hosted)
        log.info("model %s (%s) scoring %s", scoring, self.instance, self.topics.requests)
        try:
            self.service.run(stop)
        finally:
            if self._watchdog is not None:
                self._watchdog.stop()
            if self._rescue is not None:
                self._rescue.stop()
        log.info("model %s stopping after %d scores", scoring, self.scored)

    def infos(self) -> list[ModelInfo]:
        """The input contracts this worker publishes on the models topic, one per hosted model."""
        return [ModelInfo(h.name, h.version, h.signature, self.instance, now_ms()) for h in self.hosted]

    def start(self, ctx: Context) -> None:
        super().start(ctx)
        assert ctx.producer is not None
        dead_letters = DeadLetters.for_topic(ctx.producer, ctx.config, self.topics.deadletter, SERVICE,
                                             known=ctx.producer.topic_limit(self.topics.deadletter),
                                             sources=ctx.spec.subscription if self.settings.dead_letter else ())
        if self.settings.predict_timeout_s > 0 and self._rescue is None:
            self._rescue = self._start_rescue()
        self._watchdog = ScoringWatchdog(self.settings.predict_timeout_s, lambda h: h.name, ctx.producer,
                                         ctx.consumer, board=self._rescue.board if self._rescue else None,
                                         rescue_alive=self._rescue.alive if self._rescue else lambda: True,
                                         outputs_lost=ctx.outputs.failed_unsettled)
        self._watchdog.start()  # only watches with a timeout (--predict-timeout-s > 0)
        self._scorer = _BatchScorer(self, ctx.producer, dead_letters, self._watchdog)

    def _start_rescue(self) -> Rescue | None:
        """The process that takes over a batch when a model holds the interpreter lock (rescue.py)."""
        models = [RescuedModel(h.name, h.version, self.instance) for h in self.hosted]
        try:
            return Rescue.start(self.settings.librdkafka(), self.topics.requests, self.topics.scores, self._group_id,
                                models, self.settings.predict_timeout_s, self.settings.max_batch,
                                self.settings.schema_registry)
        except OSError as err:  # no shared memory, no process: the worker serves on with its watchdog alone
            log.warning("model %s: no rescue process (%s): a model holding the interpreter lock for good would "
                        "hang this worker", self.name, err)
            return None

    def on_batch(self, messages: list[Message]) -> None:
        assert self._scorer is not None and self.ctx is not None
        part, rest = first_part(messages, PART_BYTES)
        # The rest is read again by the next poll: one part per pass of the loop, so every time
        # bound (the watchdog's, /healthz's, max.poll.interval.ms, the chart's probe) holds as for
        # one batch. A partition that cannot be rewound has its rest scored now, part by part.
        pieces = [part]
        if rest:
            stuck = {(tp.topic, tp.partition) for tp in restarts(rest) if not self.ctx.consumer.rewind(tp)}
            part = part + [msg for msg in rest if (msg.topic() or "", msg.partition() or 0) in stuck]
            pieces = parts_by_bytes(part, PART_BYTES)
        for piece in pieces:
            self._scorer.on_batch(piece)
        self.positions.advance(part)

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        if self._watchdog is not None:
            self._watchdog.rebalanced()
        start_ms = self.settings.start_at_ms(now_ms())
        if start_ms is not None and partitions and self.ctx is not None:
            self._catch_up(partitions, start_ms)
        elif not self._start_said and partitions and self.ctx is not None and self.settings.start_from == "earliest":
            self._start_said = True
            self._say_earliest_start(self.ctx.consumer.native, partitions)
        super().on_assigned(partitions)  # where each partition starts now, to be committed

    def _say_earliest_start(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Warn when a group with no committed offsets is about to score a long history first: a
        model moved in or out of a worker gets a new group (its name lists the co-hosted models),
        which scored all 7 days a topic keeps again, its fresh requests waiting behind them (a
        review). Once per process, at the first assignment; a broker that does not answer is let be."""
        try:
            fresh = [tp for tp in consumer.committed(partitions, timeout=15) if tp.error is None and tp.offset < 0]
            backlog = sum(high - low for low, high in (consumer.get_watermark_offsets(tp, timeout=5) for tp in fresh))
        except KafkaException as exc:
            log.debug("model %s: the new group's backlog not read: %s", self.name, exc)
            return
        if backlog > EARLIEST_BACKLOG_SAID:
            log.warning("model %s: group %s has no committed offsets on %d partition(s): it scores the %d requests "
                        "kept there, from the earliest, before any new one (--start-from earliest). If these models "
                        "were scored under another group until now (--co-host or --group changed), they score them "
                        "again; to score new requests only, start with --start-from latest or --start-at TIME",
                        self.name, self._group_id, len(fresh), backlog)

    def on_released(self, partitions: list[TopicPartition], lost: bool) -> None:
        if self._watchdog is not None:
            self._watchdog.rebalanced()
        super().on_released(partitions, lost)

    def _catch_up(self, partitions: list[TopicPartition], start_ms: int) -> None:
        assert self.ctx is not None
        for attempt in range(1, CATCH_UP_TRIES + 1):
            try:
                self._start_new_partitions_at(self.ctx.consumer.native, partitions, start_ms)
                return
            except KafkaException as exc:  # raised here, it would end the worker in its poll
                log.warning("catch-up start for %s not found (try %d of %d): %s", self.name, attempt,
                            CATCH_UP_TRIES, exc)
        log.error("model %s: partitions %s start where the group left off or at auto.offset.reset, not at "
                  "--start-at: the broker did not answer", self.name, sorted(tp.partition for tp in partitions))

    def _start_new_partitions_at(self, consumer: Any, partitions: list[TopicPartition], start_ms: int) -> None:
        """Catch-up: partitions this group never committed start at `start_ms`, not at the end."""
        # A lookup that failed for a partition (its error set) is no "never committed": it resumes
        # where its group left off, not at --start-at, committed over the group's offset.
        committed = {tp.partition: tp.offset if tp.error is None else 0
                     for tp in consumer.committed(partitions, timeout=15)}
        fresh = [TopicPartition(tp.topic, tp.partition, start_ms) for tp in partitions
                 if committed.get(tp.partition, -1) < 0]
        if not fresh:
            return
        found = {tp.partition: tp for tp in consumer.offsets_for_times(fresh, timeout=15)}
        # A lookup that failed for a partition is no "nothing after start_ms": started at its end and
        # that end committed, it skipped the partition's history for good (a review). Its lookup is
        # tried again, after a pause (a leader being elected), and out of tries it alone starts as
        # the group would (--start-from), said.
        for attempt in range(1, CATCH_UP_TRIES):
            failed = [TopicPartition(tp.topic, p, start_ms) for p, tp in found.items() if tp.error is not None]
            if not failed:
                break
            time.sleep(CATCH_UP_PAUSE_S * attempt)
            try:
                found.update({tp.partition: tp for tp in consumer.offsets_for_times(failed, timeout=15)})
            except KafkaException as exc:  # asked alone, a partition without a leader fails the whole call
                log.debug("model %s: --start-at lookup of partitions %s failed again: %s", self.name,
                          [tp.partition for tp in failed], exc)
        left = {p: tp.error for p, tp in found.items() if tp.error is not None}
        if left:
            log.warning("model %s: where --start-at begins was not found on partitions %s (%s): they start where "
                        "the group would (--start-from)", self.name, sorted(left), next(iter(left.values())))
        # No record at or after start_ms: begin at the end now, as an offset the worker commits
        # (OFFSET_END would leave the partition uncommitted: see _latest_starts). Every start found
        # before any is set: an attempt that raised left no offset of its own for the next (a review).
        starts = {p: tp.offset if tp.offset >= 0 else partition_end(consumer, tp)
                  for p, tp in found.items() if tp.error is None}
        for tp in partitions:
            if tp.partition in found:  # a fresh one: where it was found, else where the group would start it
                tp.offset = starts.get(tp.partition, OFFSET_INVALID)
        consumer.assign(partitions)
        log.info("model %s catching up from %d on partitions %s", self.name, start_ms, sorted(starts))


# A poll's requests are scored at most this many request bytes at once (one request at least), the
# rest read again by the next poll (ModelWorker.on_batch): decoded whole, a request's dict takes ~8x
# its bytes, and a poll of 256 wide requests (1.1 MB of unknown feature names each) peaked at 2.9 GB,
# past a model pod's memory limit (a review). Far above a normal poll (256 requests of the demo's
# 700 bytes): those are scored whole, as before.
PART_BYTES = 8 * 1024 * 1024


def first_part(messages: list[Message], most: int) -> tuple[list[Message], list[Message]]:
    """`messages` cut after their first part of at most `most` value bytes (one record at least);
    one pass, stopping at the cut, and `messages` itself when it is all one part (every poll)."""
    size = 0
    for index, msg in enumerate(messages):
        size += len(msg.value() or b"")
        if size > most and index:
            return messages[:index], messages[index:]
    return messages, []


def parts_by_bytes(messages: list[Message], most: int) -> list[list[Message]]:
    """`messages` in order, cut into consecutive parts of at most `most` value bytes each (a record
    larger than that alone)."""
    parts = []
    while messages:
        part, messages = first_part(messages, most)
        parts.append(part)
    return parts


def restarts(rest: list[Message]) -> list[TopicPartition]:
    """Where each partition of `rest` is read again from: its first record there (a poll's records
    of one partition are in offset order)."""
    starts: dict[tuple[str, int], int] = {}
    for msg in rest:
        starts.setdefault((msg.topic() or "", msg.partition() or 0), msg.offset() or 0)
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in starts.items()]


class _BatchScorer:
    """Decode -> score -> produce per polled batch. Scores go out at once (the rendezvous waits
    for them); the skeleton flushes and commits the positions behind them off the poll loop."""

    def __init__(self, worker: ModelWorker, producer: Producer, dead: DeadLetters, watchdog: ScoringWatchdog[Hosted]):
        self.w = worker
        self.producer = producer
        self.dead = dead
        self.watchdog = watchdog
        self.retry_s = retry_budget_s(worker.settings.predict_timeout_s)  # a failed batch's retries, per batch

    def on_batch(self, messages: list[Message]) -> None:
        if not messages:
            return
        received_at = now_ms()
        walker = self.w._walker
        walked = walker.read([msg.value() for msg in messages]) if walker.usable else None
        if walked is not None:
            self._score_and_produce(walked.requests, messages, received_at, walked.checked)
            return
        requests, sources = self._decode(messages)
        if requests:
            self._score_and_produce(requests, sources, received_at)

    def _decode(self, messages: list[Message]) -> tuple[list[dict[str, Any]], list[Message]]:
        requests, sources = [], []
        for msg in messages:
            try:
                request = self.w._walker.decode(msg.value())
                check_request(request)  # not a request at all: nobody waits for its score
                requests.append(request)
                sources.append(msg)
            except BadInput as err:
                DECODE_ERRORS.labels(SERVICE, msg.topic(), type(err).__name__).inc()
                if self.w.settings.dead_letter:
                    self.dead.send(msg, err)
        return requests, sources

    def _score_and_produce(
        self, requests: list[dict[str, Any]], sources: list[Message], received_at: int,
        walked: tuple[Prepared, float] | None = None,
    ) -> None:
        rows = requests if walked is not None else [r["features"] for r in requests]
        def write_errors(hosted: Hosted, reason: str) -> None:  # by the watchdog, for a model stuck on it
            elapsed = float(now_ms() - received_at)
            self._write(hosted, [unscored(reason, elapsed)] * len(requests), requests, sources, received_at)

        watched = self.watchdog.watch(self.w.hosted, sources, write_errors)
        try:
            # One model's scores go out before the next model scores: the preferred one is not held up.
            for hosted, results in score_co_hosted(self.w.hosted, rows, walked, self.retry_s):
                if not self._claimed(watched, hosted):
                    break  # the watchdog or the rescue wrote this batch's Scores and ends the process
                self._write(hosted, results, requests, sources, received_at)
                watched.next_turn()
        finally:
            self.watchdog.done()
        self.w.scored += len(requests)

    def _claimed(self, watched: Watched[Hosted], hosted: Hosted) -> bool:
        while not watched.claim(hosted):
            if not self.watchdog.hold(watched):
                return False
        return True

    def _write(
        self, hosted: Hosted, results: Sequence[Result], requests: list[dict[str, Any]], sources: list[Message],
        received_at: int,
    ) -> None:
        labels = hosted.labels
        child(REQUESTS, *labels).inc(len(requests))
        child(BATCH, *labels).observe(len(requests))
        child(COMPUTE, *labels).observe(results[0].compute_ms / 1000.0)
        values, unencodable = hosted.writer.encode_batch(requests, results, received_at, now_ms())
        failed = set(unencodable)  # the outputs that became error Scores here
        for index, (msg, request, result, value) in enumerate(zip(sources, requests, results, values, strict=True)):
            try:
                self._produce_score(msg, request, value)
            except RecordTooLarge as err:  # a producer or topic limit set below a Score's size
                if result.error is None:  # an error Score already counts as one
                    failed.add(index)  # once: an unencodable output's error Score may be too large too (a review)
                self._write_smaller(hosted, msg, request, result, len(value), received_at, err)
        errors = sum(r.error is not None for r in results) + len(failed)
        child(SCORES, *labels, "ok").inc(len(requests) - errors)
        if errors:
            child(SCORES, *labels, "error").inc(errors)

    def _produce_score(self, msg: Message, request: dict[str, Any], value: bytes) -> None:
        """Keyed by the request id (at most 1,024 characters, so a Score always fits), not the
        request's own key, which may be of any size. Same partition number as the request:
        co-partitioning holds whatever partitioner the request's producer used."""
        self.producer.produce(self.w.topics.scores, value, key=request["request_id"].encode(),
                              partition=msg.partition())

    def _write_smaller(
        self, hosted: Hosted, msg: Message, request: dict[str, Any], result: Result, size: int, received_at: int,
        err: RecordTooLarge,
    ) -> None:
        """A Score over what the scores topic takes (a label near its bound, a topic limit set
        low): an error Score without its label and score instead, so that the rendezvous need not
        wait for this model to the deadline (no Score at all was written; a review); a dead letter
        (with --dead-letter) only when that one does not fit either."""
        reason = f"its Score of {size} bytes is over what the scores topic takes"
        values, _ = hosted.writer.encode_batch([request], [unscored(reason, result.compute_ms)], received_at, now_ms())
        try:
            self._produce_score(msg, request, values[0])
            log.warning("%s[%s]@%s: %s; an error Score says so instead", msg.topic(), msg.partition(), msg.offset(),
                        err)
        except RecordTooLarge:
            log.warning("no Score for %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), err)
            if self.w.settings.dead_letter:
                self.dead.send(msg, DecodeFailed(f"its Score could not be written: {err}"))
