"""The gateway's one inference path, shared by REST and gRPC: admit, resolve, send, await, answer.

    call ─► admit (API key, rate limit) ─► resolve the name (catalog) ─► rows (oip) ─► budget
         ─► one Kafka request per row (services/client: return address = a reply partition this
            gateway owns) ─► await the answers by request_id ─► response, or the status of the failure

The deadline of a call is the smallest of the gRPC deadline, the `timeout` parameter and the
`X-Timeout-Ms` header, counted from when the call came; without any, the schedule's default.
The rendezvous answers by then (TIMEOUT at the latest); the gateway waits `answer_grace_ms`
longer before it gives up with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import secrets
import time
import uuid
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from services.client.client import Answer, Client, ReplyPartitionLost
from services.core.errors import RendezvousError
from services.core.health import BrokerHealth
from services.core.metrics import child
from services.core.redaction import mask
from services.core.requests import RETRY_NOT_KEPT
from services.core.runtime import now_ms
from services.gateway import metrics as m
from services.gateway.auth import ApiKeys, RateLimit
from services.gateway.catalog import SCHEDULE, Catalog, Target
from services.gateway.comparisons import ComparisonTap
from services.gateway.errors import AnswerFailed, AnswerTimedOut, TurnedAway, Unavailable, status_of
from services.gateway.oip import InferCall, InferResult, RowAnswer, rows_of, timeout_ms
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

SHUTTING_DOWN = "this gateway is shutting down; retry (another replica will answer)"

R = TypeVar("R")

# A call's data from this size up is turned into rows in a worker thread, and a gRPC message from
# LARGE_BODY bytes up parsed there (a REST body: rest.LARGE_JSON_BODY): on the event loop a 2 MB
# JSON call (1,000 x 1,024 values) held every other call for 0.5 s (a review). Smaller ones stay on
# the loop: a thread's hop costs more.
LARGE_VALUES = 50_000
# How many times a row whose reply partition moved to another gateway is sent again (each move is
# a rebalance: one is the rule, a third would be gateways joining and leaving in a loop).
MOVED_RESENDS = 2
LARGE_BODY = 256 * 1024
# A call's rows submitted to the Kafka client: submit(row, request_id=...) (`Gateway._submitting`).
Submit = Callable[..., Future[Answer]]


async def off_the_loop(large: bool, work: Callable[..., R], *args: Any) -> R:
    """`work(*args)`, in a worker thread when `large` (the GIL is shared, but the loop is served)."""
    return await asyncio.to_thread(work, *args) if large else work(*args)


class Gateway:
    def __init__(self, settings: GatewaySettings, client: Client, catalog: Catalog, tap: ComparisonTap,
                 keys: ApiKeys, health: BrokerHealth):
        self.settings = settings
        self.client = client
        self.catalog = catalog
        self.tap = tap
        self.keys = keys
        self.limit = RateLimit(settings.rate_limit, settings.rate_burst)
        self.row_limit = RateLimit(settings.rate_limit_rows, settings.rate_burst_rows, unit="rows")
        self.health = health
        self.draining = False
        self.rows_in_flight = 0
        self.instance = settings.instance_name()  # once: the host name is a system call
        m.CLIENT_COUNTS.follow(client)  # its undecodable answers, read at each scrape

    @staticmethod
    def _new_id() -> str:
        """Unpredictable: the rendezvous answers an id it has seen with its first answer, so a
        client that could guess the next id (a process prefix and a counter, read off the replies
        topic) sent it first with rows of its own, and its answer went to the gateway's caller."""
        return secrets.token_hex(16)

    # -- admission ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def spending(self, caller: str) -> Iterator[None]:
        """One call of `caller` against its rate limit, given back if the call is turned away for
        the gateway's state before anything of it is sent (`TurnedAway`: draining, overloaded, Kafka
        away), which callers retry: each retry spent a token, and once the burst was gone they got
        429 for what was no fault of theirs. Not for a 503 after its rows went out (no answer in
        time, a delivery failed): that call cost Kafka records and the models' work, and given
        back, a key's flood could make the rendezvous late and call on for free (a review).
        Spent before the body is read (a caller over its limit costs no body)."""
        self.limit.take(caller)
        try:
            yield
        except Exception as exc:
            if getattr(exc, "nothing_sent", False):  # TurnedAway, or marked by `_send`
                self.limit.give_back(caller)
            raise

    def authenticate(self, authorization: str | None) -> str:
        """Authentication alone (metadata calls do not spend the rate limit)."""
        return self.keys.identify(authorization)

    def broken(self) -> str | None:
        """Why this gateway can no longer answer, for good, if it cannot: a reader of its Kafka
        topics stopped (a consumer error it cannot get past). Its liveness fails, so it is restarted."""
        broken = self.client.stopped or self.tap.stopped or self.catalog.schedules.stopped
        return None if broken is None else mask(broken)  # shown without a key (health endpoints)

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining: shutting down"
        broken = self.broken()
        if broken:
            return False, broken
        if not self.health.up:
            return False, self.health.describe()
        if not self.client.owned_partitions:
            return False, f"no reply partition of {self.client.topics.replies} assigned yet"
        if self.catalog.schedules.in_force() is None:
            return False, f"no version of schedule {self.catalog.schedule_name!r} on the control topic yet"
        return True, f"ready: reply partitions {list(self.client.owned_partitions)}"

    def model_ready(self, name: str, version: str) -> bool:
        try:
            self.catalog.resolve(name, version)  # NotFound for an unknown name
        except TurnedAway:  # known, but no schedule in force yet: not ready
            return False
        return self.readiness()[0]

    # -- inference ------------------------------------------------------------------------------

    def open_for_calls(self) -> None:
        """`Unavailable` when no call can be served now (draining, broken, Kafka away, or as many
        rows in flight as allowed): asked before a call's body is read and parsed too, which took
        a large call's memory (≈ 60 MB for 2 MB of JSON) only for it to be refused after."""
        if self.draining:
            raise TurnedAway(SHUTTING_DOWN)
        broken = self.broken()
        if broken:
            raise TurnedAway(f"this gateway {broken}; retry (another replica will answer)")
        if not self.health.up:  # else requests would queue in the producer, and calls wait out their deadline
            raise TurnedAway(f"Kafka is unreachable ({self.health.describe()}); retry later")
        self._check_room(1)  # a call has a row at least

    async def infer(self, name: str, version: str, call: InferCall, caller: str,
                    deadline_ms: Sequence[int | None] = (), started: float | None = None) -> InferResult:
        """`deadline_ms`: the caller's deadlines (gRPC's, the header's), counted from `started`
        (time.monotonic() when the call came; now if None), as the `timeout` parameter is."""
        started = time.monotonic() if started is None else started
        self.open_for_calls()
        target = self.catalog.resolve(name, version)
        given = [timeout_ms(call.parameters), *deadline_ms]
        large = sum(len(tensor.values) for tensor in call.tensors) >= LARGE_VALUES
        rows = await off_the_loop(large, rows_of, call.tensors, target.feature_names, self.settings.max_rows)
        self.catalog.check_features(target, rows[0])
        await off_the_loop(large, self.catalog.check_ranges, target, rows)
        self._check_room(len(rows))  # before the digest, which an overloaded gateway need not pay for (a review)
        base = call.id or self._new_id()  # the id the response carries
        # A digest of every value when the call names itself: 0.1 s of a 1,000 x 1,024 call (a review).
        ids = await off_the_loop(large, _request_ids_of, call.id, base, caller, rows, target.kind)
        if target.kind != SCHEDULE:
            await self._start_tap()
        # Again after the awaits above: a large call checked off the loop while SIGTERM came sent
        # its rows after the drain had found none in flight, and its caller saw the connection
        # cut, not a 503 (a review).
        self.open_for_calls()
        budget = self._budget(target, given, started)  # last: what the caller has left when its rows go
        self._check_room(len(rows))
        # By rows too: the models' work is a row each, and the call limit let one call of --max-rows
        # rows cost what one row did. Taken last, once the call goes: one refused (invalid, draining,
        # overloaded) spends none, else a key retrying through an overload earned 429s.
        self.row_limit.take(caller, len(rows))
        metadata = {"gateway": self.instance, "caller": caller}
        self.rows_in_flight += len(rows)
        m.ROWS_IN_FLIGHT.set(self.rows_in_flight)
        try:
            if target.kind == SCHEDULE:
                answers = await self._via_schedule(ids, rows, budget, metadata, large)
            else:
                answers = await self._via_model(target, ids, rows, budget, metadata, large)
        except Exception as exc:
            if getattr(exc, "nothing_sent", False):  # the rows' tokens too, as `spending` gives the call's
                self.row_limit.give_back(caller, len(rows))
            raise
        finally:
            self.rows_in_flight -= len(rows)
            m.ROWS_IN_FLIGHT.set(self.rows_in_flight)
        if version:
            answers = [_as_pinned(a, target.kind, version) for a in answers]
        for answer in answers:
            child(m.ANSWERS, answer.status, target.kind).inc()
        _raise_failures(ids, answers, repeated=bool(call.id) and target.kind == SCHEDULE)
        if target.kind == SCHEDULE:
            # The version that decided (the rendezvous picks it by the request's created_at), not
            # the one this gateway's clock saw in force: they differ at a switch.
            decided = {str(a.schedule_version) for a in answers if a.schedule_version > 0}
            version = decided.pop() if len(decided) == 1 else target.version
        else:
            # The version that scored, as its output says (a worker of the version before may
            # still answer during a roll-out); the published one when the rows differ.
            versions = {a.version for a in answers if a.version}
            version = versions.pop() if len(versions) == 1 else target.version
        return InferResult(target.name, version, base, tuple(answers), call.outputs)

    def _check_room(self, rows: int) -> None:
        if self.rows_in_flight + rows > self.settings.max_in_flight:
            raise TurnedAway(f"overloaded: {self.rows_in_flight} rows waiting for answers (at most "
                              f"{self.settings.max_in_flight}); retry later")

    def _budget(self, target: Target, given: Sequence[int | None], started: float) -> int:
        elapsed_ms = math.ceil((time.monotonic() - started) * 1000)
        return call_budget(given, target.schedule.default_deadline_ms, self.settings.max_budget_ms, elapsed_ms)

    async def _start_tap(self) -> None:
        """The comparison log's reader, started by the first call to one model."""
        if not self.tap.started:
            try:
                await asyncio.to_thread(self.tap.start)
            except RendezvousError as exc:  # the log's offsets unread: nothing of the call was sent (a review)
                exc.nothing_sent = True  # type: ignore[attr-defined]
                raise
            if self.draining:  # the stop came while the log reader started: send nothing now
                raise TurnedAway(SHUTTING_DOWN)

    def _submitting(self, budget: int, metadata: dict[str, str]) -> Submit:
        """How a call's rows go, each as `submit(row, request_id=...)`: one `created_at` for them all
        (a row sent again keeps it, and so its deadline)."""
        return functools.partial(self.client.submit, budget_ms=budget, metadata=metadata, created_at=now_ms())

    async def _sent(self, large: bool, ids: list[str], rows: list[dict[str, float]],
                    submit: Submit) -> list[Future[Answer]]:
        """`_send`, in a worker thread for a large call: each row is checked, encoded and produced,
        and a 1,000-row call held every other call, and the health and metrics pages, for 0.35 s
        on a quiet host (a review). Its rows are counted in flight already, so a drain waits for
        them. A thread cannot be stopped: a call cancelled meanwhile (its caller gone, its gRPC
        deadline past, the server stopping) waits for the rows it is sending, and abandons them,
        before it ends and they stop counting in flight (a review)."""
        if not large:
            return self._send(ids, rows, submit)
        sending = asyncio.ensure_future(asyncio.to_thread(self._send, ids, rows, submit))
        try:
            return await asyncio.shield(sending)
        except asyncio.CancelledError:
            while not sending.done():  # a second cancel too (a deadline, then the server's stop; a review)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(sending)
            if not sending.cancelled() and sending.exception() is None:  # else it abandoned its own rows
                with contextlib.suppress(Exception):  # the cancellation is what goes on
                    self._abandon(ids, sending.result())
            raise

    def _send(self, ids: list[str], rows: list[dict[str, float]], submit: Submit) -> list[Future[Answer]]:
        futures: list[Future[Answer]] = []
        try:
            for rid, row in zip(ids, rows, strict=True):
                futures.append(submit(row, request_id=rid))
        except BaseException as exc:
            self._abandon(ids, futures)
            if not futures and isinstance(exc, Exception) and status_of(exc).http == 503:
                # The first row refused (the client's queue full, no reply partition): nothing of the
                # call was sent, so its token comes back (`spending`), its reason kept (broker, ...).
                exc.nothing_sent = True  # type: ignore[attr-defined]
            raise
        return futures

    def _abandon(self, ids: list[str], futures: list[Future[Answer]]) -> None:
        # Done is not enough to skip one: a wait that timed out or was cancelled cancels its future
        # (done), and only `abandon` takes it out of the client's table of pending requests.
        for rid, future in zip(ids, futures, strict=False):
            self.client.abandon(rid, future)

    async def _via_schedule(self, ids: list[str], rows: list[dict[str, float]], budget: int,
                            metadata: dict[str, str], large: bool) -> list[RowAnswer]:
        submit = self._submitting(budget, metadata)
        futures = await self._sent(large, ids, rows, submit)
        wait_ms = budget + self.settings.answer_grace_ms
        rows_waiting = [asyncio.ensure_future(self._answer_of(row, futures, ids, rows, submit))
                        for row in range(len(ids))]
        try:
            if len(futures) == 1:  # the common case, without gather's extra future
                answers = [await asyncio.wait_for(rows_waiting[0], wait_ms / 1000)]
            else:
                answers = await asyncio.wait_for(asyncio.gather(*rows_waiting), wait_ms / 1000)
        except TimeoutError:
            raise Unavailable(f"no answer from the rendezvous within {wait_ms} ms (deadline {budget} ms + "
                              f"{self.settings.answer_grace_ms} ms): is it running?") from None
        finally:
            # A row still waiting when another failed the call (gather does not cancel the rest)
            # must not be sent again once its reply partition moves: no one would wait for it (a review).
            for waiting in rows_waiting:
                waiting.cancel()
            self._abandon(ids, futures)
        return [_row(a) for a in answers]

    async def _answer_of(self, row: int, futures: list[Future[Answer]], ids: list[str],
                         rows: list[dict[str, float]], submit: Submit) -> Answer:
        """Row `row`'s answer. One whose reply partition moved to another gateway (one joining the
        group takes partitions: a review saw 12 of 24 waiting calls fail with 503) is sent again,
        under its id and created_at, naming a partition this gateway owns now: the rendezvous
        answers a repeat with the first answer, or, still deciding, both return addresses."""
        for _resend in range(MOVED_RESENDS):
            try:
                return await asyncio.wrap_future(futures[row])
            except ReplyPartitionLost as moved:
                if self.draining:  # the drain has failed what waited: a row sent now no one fails (a review); sent
                    # once already, the call keeps its tokens (Unavailable, not TurnedAway)
                    raise Unavailable(SHUTTING_DOWN) from None
                log.debug("%s: sending request %s again", moved, ids[row])  # the client said the move once
                futures[row] = submit(rows[row], request_id=ids[row])
                m.ROWS_SENT_AGAIN.inc()
        return await asyncio.wrap_future(futures[row])

    async def _via_model(self, target: Target, ids: list[str], rows: list[dict[str, float]], budget: int,
                         metadata: dict[str, str], large: bool) -> list[RowAnswer]:
        expected = [self.tap.expect(rid) for rid in ids]
        sent: list[Future[Answer]] = []
        try:
            sent = await self._sent(large, ids, rows, self._submitting(budget, metadata))
            wait_ms = budget + self.settings.comparison_grace_ms
            records = await _records_unless_refused(expected, sent, wait_ms)
        finally:
            self._abandon(ids, sent)  # the schedule's own answers are not what this call asked for
            for rid, future in zip(ids, expected, strict=True):
                self.tap.abandon(rid, future)
        return [_model_row(target, record) for record in records]


async def _records_unless_refused(
    expected: list[Future[dict[str, Any]]], sent: list[Future[Answer]], wait_ms: int
) -> list[dict[str, Any]]:
    """The comparison records of a call to one model; the broker's refusal of one of its requests
    (the client fails that request's future) at once, instead of waiting out the grace for a
    record that cannot come."""
    records = asyncio.ensure_future(asyncio.gather(*(asyncio.wrap_future(f) for f in expected)))
    pending: set[asyncio.Future[Any]] = {records, *(asyncio.wrap_future(f) for f in sent)}
    deadline = asyncio.get_running_loop().time() + wait_ms / 1000
    try:
        while not records.done():
            remaining = deadline - asyncio.get_running_loop().time()
            done, pending = await asyncio.wait(pending, timeout=max(0.0, remaining),
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise Unavailable(f"no comparison record within {wait_ms} ms: is the rendezvous running and "
                                  "writing its log?")
            for answer in done - {records}:
                # A reply partition moved: the record comes through the log all the same.
                if not answer.cancelled() and not isinstance(answer.exception(), (type(None), ReplyPartitionLost)):
                    raise answer.exception()  # type: ignore[misc]
        return records.result()
    finally:
        for waiting in pending:
            waiting.cancel()


def call_budget(given: Sequence[int | None], default_ms: int, max_ms: int, elapsed_ms: int = 0) -> int:
    """A call's deadline in ms: the smallest given, else the schedule's default, within `max_ms`
    either way (a schedule may default to 2^31 - 1 ms: a call naming none waited that long). A
    deadline says how long the caller is willing to wait: one longer than this gateway allows is
    served within the limit (gRPC clients often set generous deadlines), never refused.

    A deadline given counts from when the call came: `elapsed_ms` since (the body read, turned
    into rows) is taken off it, or the rendezvous' deadline would end after the caller's (a
    review: 8-100 ms after a gRPC deadline for a large call). The default counts from the send."""
    limits = [g - elapsed_ms for g in given if g is not None]
    return max(1, min(*limits, max_ms)) if limits else max(1, min(default_ms, max_ms))


def _request_ids_of(call_id: str, base: str, caller: str, rows: list[dict[str, float]], kind: str) -> list[str]:
    return _request_ids(_kafka_id(call_id, caller, rows) if call_id else base, len(rows), kind)


def _kafka_id(call_id: str, caller: str, rows: list[dict[str, float]]) -> str:
    """The Kafka request id of a call that names itself: its `id` and a digest of the caller and
    the rows. The rendezvous answers a request id it has seen with its first answer: the same call
    sent again (a retry, to any replica) gets that answer, while another caller's call, or other
    rows under the same `id` (OIP ids need not be unique), are requests of their own."""
    digest = hashlib.blake2b(_with_lengths([caller.encode()]), digest_size=8)
    names: tuple[str, ...] = ()
    encoded = b""
    for row in rows:  # names with their lengths, then values as doubles: 7x faster than hashing repr(rows)
        if tuple(row) != names:  # a call's rows share their names: encoded once
            names = tuple(row)
            encoded = _with_lengths([name.encode("utf-8", "surrogatepass") for name in names])
        digest.update(encoded)
        digest.update(array("d", row.values()).tobytes())
    return f"{call_id}.{digest.hexdigest()}"


def _with_lengths(parts: list[bytes]) -> bytes:
    """`parts` so that no other list of parts reads the same: their count and lengths, then them.
    Names joined by NUL alone were not: {"a": 2261634.5098039214, "b": 2.0} and {"a\\0bAAAAAAAA": 2.0}
    made one id, the second call refused (a review)."""
    return array("Q", [len(parts), *map(len, parts)]).tobytes() + b"".join(parts)


def _request_ids(base: str, n: int, kind: str) -> list[str]:
    """Kafka request ids of a call's rows: `base` (`base/i` for row i of several).

    A request id the rendezvous has seen is answered again with its first answer and not logged
    again (idempotent retries, see `_kafka_id`). A call to a single model needs a comparison record
    of its own, so its ids get a fresh suffix."""
    if kind != SCHEDULE:
        base = f"{base}.{uuid.uuid4().hex[:12]}"
    return [base] if n == 1 else [f"{base}/{i}" for i in range(n)]


def _row(answer: Answer) -> RowAnswer:
    return RowAnswer(answer.status, answer.model or "", answer.version or "", answer.score, answer.label or "",
                     answer.reason, answer.schedule_version)


def _model_row(target: Target, record: dict[str, Any]) -> RowAnswer:
    """One model's own output from a comparison record, judged against the request's deadline."""
    output = next((o for o in record["outputs"] if o["model"] == target.name), None)
    schedule_version = int(record["schedule_version"])
    if output is None:
        return RowAnswer("TIMEOUT", target.name, "", None, "", f"model {target.name!r} gave no output for "
                         "this request before its comparison record closed (is it running?)", schedule_version)
    version = output["version"]
    if output["error"] is not None:
        return RowAnswer("ERROR", target.name, version, None, "", f"model {target.name!r} failed: {output['error']}",
                         schedule_version)
    if output["score"] is None:  # no error and no score: no answer, as the rendezvous judges it (join.py)
        return RowAnswer("ERROR", target.name, version, None, "", f"model {target.name!r} gave no score",
                         schedule_version)
    budget = record["deadline"] - record["created_at"]
    latency = output["latency_ms"]
    if latency > budget:
        return RowAnswer("TIMEOUT", target.name, version, None, "", f"model {target.name!r} answered in "
                         f"{latency:.0f} ms, after the {budget} ms deadline", schedule_version)
    chosen = record["chosen_model"] or "no model"
    return RowAnswer("OK", target.name, version, output["score"], output["label"] or "",
                     f"model {target.name!r} itself, in {latency:.0f} ms (the schedule answered "
                     f"{record['status']} with {chosen})", schedule_version)


def _as_pinned(answer: RowAnswer, kind: str, pinned: str) -> RowAnswer:
    """A row of a call pinned to a version (/versions/{v}/infer) answered by another version (a
    roll-out under way, a schedule switch between the check and the decision) is an ERROR: a 200
    carried another version's score."""
    answered = str(answer.schedule_version) if kind == SCHEDULE else answer.version
    if answer.status in ("TIMEOUT", "ERROR") or answered == pinned:
        return answer
    what = "schedule version" if kind == SCHEDULE else "model version"
    return dataclasses.replace(answer, status="ERROR", score=None, label="",
                               reason=f"the call asked for {what} {pinned!r}, and {answered!r} answered it; "
                                      "retry (or call without a version)")


# What a failed call under its own `id` must be told: its Kafka ids are the same for a retry
# (`_kafka_id`), and the rendezvous answers a request id it has seen with its first answer (for
# as long as it remembers it: its mailbox, then a minute, join.py): a retry gets this failure again.
SAME_ID_AGAIN = ("; a retry under the same id gets this answer again for about a minute (a request is answered "
                 "once): retry under a new id")


def _given_again(answer: RowAnswer) -> bool:
    """Whether a retry under the same request id gets `answer` again. Every answer the rendezvous
    gives an id is, while it knows the id (its answers; its refusal of other inputs, or of another
    partition, under a known id, since the retry meets the same), but one: its refusal of a retry
    beyond the return addresses an open request keeps, which it does not remember (a refusal carries
    no schedule version). The retry after the answer gets the answer."""
    return not (answer.status == "ERROR" and answer.schedule_version == 0 and RETRY_NOT_KEPT in answer.reason)


def _raise_failures(ids: list[str], answers: list[RowAnswer], repeated: bool = False) -> None:
    """A call with a TIMEOUT row fails with 504, else with an ERROR row with 502: no confident
    answer for a row that has none. The message names the rows and their reasons, and, when a
    retry of the call would be `repeated` the same answer (a row of those it fails for is given
    again), says so."""
    for status, error in (("TIMEOUT", AnswerTimedOut), ("ERROR", AnswerFailed)):
        failed = [(rid, a) for rid, a in zip(ids, answers, strict=True) if a.status == status]
        if failed:
            hint = SAME_ID_AGAIN if repeated and any(_given_again(a) for _rid, a in failed) else ""
            if len(answers) == 1:
                raise error(f"{status}: {failed[0][1].reason}{hint}")
            shown = "; ".join(f"{rid}: {a.reason}" for rid, a in failed[:5])
            raise error(f"{status} for {len(failed)} of {len(answers)} rows: {shown}{hint}")
